"""`siglip train --task classify`: an image classifier on class folders, through the shared training loop.

    siglip train --task classify --probe linear --data photos/ --model siglip-tiny-fashion --output-dir runs/probe
    siglip classify --model runs/probe/model new-photos/

`data` holds one folder of images per class (at least two classes, each with images). The classifier is the
checkpoint family's `SiglipForImageClassification` / `Siglip2ForImageClassification`: the vision tower of
`--model` (a two-tower checkpoint, or a classifier to train further) and a linear head on the mean of its final
patch tokens, with one output per class folder (`config.id2label`: the folder names, sorted). The loss is
cross-entropy (single-label, softmax probabilities).

- `--probe linear`: the image tower is frozen and only the head is trained. The head's inputs (the pooled
  features) are computed once, before the first step, so an epoch costs a few matrix products.
- otherwise the whole classifier is fine-tuned.

Validation: `--eval-data` (alias `--val`), a folder of class folders named as the training ones, or else
`--val-fraction` of each class's images held out (a seeded choice, never a class's last training image). The
validation top-1 is logged at `--eval-every` steps and after the last one. The final model folder loads in
transformers (`SiglipForImageClassification.from_pretrained`) with the processor files beside it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ...core.auto import AutoConfig, AutoModelForImageClassification, ImageProcessor, Processor
from ...errors import DataError, UsageError
from ..classifier import ImageClassifier, class_ids
from ..embeddings.embedder import file_batches
from ..embeddings.inference import InferenceMode
from ..embeddings.precision import Precision
from ..evaluation import ZeroShotReport, classifier_report, zeroshot_report
from ..inputs.data import Batch, ClassFolders, Sample, load_sample
from .data import BatchLayout
from .trainer import TASKS, Task, TrainConfig, _Dist

logger = logging.getLogger("siglip")


class LabelledImages(Dataset):
    """Image files with their class ids, loaded (decode or skip) for training; keys are those of
    `GlobalBatchSampler`: (index, epoch, micro-batch)."""

    def __init__(self, images: Sequence[str], labels: Sequence[int], processor: ImageProcessor) -> None:
        self.images, self.labels, self.processor = list(images), list(labels), processor

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int, int]) -> Sample:
        index, _, micro = key
        image = self.images[index]
        return load_sample(self.processor, image, image, micro=micro, label=self.labels[index])


class Features(Dataset):
    """Precomputed head inputs (N, hidden) with their class ids, as `Sample`s whose one input is "features"."""

    def __init__(self, features: torch.Tensor, labels: Sequence[int], sources: Sequence[str]) -> None:
        self.features, self.labels, self.sources = features.numpy(), list(labels), list(sources)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int, int]) -> Sample:
        index, _, micro = key
        return Sample({"features": self.features[index]}, self.sources[index], micro=micro,
                      label=self.labels[index])  # fmt: skip


def class_folders(data: str, what: str) -> ClassFolders:
    """The class folders of `data`, refusing what cannot train a classifier: not a folder, a class folder
    without images, fewer than two classes."""
    if not Path(data).is_dir():
        raise DataError(
            f"{what} {data!r} is not a folder: task classify reads one sub-folder of images per class"
        )
    folders = ClassFolders(data)
    counts = np.bincount(folders.labels, minlength=len(folders.classes))
    empty = [c for c, n in zip(folders.classes, counts, strict=True) if n == 0]
    if empty:
        raise DataError(f"{what} {data!r}: class folder {empty[0]!r} has no images")
    return folders


def split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) positions: per class, round(fraction x its images) held out, chosen by `seed`,
    always leaving the class at least one training image."""
    train, val = [], []
    for label in sorted(set(labels)):
        members = [i for i, lab in enumerate(labels) if lab == label]
        random.Random(f"{seed}-{label}").shuffle(members)
        held = min(len(members) - 1, round(fraction * len(members)))
        val += members[:held]
        train += members[held:]
    return sorted(train), sorted(val)


@contextmanager
def _head_removed(model: nn.Module) -> Iterator[None]:
    """The classifier's forward gives its head's inputs (the pooled features) while inside: the pooling is
    the model's own, whatever the family."""
    head = model.classifier
    model.classifier = nn.Identity()
    try:
        yield
    finally:
        model.classifier = head


