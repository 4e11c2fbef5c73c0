"""Zero-shot and retrieval evaluation: metrics against plain loops, full runs against hand computation."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from _material import CORRUPT_REASON
from siglip import evaluate_retrieval, evaluate_zeroshot
from siglip.tools.evaluation import (
    confusion_matrix,
    expected_calibration_error,
    plot_confusion_matrix,
    plot_reliability_diagram,
    recall_at_k,
    reliability,
    retrieval_report,
    topk_accuracy,
    zeroshot_report,
)
from siglip.tools.training.data import DataError

pytest_plugins = ["_fixtures"]


def _recall_by_loops(scores, positives, k):
    """CLIP_benchmark's definition, one query at a time: a hit when any positive is among the k best."""
    hits = 0
    for row, positive in zip(scores, positives, strict=True):
        best = sorted(range(len(row)), key=lambda j: -row[j])[:k]
        hits += any(positive[j] for j in best)
    return hits / len(scores)


def test_metrics_agree_with_plain_loops():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((40, 12))
    positives = rng.random((40, 12)) < 0.15
    for k in (1, 5, 10, 50):
        assert recall_at_k(scores, positives, k) == pytest.approx(_recall_by_loops(scores, positives, k))

    labels = rng.integers(0, 12, 40)
    for k in (1, 5):
        expected = np.mean([label in np.argsort(-row)[:k] for row, label in zip(scores, labels, strict=True)])
        assert topk_accuracy(scores, labels, k) == pytest.approx(expected)
    assert confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3).tolist() == [
        [1, 1, 0],
        [0, 1, 0],
        [1, 0, 1],
    ]


def _ece_by_loops(confidence, correct, bins):
    """ECE one bin at a time: bin k holds confidences in [k / bins, (k + 1) / bins), the last bin also 1."""
    total = 0.0
    for k in range(bins):
        members = [
            i
            for i, c in enumerate(confidence)
            if k / bins <= c < (k + 1) / bins or (k == bins - 1 and c == 1)
        ]
        if members:
            accuracy = sum(correct[i] for i in members) / len(members)
            mean_confidence = sum(confidence[i] for i in members) / len(members)
            total += len(members) / len(confidence) * abs(accuracy - mean_confidence)
    return total


def test_calibration_metrics_agree_with_plain_loops():
    rng = np.random.default_rng(0)
    confidence = np.concatenate([rng.random(200), [0.0, 1.0, 0.5]])
    correct = rng.random(len(confidence)) < confidence  # roughly calibrated
    for bins in (1, 10, 15):
        assert expected_calibration_error(confidence, correct, bins) == pytest.approx(
            _ece_by_loops(confidence, correct, bins)
        )
    # by hand: two bins of two; |1/2 - 0.2| and |1 - 0.9|, each weighted 1/2
    by_hand = reliability(np.array([0.1, 0.3, 0.85, 0.95]), np.array([True, False, True, True]), bins=2)
    assert by_hand.count.tolist() == [2, 2] and by_hand.accuracy.tolist() == [0.5, 1.0]
    assert by_hand.ece == pytest.approx((0.3 + 0.1) / 2)
    perfect = reliability(np.array([1.0, 1.0]), np.array([True, True]))  # empty bins count for nothing
    assert perfect.ece == 0.0 and np.isnan(perfect.accuracy[0]) and perfect.to_dict()["accuracy"][0] is None


def test_zeroshot_report_per_class_recall_and_top5_with_few_classes():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    report = zeroshot_report(scores, np.array([0, 1, 1, 2]), ["cat", "dog", "car"])
    assert (report.top1, report.top5) == (0.75, 1.0)  # top-5 of 3 classes counts all of them
    assert report.median_true_class_probability == pytest.approx(0.7)  # median of 0.9, 0.7, 0.3, 0.7
    assert report.ece == pytest.approx(_ece_by_loops([0.9, 0.7, 0.6, 0.7], [True, True, False, True], 15))
    assert report.per_class_recall == {"cat": 1.0, "dog": 0.5, "car": 1.0}
    assert report.mean_per_class_recall == pytest.approx(2.5 / 3)
    empty_class = zeroshot_report(scores[:2], np.array([0, 1]), ["cat", "dog", "car"])
    assert empty_class.per_class_recall["car"] is None and empty_class.mean_per_class_recall == 1.0


def _class_folders(root, photos):
    directory, _ = photos
    for name, source in {
        "cat": "chelsea",
        "coffee_cup": "coffee",
        "rocket": "rocket",
        "astronaut": "astronaut",
    }.items():
        (root / name).mkdir(parents=True)
        shutil.copy(directory / f"{source}.jpg", root / name / f"{source}.jpg")
    Image.open(directory / "chelsea.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        root / "cat" / "mirror.jpg"
    )
    shutil.copy(directory / "broken.jpg", root / "rocket" / "broken.jpg")
    return root


