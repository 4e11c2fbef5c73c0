"""Zero-shot image classification with the call of transformers' `zero-shot-image-classification` pipeline.

    from siglip import pipeline
    classifier = pipeline("zero-shot-image-classification", model="google/siglip-base-patch16-224")
    classifier("cat.jpg", candidate_labels=["cat", "dog", "car"])
    # [{'score': 0.87, 'label': 'cat'}, {'score': 0.002, 'label': 'dog'}, {'score': 1e-05, 'label': 'car'}]

Scores are SigLIP's sigmoid probabilities (independent per label, they need not sum to 1), sorted from the
highest. They are transformers' numbers: the prompts are tokenized as given (no lowercasing) and the
tokenizer's attention mask, where it returns one (SigLIP 2's Gemma tokenizers), goes to the model, as
transformers' pipeline does. Two choices of our own:
- Text is padded to the model's own text length (16 positions for so400m-224, 64 otherwise), where
  transformers pads every SigLIP model to 64 (and so fails on so400m-224).
- `pipeline(..., lowercase=True)` lowercases the prompts first. SigLIP 2 was trained on lowercased text and its
  model cards recommend it: with a Gemma tokenizer (the fixed-resolution SigLIP 2 checkpoints), scores are
  then usually better, but no longer transformers'. (`Siglip2Tokenizer`, of the NaFlex checkpoints, always
  lowercases, in transformers too.)
`hypothesis_template` may also be a list of templates: each label is then the normalised mean of its prompts'
normalised embeddings (prompt ensembling, as big_vision and open_clip evaluate).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..core.auto import AutoConfig, AutoProcessor
from ..core.image_utils import load_image
from ..core.pretrained import PreTrainedModel, device_placement
from ..core.two_tower.image_processing import ImageInput
from ..errors import UsageError
from . import zeroshot
from .embeddings.embedder import DEFAULT_MODEL, Embedder, load_embedder
from .embeddings.options import ModelOptions
from .embeddings.precision import precision_of_dtype
from .zeroshot import DEFAULT_TEMPLATE

TASK = "zero-shot-image-classification"


class ZeroShotImageClassificationPipeline:
    """Assign candidate labels to images with SigLIP; see the module doc. Holds an `Embedder` (`.embedder`)."""

    task = TASK

    def __init__(self, embedder: Embedder, lowercase: bool = False) -> None:
        self.embedder = embedder
        self.lowercase = lowercase

    @property
    def model(self) -> PreTrainedModel:
        return self.embedder.model

    @property
    def dtype(self) -> torch.dtype:
        return self.embedder.model.dtype

    def __call__(
        self,
        image: ImageInput | Sequence[ImageInput] | None = None,
        candidate_labels: Sequence[str] | None = None,
        hypothesis_template: str | Sequence[str] = DEFAULT_TEMPLATE,
        batch_size: int = 32,
        top_k: int | None = None,
        timeout: float | None = None,
        images: ImageInput | Sequence[ImageInput] | None = None,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Scores of `candidate_labels` for one image (a list of `{"score", "label"}`, best first) or for a
        list of images (a list of such lists).

        Images are paths, http(s) URLs, base64 strings (as transformers' `load_image`, with `timeout` for
        URLs), PIL images, arrays, tensors or bytes; `images=` is transformers' older name for `image`.
        `hypothesis_template` turns a label into a prompt ("This is a photo of {}." by default, as transformers);
        several templates are ensembled. `top_k` keeps only the best labels.
        """
        image = images if image is None else image
        if image is None:
            raise ValueError(
                "Cannot call the zero-shot-image-classification pipeline without an images argument!"
            )
        if candidate_labels is None:
            raise UsageError("candidate_labels is required: the labels to score, e.g. ['cat', 'dog']")
        single = not isinstance(image, list | tuple)
        batch = [image] if single else list(image)
        batch = [load_image(item, timeout) if isinstance(item, str) else item for item in batch]
        classes = self.label_embeddings(candidate_labels, hypothesis_template)
        vectors = self.embedder.embed_images(batch, batch_size)
        results = self.rank(vectors, classes, candidate_labels, top_k)
        return results[0] if single else results

    def label_embeddings(
        self, candidate_labels: Sequence[str], hypothesis_template: str | Sequence[str] = DEFAULT_TEMPLATE
    ) -> np.ndarray:
        """(C, D) unit-length class embeddings, to score many batches of images against the same labels."""
        templates = (
            [hypothesis_template] if isinstance(hypothesis_template, str) else list(hypothesis_template)
        )
        return self.embedder.class_embeddings(
            candidate_labels, templates, lowercase=self.lowercase, attention_mask=True
        )

    def rank(
        self,
        image_embeds: np.ndarray,
        class_embeds: np.ndarray,
        candidate_labels: Sequence[str],
        top_k: int | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Per image, `{"score", "label"}` dicts sorted by descending score (ties keep the label order)."""
        probs = zeroshot.scores(self.model, torch.from_numpy(image_embeds), torch.from_numpy(class_embeds))
        results = []
        for row in probs.cpu().tolist():
            ranked = sorted(zip(row, candidate_labels, strict=True), key=lambda pair: -pair[0])
            results.append([{"score": score, "label": label} for score, label in ranked[:top_k]])
        return results


def pipeline(
    task: str = TASK,
    model: str | os.PathLike | Embedder | PreTrainedModel = DEFAULT_MODEL,
    device: str | int | torch.device | None = None,
    *,
    device_map: str | int | torch.device | dict[str, Any] | None = None,
    dtype: torch.dtype | str | None = None,
    torch_dtype: torch.dtype | str | None = None,
    processor: Any = None,
    trust_remote_code: bool | None = None,
    lowercase: bool = False,
) -> ZeroShotImageClassificationPipeline:
    """A pipeline for `task` (only "zero-shot-image-classification") with `model`: a bundled short name, a
    local directory, a hub id, a loaded model (its processor is `processor`, else loaded from where the model
    came from) or an `Embedder`. Mirrors `transformers.pipeline`.

    `device` (an int is a GPU index, as in transformers) or `device_map` (one device: see
    `PreTrainedModel.from_pretrained`) place the model; the default is the GPU when there is one. `dtype` /
    `torch_dtype` (float32, bfloat16 or float16, or "auto" for the checkpoint's own) load the weights in that
    dtype; float32 by default. `lowercase=True` lowercases the prompts (see the module doc).
    `trust_remote_code` is accepted and ignored: siglip runs no checkpoint code.
    """
    if task != TASK:
        raise UsageError(f"unknown task {task!r}: siglip pipelines support {TASK!r}")
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass one of them")
    dtype = dtype if dtype is not None else torch_dtype
    if isinstance(model, Embedder):
        return ZeroShotImageClassificationPipeline(model, lowercase)
    if isinstance(device, int):
        device = torch.device("cuda", device) if device >= 0 else torch.device("cpu")
    if device_map is not None:
        placement = device_placement(device, device_map)
        if not isinstance(placement, torch.device):
            raise UsageError(
                f"device_map={device_map!r}: the pipeline runs on one device, e.g. device_map='cuda:0'"
            )
        device = placement
    if isinstance(model, PreTrainedModel):
        if processor is None:
            processor = AutoProcessor.from_pretrained(model.config.name_or_path)
        if device is not None:
            model = model.to(device)
        return ZeroShotImageClassificationPipeline(Embedder(model, processor), lowercase)
    embedder = load_embedder(
        os.fspath(model),
        None if device is None else str(device),
        ModelOptions(precision=_precision(model, dtype)),
    )
    return ZeroShotImageClassificationPipeline(embedder, lowercase)


def _precision(model: str | os.PathLike, dtype: torch.dtype | str | None) -> str:
    """The Embedder precision for `dtype` (float32 without one); "auto" reads the checkpoint's
    `dtype` / `torch_dtype`."""
    if dtype is None:
        return "fp32"
    if dtype == "auto":
        dtype = AutoConfig.from_pretrained(model).torch_dtype or "float32"
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    if not isinstance(dtype, torch.dtype):
        raise UsageError(
            f"dtype={dtype!r} is not a torch dtype: pass torch.float32, torch.bfloat16 or torch.float16"
        )
    return precision_of_dtype(dtype)
