"""`siglip train --task classify`, `siglip classify --model FINETUNED` and `siglip eval` with a classifier:
a linear probe learns categories of the user's own that zero-shot cannot name, the checkpoint is transformers'
`SiglipForImageClassification`, an interrupted run resumes bit for bit, bad class folders are one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _material import FASHION_CLASSES, fashion_mnist, needs_fashion_mnist
from siglip import SiglipModel
from siglip.core.auto import AutoModelForImageClassification
from siglip.errors import UsageError
from siglip.tools.cli import main
from siglip.tools.training import DataError, TrainConfig, train, trainer

# A collection's own categories, each a group of Fashion-MNIST classes: names the bundled model never trained
# on ("tops" spans four of its classes), so zero-shot guesses where 20 labelled images per category teach a probe.
CATEGORIES = {
    "tops": ["t-shirt", "pullover", "coat", "shirt"],
    "shoes": ["sandal", "sneaker", "ankle boot"],
    "trousers": ["trousers"],
    "dress": ["dress"],
    "bag": ["bag"],
}
PER_CATEGORY = 20
pytestmark = needs_fashion_mnist


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """train/ and val/ class folders, PER_CATEGORY images each, from disjoint halves of the test split."""
    root = tmp_path_factory.mktemp("fashion")
    images, labels = fashion_mnist("t10k")
    for split, half in (("train", slice(0, 5000)), ("val", slice(5000, 10000))):
        for category, members in CATEGORIES.items():
            wanted = [FASHION_CLASSES.index(m) for m in members]
            rows = np.flatnonzero(np.isin(labels[half], wanted))[:PER_CATEGORY] + half.start
            (root / split / category).mkdir(parents=True)
            for i in rows:
                Image.fromarray(images[i]).save(root / split / category / f"{i}.png")
    return root


def _probe_args(folders: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--task", "classify", "--probe", "linear", "--data", str(folders / "train"),
            "--val", str(folders / "val"), "--model", "siglip-tiny-fashion", "--output-dir", str(output),
            "--batch-size", "25", "--epochs", "20", "--lr", "0.01", "--workers", "0", "--no-progress",
            "--precision", "fp32", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def probe(folders, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("probe")
    assert main(_probe_args(folders, output)) == 0
    return output


def _eval_top1(capsys, model: str, data: Path, tmp_path: Path) -> dict:
    args = ["eval", "zeroshot", "--model", model, "--data", str(data), "--json", "--workers", "0",
            "--no-progress", "--precision", "fp32", "--plot", str(tmp_path / "confusion.png")]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def test_linear_probe_beats_zero_shot_and_eval_reports_it(probe, folders, capsys, tmp_path):
    zero_shot = _eval_top1(capsys, "siglip-tiny-fashion", folders / "val", tmp_path)
    fine_tuned = _eval_top1(capsys, str(probe / "model"), folders / "val", tmp_path)
    print(f"val top-1: linear probe {fine_tuned['top1']:.3f}, zero-shot {zero_shot['top1']:.3f}")
    assert fine_tuned["top1"] >= zero_shot["top1"] + 0.2, (fine_tuned["top1"], zero_shot["top1"])
    assert fine_tuned["count"] == zero_shot["count"] == len(CATEGORIES) * PER_CATEGORY
    assert sorted(fine_tuned["classes"]) == sorted(CATEGORIES) and fine_tuned.keys() == zero_shot.keys()
    # The accuracy logged after the last step is the one `siglip eval` measures on the saved model.
    last = json.loads((probe / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["eval_top1"] == pytest.approx(fine_tuned["top1"], abs=1e-9)


def test_checkpoint_is_transformers_classifier_with_the_same_logits(probe, folders, capsys):
    transformers = pytest.importorskip("transformers")
    final = probe / "model"
    theirs = transformers.SiglipForImageClassification.from_pretrained(final).eval()
    ours = AutoModelForImageClassification.from_pretrained(final).eval()
    assert theirs.config.id2label == dict(enumerate(sorted(CATEGORIES)))
    assert theirs.config.label2id == {c: i for i, c in enumerate(sorted(CATEGORIES))}
    processor = transformers.SiglipImageProcessor.from_pretrained(final)
    images = sorted((folders / "val").glob("*/*.png"))[::7]
    pixels = processor(images=[Image.open(p) for p in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected, got = theirs(pixel_values=pixels).logits, ours(pixel_values=pixels).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    # siglip classify: no labels, the top-k of the head's softmax (summing to 1 over all classes)
    capsys.readouterr()
    assert main(["classify", "--model", str(final), *map(str, images[:3]), "--top-k", "5", "--json",
                 "--workers", "0", "--precision", "fp32"]) == 0  # fmt: skip
    results = json.loads(capsys.readouterr().out)["results"]
    probabilities = expected[:3].softmax(-1)
    for result, row in zip(results, probabilities, strict=True):
        assert result["labels"][0]["label"] == theirs.config.id2label[int(row.argmax())]
        assert sum(r["score"] for r in result["labels"]) == pytest.approx(1.0, abs=1e-5)
        assert max(r["score"] for r in result["labels"]) == pytest.approx(float(row.max()), abs=1e-5)


def test_naflex_probe_is_transformers_siglip2_classifier(tmp_path):
    """The NaFlex family: a probe on images of mixed aspect ratios (padded patch grids) saves a
    `Siglip2ForImageClassification` that transformers runs to the same logits."""
    transformers = pytest.importorskip("transformers")
    from _material import save_tiny_naflex

    start = save_tiny_naflex(tmp_path / "start")
    rng = np.random.default_rng(0)
    for name, rgb in {"red": (220, 30, 30), "blue": (30, 30, 220)}.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for i, size in enumerate([(8, 40), (40, 8), (24, 24), (17, 61)]):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / name / f"{i}.png")
    final = train(TrainConfig(data=str(tmp_path / "data"), output_dir=str(tmp_path / "out"), model=str(start),
                              task="classify", probe="linear", batch_size=6, steps=2, lr=0.1, workers=0,
                              progress=False, precision="fp32"))  # fmt: skip
    theirs = transformers.Siglip2ForImageClassification.from_pretrained(final).eval()
    ours = AutoModelForImageClassification.from_pretrained(final).eval()
    assert type(ours).__name__ == "Siglip2ForImageClassification"
    processor = transformers.Siglip2ImageProcessor.from_pretrained(final)
    images = [Image.open(p) for p in sorted((tmp_path / "data").glob("*/*.png"))]
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits, theirs(**inputs).logits, atol=1e-5, rtol=1e-5)
    frozen = AutoModelForImageClassification.from_pretrained(start, num_labels=2).vision_model.state_dict()
    assert all(torch.equal(v, frozen[k]) for k, v in ours.vision_model.state_dict().items())


class _Interrupted(Exception):
    """What the test raises to stop a run right after a checkpoint, as a crash would."""


@pytest.mark.parametrize("probe", [None, "linear"])
def test_interrupted_training_resumes_to_the_same_weights(probe, folders, tmp_path, monkeypatch):
    def config(output: Path, **changes) -> TrainConfig:
        values = dict(data=str(folders / "train"), output_dir=str(output), model="siglip-tiny-fashion",
                      task="classify", probe=probe, val_fraction=0.2 if probe else 0.0, batch_size=10, steps=2,
                      save_every=1, lr=1e-3, log_every=1, workers=0, progress=False, precision="fp32")  # fmt: skip
        return TrainConfig(**{**values, **changes})

    straight = train(config(tmp_path / "a"))
    real_checkpoint = trainer._checkpoint

    def crash(*args, **kwargs):
        real_checkpoint(*args, **kwargs)
        raise _Interrupted

    monkeypatch.setattr(trainer, "_checkpoint", crash)
    with pytest.raises(_Interrupted):
        train(config(tmp_path / "b"))
    monkeypatch.undo()
    resumed = train(config(tmp_path / "b", resume=True))
    from safetensors.torch import load_file

    reference, result = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert reference.keys() == result.keys() and "classifier.weight" in reference
    assert all(torch.equal(result[k], reference[k]) for k in reference), "resumed run diverged"
    metrics = [(tmp_path / run / "metrics.jsonl").read_text().splitlines() for run in "ab"]
    losses = [[json.loads(line)["loss"] for line in lines] for lines in metrics]
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    # a probe leaves the image tower as it was; without one, the whole classifier trains
    start = SiglipModel.from_pretrained("siglip-tiny-fashion").state_dict()
    name = "vision_model.embeddings.patch_embedding.weight"
    assert torch.equal(reference[name], start[name]) == (probe == "linear")
    # resuming on other class folders is refused, not trained on with the old names
    other = tmp_path / "other"
    for category in ("bag", "dress"):
        shutil.copytree(folders / "train" / category, other / category)
    with pytest.raises(
        DataError, match=r"trained on the classes \['bag', 'dress', 'shoes', 'tops', 'trousers'\]"
    ):
        train(config(tmp_path / "b", resume=True, data=str(other)))


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"a": 2, "b": 0}, "data '{root}': class folder 'b' has no images"),
        ({"a": 3}, "data '{root}' has one class folder ('a'); a classifier needs at least two"),
    ],
)
def test_bad_class_folders_are_one_line_errors(layout, message, tmp_path, capsys):
    root = tmp_path / "data"
    for name, count in layout.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (28, 28), (i * 40, 0, 0)).save(root / name / f"{i}.png")
    args = ["train", "--task", "classify", "--probe", "linear", "--data", str(root), "--model",
            "siglip-tiny-fashion", "--output-dir", str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"siglip train: error: {message.format(root=root)}"
    assert not (tmp_path / "out").exists()  # nothing written


def test_auto_precision_loads_a_classifier_where_two_tower_models_run_int8(probe, monkeypatch):
    """On an x86 CPU without AMX `auto` means int8 for two-tower models, which classifiers do not offer:
    a classifier loaded with `auto` there runs its float choice instead of being refused."""
    from siglip.tools.classifier import ImageClassifier
    from siglip.tools.embeddings import precision

    monkeypatch.setattr(precision, "fast_int8", lambda device: True)
    monkeypatch.setattr(precision, "has_amx", lambda device: False)
    assert precision.auto_precision("cpu")[0] == "int8"
    classifier = ImageClassifier.from_pretrained(probe / "model", "cpu")
    assert classifier.mode.precision == "fp32"  # the suite pins SIGLIP_BF16_UNITS=0: no bf16 units
    with pytest.raises(UsageError, match="int8"):
        ImageClassifier.from_pretrained(probe / "model", "cpu", precision="int8")
    with pytest.raises(UsageError, match="--calibration applies to --precision int8-static, not to 'fp32'"):
        ImageClassifier.from_pretrained(probe / "model", "cpu", calibration=[str(probe)])
