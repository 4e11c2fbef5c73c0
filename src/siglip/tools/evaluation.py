"""Evaluation on your own data: zero-shot classification of class folders, and image-text retrieval.

Metrics are computed as CLIP_benchmark computes them:
- zero-shot: top-1 and top-5 accuracy (top-k with k = min(5, classes)), per-class recall and its mean
  (balanced accuracy), and the confusion matrix; classes are prompt-ensembled label embeddings;
- calibration of the zero-shot probabilities `sigmoid(exp(t) cos + b)` (each class scored independently):
  the expected calibration error of the top-1 probability over equal-width confidence bins (Guo et al. 2017)
  with its reliability diagram, and the median probability given to the true class;
- retrieval: recall@k in the CLIP-paper sense, the fraction of queries with at least one correct item among
  their k best, for text -> image (each caption has one image) and image -> text (an image may have
  several captions); k larger than the number of candidates counts all of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import NoImagesError
from .classifier import ImageClassifier, class_ids
from .deps import require
from .embeddings.embedder import EmbeddedBatch, Embedder
from .inputs.data import ClassFolders, PairsFile
from .inputs.files import skipped_as_json
from .zeroshot import DEFAULT_TEMPLATE, scores

RECALL_KS = (1, 5, 10)
CALIBRATION_BINS = 15


# --- metrics (plain numpy, independent of the model) ------------------------------------------------------
def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows of `scores` (N, C) whose true class `labels` (N,) is among the k highest."""
    k = min(k, scores.shape[1])
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((best == labels[:, None]).any(axis=1).mean())


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def recall_at_k(scores: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Fraction of queries (rows of `scores`, (Q, C)) with a positive (`positives`, bool (Q, C)) in their top k."""
    k = min(k, scores.shape[1])
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float(np.take_along_axis(positives, best, axis=1).any(axis=1).mean())


@dataclass
class Reliability:
    """Predictions grouped by confidence into equal-width bins of [0, 1]: per bin, how many, their mean
    confidence and their accuracy (NaN for an empty bin)."""

    edges: np.ndarray  # (bins + 1,)
    count: np.ndarray  # (bins,)
    confidence: np.ndarray  # (bins,)
    accuracy: np.ndarray  # (bins,)

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean of |accuracy - confidence| over the bins."""
        filled = self.count > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((self.count[filled] * gaps).sum() / self.count.sum())

    def to_dict(self) -> dict[str, list]:
        return {
            "edges": self.edges.tolist(),
            "count": self.count.tolist(),
            "confidence": [None if np.isnan(c) else c for c in self.confidence.tolist()],
            "accuracy": [None if np.isnan(a) else a for a in self.accuracy.tolist()],
        }


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> Reliability:
    """Bin predictions of `confidence` (N,) in [0, 1], right (`correct`, bool (N,)) or not, into `bins`
    equal-width bins; bin k holds confidences in [k / bins, (k + 1) / bins), the last one also 1."""
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore"):  # empty bins: 0 / 0 = NaN
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct.astype(np.float64), minlength=bins) / count
    return Reliability(np.linspace(0.0, 1.0, bins + 1), count, mean_confidence, accuracy)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS
) -> float:
    """ECE of predictions of `confidence` (N,) that are `correct` (bool (N,)), over `bins` equal-width bins."""
    return reliability(confidence, correct, bins).ece


# --- zero-shot classification -----------------------------------------------------------------------------
@dataclass
class ZeroShotReport:
    """Zero-shot (or a fine-tuned classifier's, see `evaluate_classifier`) results on a folder of class folders,
    with the calibration of the probabilities."""

    classes: list[str]
    top1: float
    top5: float
    mean_per_class_recall: float
    per_class_recall: dict[str, float | None]  # None: no readable image of that class
    confusion: np.ndarray  # (C, C) counts, row = true class
    count: int  # images evaluated
    ece: float  # expected calibration error of the top-1 probability
    median_true_class_probability: float
    reliability: Reliability  # of the top-1 probability
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "mean_per_class_recall": self.mean_per_class_recall,
            "ece": self.ece,
            "median_true_class_probability": self.median_true_class_probability,
            "per_class_recall": self.per_class_recall,
            "count": self.count,
            "classes": self.classes,
            "confusion": self.confusion.tolist(),
            "reliability": self.reliability.to_dict(),
            "skipped": skipped_as_json(self.skipped),
        }