class Classify(Task):
    """Cross-entropy training of an image classifier on class folders (see the module's docstring)."""

    def __init__(self, config: TrainConfig, processor: Processor, layout: BatchLayout, dist_: _Dist) -> None:
        if dist_.world > 1:
            raise UsageError("task classify runs in one process; start it without torchrun")
        self.config, self.processor = config, processor
        folders = class_folders(config.data, "data")
        if len(folders.classes) < 2:
            raise DataError(f"data {config.data!r} has one class folder ({folders.classes[0]!r}); a classifier "
                            "needs at least two")  # fmt: skip
        self.classes = folders.classes
        if config.eval_data:
            val = class_folders(config.eval_data, "eval_data")
            train_images, train_labels = folders.images, folders.labels
            val_images, val_labels = (
                val.images,
                class_ids(val.classes, val.labels, self.classes, config.eval_data),
            )
        else:
            train, held = split(folders.labels, config.val_fraction, config.seed)
            train_images, train_labels = (
                [folders.images[i] for i in train],
                [folders.labels[i] for i in train],
            )
            val_images, val_labels = [folders.images[i] for i in held], [folders.labels[i] for i in held]
        self.source: Dataset = LabelledImages(train_images, train_labels, processor.image_processor)
        self.val_images, self.val_labels = val_images, val_labels
        self.val_features: torch.Tensor | None = None
        self.evaluates_at_end = bool(val_images)
        self.precision: Precision | None = None

    def build_model(self, resume_from: Path | None) -> nn.Module:
        config = self.config
        if resume_from is not None:
            model = AutoModelForImageClassification.from_pretrained(resume_from)
            saved = [model.config.id2label[i] for i in range(model.config.num_labels)]
            if saved != self.classes:
                raise DataError(f"the run in {config.output_dir} trained on the classes {saved}; data "
                                f"{config.data!r} has {self.classes}")  # fmt: skip
        else:
            id2label = dict(enumerate(self.classes))
            labels = {"id2label": id2label, "label2id": {c: i for i, c in id2label.items()}}
            if config.model is not None:
                model = AutoModelForImageClassification.from_pretrained(
                    config.model, ignore_mismatched_sizes=config.ignore_mismatched_sizes, **labels
                )
            else:
                source = config.config
                model_config = (AutoConfig.from_pretrained(source) if Path(source).is_dir()
                                else AutoConfig.from_json_file(source))  # fmt: skip
                for name, value in labels.items():
                    setattr(model_config, name, value)
                model = AutoModelForImageClassification.from_config(model_config)
        if config.probe == "linear":
            for name, param in model.named_parameters():
                param.requires_grad_(name.startswith("classifier."))
        return model

    def prepare(self, model: nn.Module, dist_: _Dist, precision: Precision) -> None:
        self.precision = precision
        if self.config.probe != "linear":
            return
        images, labels = self.source.images, self.source.labels
        features, kept = self._features(model, images, dist_, precision)
        failed = len(images) - len(kept)
        if failed > self.config.max_bad_fraction * len(images):
            raise DataError(f"{failed} of {len(images)} training images could not be read, more than "
                            f"max_bad_fraction={self.config.max_bad_fraction}")  # fmt: skip
        self.source = Features(features, [labels[i] for i in kept], [images[i] for i in kept])
        if self.val_images:
            self.val_features, kept = self._features(model, self.val_images, dist_, precision)
            self.val_labels = [self.val_labels[i] for i in kept]
            self.val_images = [self.val_images[i] for i in kept]

    def _features(
        self, model: nn.Module, images: list[str], dist_: _Dist, precision: Precision
    ) -> tuple[torch.Tensor, list[int]]:
        """The head's inputs for `images` (float32, on the CPU), and the positions of those that loaded."""
        position = {path: i for i, path in enumerate(images)}

        def pooled(inputs: dict[str, torch.Tensor]) -> np.ndarray:
            inputs = {k: v.to(dist_.device, precision.weights if v.is_floating_point() else v.dtype)
                      for k, v in inputs.items()}  # fmt: skip
            with torch.no_grad(), precision.context(dist_.device), _head_removed(model):
                return model(**inputs).logits.float().cpu().numpy()

        rows, kept = [], []
        hidden = model.classifier.in_features
        micro_batch = self.config.batch_size // self.config.grad_accum  # what fits in memory
        for batch in file_batches(images, self.processor.image_processor, pooled, hidden, batch_size=micro_batch,
                                  workers=self.config.workers, device=dist_.device, desc="features"):  # fmt: skip
            rows.append(batch.vectors)
            kept += [position[f.path] for f in batch.files]
            for file, reason in batch.failed:
                logger.warning("skipping %s: %s", file.path, reason)
        return torch.from_numpy(np.concatenate(rows) if rows else np.empty((0, hidden), np.float32)), kept

    def step(self, model: nn.Module, batch: Batch, dist_: _Dist, precision: Precision) -> float:
        micro = torch.tensor(batch.micro, dtype=torch.long)
        labels = torch.tensor(batch.labels, dtype=torch.long)
        total = 0.0
        for m in range(self.config.grad_accum):
            rows = (micro == m).nonzero().flatten()
            if not len(rows):  # every image of this micro-batch failed to load
                continue
            inputs = {name: value[rows].to(dist_.device) for name, value in batch.inputs.items()}
            with precision.context(dist_.device):
                if "features" in inputs:
                    logits = model.classifier(inputs["features"].to(model.classifier.weight.dtype))
                else:
                    logits = model(**inputs).logits
            loss = F.cross_entropy(logits.float(), labels[rows].to(dist_.device))
            (loss / self.config.grad_accum).backward()
            total += loss.item()
        return total / self.config.grad_accum

    def report(self, model: nn.Module) -> ZeroShotReport:
        """The classifier's metrics on the validation images (the report `siglip eval` prints)."""
        if self.val_features is not None:
            head = model.classifier
            with torch.no_grad():
                features = self.val_features.to(head.weight.device, head.weight.dtype)
                probabilities = head(features).float().softmax(dim=-1).cpu().numpy()
            return zeroshot_report(probabilities, np.array(self.val_labels), self.classes)
        mode = InferenceMode(self.precision.name)
        report = classifier_report(ImageClassifier(model, self.processor, mode=mode), self.val_images,
                                   self.val_labels, batch_size=32, workers=self.config.workers, progress=False)  # fmt: skip
        model.train()
        return report

    def evaluate(self, model: nn.Module, dist_: _Dist) -> dict[str, float]:
        if not self.val_images:
            return {}
        report = self.report(model)
        return {"eval_top1": report.top1, "eval_mean_per_class_recall": report.mean_per_class_recall}


TASKS["classify"] = Classify