def test_evaluate_zeroshot_equals_hand_computation(embedder, photos, tmp_path):
    root = _class_folders(tmp_path / "classes", photos)
    report = evaluate_zeroshot(root, embedder, ["a photo of {}."], batch_size=2, workers=0, progress=False)

    classes = ["astronaut", "cat", "coffee cup", "rocket"]  # folder names, sorted, `_` read as a space
    images = [
        p for c in ["astronaut", "cat", "coffee_cup", "rocket"] for p in sorted((root / c).glob("*.jpg"))
    ]
    images = [p for p in images if p.name != "broken.jpg"]
    labels = np.array([classes.index(p.parent.name.replace("_", " ")) for p in images])
    cosines = (
        embedder.embed_images([str(p) for p in images], batch_size=2)
        @ embedder.embed_texts([f"a photo of {c}." for c in classes]).T
    )
    scale, bias = embedder.model.logit_scale.float().exp().item(), embedder.model.logit_bias.float().item()
    probabilities = 1 / (1 + np.exp(-(cosines * scale + bias)))  # the model's weights may be bf16: not exp(t)
    predicted = cosines.argmax(axis=1)

    assert report.classes == classes and report.count == 5
    assert report.top1 == pytest.approx(np.mean(predicted == labels))
    assert report.top5 == 1.0
    for i, name in enumerate(classes):
        assert report.per_class_recall[name] == pytest.approx(np.mean(predicted[labels == i] == i))
    assert report.confusion.sum() == 5 and np.trace(report.confusion) == np.sum(predicted == labels)
    assert [p for p, _ in report.skipped] == [str(root / "rocket" / "broken.jpg")]
    assert report.skipped[0][1].startswith(CORRUPT_REASON)
    true_class = probabilities[np.arange(5), labels]
    assert report.median_true_class_probability == pytest.approx(np.median(true_class), rel=1e-5)
    confidence = probabilities.max(axis=1)
    assert report.ece == pytest.approx(_ece_by_loops(confidence, predicted == labels, 15), rel=1e-5)

    for draw in (plot_confusion_matrix, plot_reliability_diagram):
        png = draw(report, tmp_path / f"{draw.__name__}.png")
        with Image.open(png) as plot:
            assert plot.format == "PNG" and plot.width > 300 and plot.height > 300


def test_evaluate_zeroshot_bad_data(embedder, tmp_path):
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="has no class sub-folders"):
        evaluate_zeroshot(tmp_path / "flat", embedder, workers=0)
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="has class folders but no images"):
        evaluate_zeroshot(tmp_path / "empty", embedder, workers=0)


def test_evaluate_retrieval_equals_hand_computation(embedder, photos, tmp_path):
    directory, _ = photos
    pairs = [
        ("chelsea.jpg", "Chelsea the cat."),
        ("chelsea.jpg", "a ginger cat"),
        ("coffee.jpg", "Coffee cup."),
        ("rocket.jpg", "Launch photo of DSCOVR on Falcon 9 by SpaceX."),
        ("astronaut.jpg", "Color image of the astronaut Eileen Collins."),
        ("grey/camera.png", "A man with a camera on a tripod."),
        ("broken.jpg", "nothing to see"),
        ("missing.jpg", "gone"),
    ]
    with open(directory / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "caption"), *pairs])

    report = evaluate_retrieval(directory / "pairs.csv", embedder, batch_size=2, workers=0, progress=False)

    usable = pairs[:6]
    images = list(dict.fromkeys(p for p, _ in usable))
    image_vectors = embedder.embed_images([str(directory / p) for p in images])
    text_vectors = embedder.embed_texts([c for _, c in usable])
    scores = text_vectors @ image_vectors.T
    positives = np.array([[images.index(p) == j for j in range(len(images))] for p, _ in usable])
    for k in (1, 5, 10):
        assert report.text_to_image[k] == pytest.approx(_recall_by_loops(scores, positives, k))
        assert report.image_to_text[k] == pytest.approx(_recall_by_loops(scores.T, positives.T, k))
    assert (report.images, report.captions) == (5, 6)
    assert sorted(p for p, _ in report.skipped) == [
        str(directory / "broken.jpg"),
        str(directory / "missing.jpg"),
    ]
    direct = retrieval_report(image_vectors, text_vectors, positives.argmax(axis=1))
    assert direct.to_dict()["text_to_image"] == report.to_dict()["text_to_image"]