def zeroshot_report(
    probabilities: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    skipped: Sequence[tuple[str, str]] = (),
) -> ZeroShotReport:
    """The metrics of image-by-class `probabilities` (N, C) against the true `labels` (N,)."""
    predicted = probabilities.argmax(axis=1)
    confusion = confusion_matrix(labels, predicted, len(classes))
    per_class = confusion.sum(axis=1)
    recall = {
        c: float(confusion[i, i] / per_class[i]) if per_class[i] else None for i, c in enumerate(classes)
    }
    present = [r for r in recall.values() if r is not None]
    bins = reliability(probabilities.max(axis=1), predicted == labels)
    return ZeroShotReport(
        classes=list(classes),
        top1=topk_accuracy(probabilities, labels, 1),
        top5=topk_accuracy(probabilities, labels, 5),
        mean_per_class_recall=float(np.mean(present)),
        per_class_recall=recall,
        confusion=confusion,
        count=len(labels),
        ece=bins.ece,
        median_true_class_probability=float(np.median(probabilities[np.arange(len(labels)), labels])),
        reliability=bins,
        skipped=list(skipped),
    )


def evaluate_zeroshot(
    data: str | os.PathLike,
    embedder: Embedder,
    templates: Sequence[str] = (DEFAULT_TEMPLATE,),
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool | None = None,
) -> ZeroShotReport:
    """Zero-shot classification of `data`, a folder with one sub-folder of images per class.

    Class names are the folder names with `_` read as a space; each class is the ensemble of `templates`.
    An image's probability for a class is the model's `sigmoid(exp(t) cos + b)`. Unreadable images are
    skipped and listed in the report.
    """
    dataset = ClassFolders(data)
    classes = torch.from_numpy(embedder.class_embeddings(dataset.class_names, templates))
    return _report_of_batches(
        embedder.embed_files(dataset.images, batch_size, workers, progress),
        lambda vectors: scores(embedder.model, torch.from_numpy(vectors), classes).numpy(),
        dict(zip(dataset.images, dataset.labels, strict=True)),
        dataset.class_names,
        dataset.skipped,
        f"none of the {len(dataset)} images in '{data}' could be read",
    )


def classifier_report(
    classifier: ImageClassifier,
    images: Sequence[str],
    labels: Sequence[int],
    skipped: Sequence[tuple[str, str]] = (),
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool | None = None,
) -> ZeroShotReport:
    """The metrics of a fine-tuned classifier's probabilities on `images` of the true class ids `labels`
    (indices into `classifier.labels`); unreadable images are skipped and listed with `skipped`."""
    return _report_of_batches(
        classifier.classify_files(images, batch_size, workers, progress),
        lambda probabilities: probabilities,
        dict(zip(images, labels, strict=True)),
        classifier.labels,
        skipped,
        f"none of the {len(images)} images could be read",
    )


def _report_of_batches(
    batches: Iterable[EmbeddedBatch],
    probabilities_of: Callable[[np.ndarray], np.ndarray],
    label_of: dict[str, int],
    class_names: Sequence[str],
    skipped: Sequence[tuple[str, str]],
    none_read: str,
) -> ZeroShotReport:
    """The report of the class probabilities `probabilities_of(batch.vectors)` of file `batches`, each file's
    true class from `label_of`; unreadable files join `skipped`, and none read at all is a `NoImagesError`
    saying `none_read`."""
    probabilities, labels, skipped = [], [], list(skipped)
    for batch in batches:
        probabilities.append(probabilities_of(batch.vectors))
        labels += [label_of[f.path] for f in batch.files]
        skipped += [(f.path, reason) for f, reason in batch.failed]
    if not labels:
        raise NoImagesError(none_read)
    return zeroshot_report(np.concatenate(probabilities), np.array(labels), class_names, skipped)


def evaluate_classifier(
    data: str | os.PathLike,
    classifier: ImageClassifier,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool | None = None,
) -> ZeroShotReport:
    """A fine-tuned classifier (`siglip train --task classify`) on `data`, a folder of class folders named
    as the classifier's classes (a subset of them is fine); the report of `evaluate_zeroshot`, with the
    head's probabilities (softmax) in place of the zero-shot ones."""
    dataset = ClassFolders(data)
    labels = class_ids(dataset.classes, dataset.labels, classifier.labels, os.fspath(data))
    return classifier_report(
        classifier, dataset.images, labels, dataset.skipped, batch_size, workers, progress
    )


