"""Zero-shot image classification with the call of transformers' `zero-shot-image-classification` pipeline.

    from siglip import pipeline
    classifier = pipeline("zero-shot-image-classification", model="google/siglip-base-patch16-224")
    classifier("cat.jpg", candidate_labels=["cat", "dog", "car"])
    # [{'score': 0.87, 'label': 'cat'}, {'score': 0.002, 'label': 'dog'}, {'score': 1e-05, 'label': 'car'}]

Scores are SigLIP's sigmoid probabilities (independent per label, they need not sum to 1), sorted from the
highest. Text is always padded to the model's own text length (16 positions for so400m-224, 64 otherwise),
where transformers' pipeline pads every SigLIP model to 64. `hypothesis_template` may also be a list of
templates: each label is then the normalised mean of its prompts' normalised embeddings (prompt ensembling,
as big_vision and open_clip evaluate).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..core.two_tower.image_processing import ImageInput
from ..errors import UsageError
from . import zeroshot
from .embedder import DEFAULT_MODEL, Embedder, as_embedder
from .zeroshot import DEFAULT_TEMPLATE

TASK = "zero-shot-image-classification"


class ZeroShotImageClassificationPipeline:
    """Assign candidate labels to images with SigLIP; see the module doc. Holds an `Embedder` (`.embedder`)."""

    task = TASK

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        candidate_labels: Sequence[str],
        hypothesis_template: str | Sequence[str] = DEFAULT_TEMPLATE,
        batch_size: int = 32,
        top_k: int | None = None,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Scores of `candidate_labels` for one image (a list of `{"score", "label"}`, best first) or for a
        list of images (a list of such lists).

        Images are paths, PIL images, arrays, tensors or bytes. `hypothesis_template` turns a label into a
        prompt ("This is a photo of {}." by default, as transformers); several templates are ensembled.
        `top_k` keeps only the best labels.
        """
        single = not isinstance(images, list | tuple)
        classes = self.label_embeddings(candidate_labels, hypothesis_template)
        vectors = self.embedder.embed_images([images] if single else list(images), batch_size)
        results = self.rank(vectors, classes, candidate_labels, top_k)
        return results[0] if single else results

    def label_embeddings(
        self, candidate_labels: Sequence[str], hypothesis_template: str | Sequence[str] = DEFAULT_TEMPLATE
    ) -> np.ndarray:
        """(C, D) unit-length class embeddings, to score many batches of images against the same labels."""
        templates = (
            [hypothesis_template] if isinstance(hypothesis_template, str) else list(hypothesis_template)
        )
        return self.embedder.class_embeddings(candidate_labels, templates)

    def rank(
        self,
        image_embeds: np.ndarray,
        class_embeds: np.ndarray,
        candidate_labels: Sequence[str],
        top_k: int | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Per image, `{"score", "label"}` dicts sorted by descending score (ties keep the label order)."""
        probs = zeroshot.scores(
            self.embedder.model, torch.from_numpy(image_embeds), torch.from_numpy(class_embeds)
        )
        results = []
        for row in probs.cpu().tolist():
            ranked = sorted(zip(row, candidate_labels, strict=True), key=lambda pair: -pair[0])
            results.append([{"score": score, "label": label} for score, label in ranked[:top_k]])
        return results


def pipeline(
    task: str = TASK,
    model: str | os.PathLike | Embedder = DEFAULT_MODEL,
    device: str | None = None,
) -> ZeroShotImageClassificationPipeline:
    """A pipeline for `task` (only "zero-shot-image-classification") with `model`: a bundled short name,
    a local directory, a hub id, or a loaded `Embedder`. Mirrors `transformers.pipeline`."""
    if task != TASK:
        raise UsageError(f"unknown task {task!r}: siglip pipelines support {TASK!r}")
    return ZeroShotImageClassificationPipeline(as_embedder(model, device))
