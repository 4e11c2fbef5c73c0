"""Fine-tuned image classifiers: a `SiglipForImageClassification` / `Siglip2ForImageClassification` checkpoint
(what `siglip train --task classify` writes) run on images, its classes read from the checkpoint.

    from siglip.tools.classifier import ImageClassifier
    classifier = ImageClassifier.from_pretrained("runs/probe/model")
    for batch in classifier.classify_files(["cat.jpg", "dog.png"]):
        print(classifier.top_k(batch.vectors, 3))      # [[{"score": 0.93, "label": "cat"}, ...], ...]

The scores are the head's probabilities: a softmax over the classes (single-label, the default), or each class's
own sigmoid for a checkpoint whose `config.problem_type` is "multi_label_classification".
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..core.auto import AutoModelForImageClassification, family_of
from ..core.hub import CONFIG_NAME, Checkpoint, locate, read_json
from ..errors import CheckpointError, DataError, UsageError
from .embeddings.calibration import check_takes_calibration
from .embeddings.embedder import EmbeddedBatch, file_batches, load_processor, resolve_device
from .embeddings.inference import InferenceMode
from .embeddings.options import ModelOptions
from .embeddings.precision import INT8_PRECISIONS, auto_precision
from .search.store import FileState


def is_classifier(name_or_path: str | os.PathLike | Checkpoint) -> bool:
    """Whether a checkpoint is an image classifier of its family (its `config.json` names the family's
    `...ForImageClassification` among its `architectures`), rather than a two-tower model or a tower."""
    checkpoint = locate(name_or_path)
    path = checkpoint.file(CONFIG_NAME, required=False)
    if path is None:
        return False
    architectures = read_json(path).get("architectures") or []
    return family_of(checkpoint).classifier.__name__ in architectures


def class_ids(
    folders: Sequence[str], labels: Sequence[int], classes: Sequence[str], source: str
) -> list[int]:
    """Class-folder `labels` (indices into the folder names `folders`) as indices into a classifier's
    `classes`; a folder the classifier does not know is a `DataError` naming it and `source`."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise DataError(
            f"{source}: class folder {unknown[0]!r} is not a class of the model ({', '.join(classes)})"
        )
    return [index[folders[label]] for label in labels]


class ImageClassifier:
    """An image classifier with its processor: image files in, the head's probabilities over `labels` out."""

    def __init__(self, model: Any, processor: Any, name: str = "", mode: InferenceMode | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.mode = mode or InferenceMode("fp32")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device | None = None,
        options: ModelOptions | None = None,
        **option_values: Any,
    ) -> ImageClassifier:
        """Load a classification checkpoint as `Embedder.from_pretrained` loads a two-tower one (`device`,
        `ModelOptions`); int8 and compile are not offered for classifiers: "auto" means bf16 where the CPU has
        bf16 units, else fp32, where a two-tower model would run int8."""
        options = ModelOptions.of(options, **option_values)
        device = resolve_device(device)
        word = options.precision_word
        mode = InferenceMode(auto_precision(device, int8=False)[0] if word == "auto" else word).resolve(
            device
        )
        if options.calibration:
            check_takes_calibration(mode.precision)
        if mode.precision in INT8_PRECISIONS or options.compile:
            raise UsageError(
                f"--precision {mode.precision} and --compile apply to two-tower models, not to a classifier"
            )
        checkpoint = locate(name_or_path)
        if not is_classifier(checkpoint):
            raise CheckpointError(
                f"'{name_or_path}' is not an image classifier (train one with siglip train --task classify)"
            )
        model = AutoModelForImageClassification.from_pretrained(checkpoint, device=device, dtype=mode.dtype)
        return cls(model, load_processor(checkpoint, options), checkpoint.record_name, mode)

    @property
    def labels(self) -> list[str]:
        """The class names, in the order of the head's outputs."""
        id2label = self.model.config.id2label
        return [id2label[i] for i in range(len(id2label))]

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def multi_label(self) -> bool:
        return self.model.config.problem_type == "multi_label_classification"

    def probabilities(self, inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
        """(B, C) probabilities of preprocessed images (the image processor's output for a batch)."""
        with torch.inference_mode(), self.mode.autocast(self.device):
            inputs = {k: v.to(self.device, self.mode.dtype if v.is_floating_point() else v.dtype)
                      for k, v in inputs.items()}  # fmt: skip
            logits = self.model(**inputs).logits.float()
        probabilities = (logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)).cpu().numpy()
        if not np.isfinite(probabilities).all():
            raise CheckpointError(f"model '{self.name}' gave NaN or infinite scores; try --precision fp32")
        return probabilities

    def classify_files(
        self,
        files: Sequence[FileState | str],
        batch_size: int = 32,
        workers: int | None = None,
        progress: bool | None = None,
    ) -> Iterator[EmbeddedBatch]:
        """Probabilities of image files batch by batch, in order (`vectors`: (B, C)); unreadable files are
        reported in `failed`, as `Embedder.embed_files` reports them."""
        yield from file_batches(
            files, self.processor.image_processor, self.probabilities, len(self.labels),
            batch_size=batch_size, workers=workers, progress=progress, device=self.device, desc="classifying",
        )  # fmt: skip

    def top_k(self, probabilities: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """Per row of `probabilities` (N, C), its k most probable classes as {"score", "label"}, best first."""
        labels = self.labels
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [
            [{"score": float(row[c]), "label": labels[c]} for c in best]
            for row, best in zip(probabilities, order, strict=True)
        ]