def _pyplot(purpose: str) -> Any:
    require("matplotlib", "eval", purpose)
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(report: ZeroShotReport, path: str | os.PathLike) -> Path:
    """Write the confusion matrix as a PNG heat map: rows normalised to recall, counts written in small ones."""
    plt = _pyplot("the confusion-matrix plot")

    confusion = report.confusion
    n = len(report.classes)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = min(max(4.0, 0.45 * n + 2.5), 40.0)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    shown = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(n), report.classes, rotation=60, ha="right")
    ax.set_yticks(range(n), report.classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"top-1 {report.top1:.1%}, {report.count} images")  # zero-shot or a fine-tuned head
    if n <= 30:  # numbers stay legible
        for (i, j), count in np.ndenumerate(confusion):
            color = "white" if rates[i, j] > 0.5 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color=color)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_reliability_diagram(report: ZeroShotReport, path: str | os.PathLike) -> Path:
    """Write the reliability diagram of the top-1 probability as a PNG: per confidence bin, the accuracy
    (bars) against the mean confidence (the diagonal is perfect calibration), and how many images fell in it."""
    plt = _pyplot("the reliability diagram")
    bins = report.reliability
    width = np.diff(bins.edges)
    filled = bins.count > 0
    fig, (ax, counts) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.bar(bins.edges[:-1][filled], bins.accuracy[filled], width=width[filled], align="edge",
           color="tab:blue", edgecolor="white", label="accuracy")  # fmt: skip
    ax.plot(bins.confidence[filled], bins.accuracy[filled], "o", color="tab:orange", markersize=4,
            label="(mean confidence, accuracy)")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy of the top-1 class")
    ax.set_title(
        f"top-1 {report.top1:.1%}, ECE {report.ece:.3f}, median true-class p "
        f"{report.median_true_class_probability:.2f}",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8)
    counts.bar(bins.edges[:-1], bins.count, width=width, align="edge", color="grey", edgecolor="white")
    counts.set(xlabel="top-1 probability (confidence)", ylabel="images")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- retrieval --------------------------------------------------------------------------------------------
@dataclass
class RetrievalReport:
    """Recall@k both ways on image-caption pairs."""

    image_to_text: dict[int, float]  # k -> recall@k
    text_to_image: dict[int, float]
    images: int
    captions: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): unreadable or missing

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_to_text": {f"R@{k}": v for k, v in self.image_to_text.items()},
            "text_to_image": {f"R@{k}": v for k, v in self.text_to_image.items()},
            "images": self.images,
            "captions": self.captions,
            "skipped": skipped_as_json(self.skipped),
        }


def retrieval_report(
    image_embeds: np.ndarray,
    text_embeds: np.ndarray,
    image_of_text: np.ndarray,
    ks: Sequence[int] = RECALL_KS,
    skipped: Sequence[tuple[str, str]] = (),
) -> RetrievalReport:
    """Recall@k of unit-length `image_embeds` (I, D) and `text_embeds` (T, D); text t describes image
    `image_of_text[t]`."""
    scores = text_embeds @ image_embeds.T  # (T, I)
    positives = np.zeros(scores.shape, dtype=bool)
    positives[np.arange(len(image_of_text)), image_of_text] = True
    return RetrievalReport(
        image_to_text={k: recall_at_k(scores.T, positives.T, k) for k in ks},
        text_to_image={k: recall_at_k(scores, positives, k) for k in ks},
        images=len(image_embeds),
        captions=len(text_embeds),
        skipped=list(skipped),
    )


def evaluate_retrieval(
    data: str | os.PathLike,
    embedder: Embedder,
    image_column: str = "image",
    caption_column: str = "caption",
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool | None = None,
    ks: Sequence[int] = RECALL_KS,
) -> RetrievalReport:
    """Image-text retrieval on a `.csv`, `.tsv` or `.jsonl` file of (image path, caption) rows.

    An image may appear on several rows (one per caption). Captions of missing or unreadable images are left
    out, and those images listed in the report.
    """
    pairs = PairsFile(data, image_column, caption_column)
    unique = list(dict.fromkeys(pairs.images))
    vectors, readable, skipped = [], [], [(p, "no such file") for p in pairs.missing]
    for batch in embedder.embed_files(unique, batch_size, workers, progress):
        vectors.append(batch.vectors)
        readable += [f.path for f in batch.files]
        skipped += [(f.path, reason) for f, reason in batch.failed]
    if not readable:
        raise NoImagesError(f"none of the images of '{data}' could be read")
    position = {path: i for i, path in enumerate(readable)}
    kept = [(position[p], c) for p, c in zip(pairs.images, pairs.captions, strict=True) if p in position]
    texts = embedder.embed_texts([c for _, c in kept], batch_size=256)
    image_of_text = np.array([i for i, _ in kept])
    return retrieval_report(np.concatenate(vectors), texts, image_of_text, ks, skipped)
