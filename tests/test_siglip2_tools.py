"""Every tool on SigLIP 2 checkpoints the tests make: a fixed-resolution one (model_type "siglip", Gemma
tokenizer) and a NaFlex one (model_type "siglip2"), with no flag. Results are checked against the models
themselves; mixed aspect ratios share a batch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from _material import save_tiny_fixres_siglip2, save_tiny_naflex, write_photos
from siglip import (
    AutoModel,
    AutoProcessor,
    CheckpointError,
    Embedder,
    Siglip2Model,
    SiglipModel,
    pipeline,
)
from siglip.errors import UsageError

ASPECTS = [(1, 1), (1, 400), (400, 1), (333, 517), (224, 224), (48, 96)]  # (height, width)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("siglip2")
    return {
        "fixres": str(save_tiny_fixres_siglip2(root / "fixres")),
        "naflex": str(save_tiny_naflex(root / "naflex")),
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """Real photos and images of extreme aspect ratios, as files."""
    folder = tmp_path_factory.mktemp("aspects")
    rng = np.random.default_rng(0)
    paths = [str(p) for p in write_photos(folder / "photos")]
    for height, width in ASPECTS:
        path = folder / f"{height}x{width}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _siglip(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "siglip", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def _ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr
    return done


def test_auto_classes_pick_the_family(checkpoints):
    assert type(AutoModel.from_pretrained(checkpoints["fixres"])) is SiglipModel
    assert type(AutoModel.from_pretrained(checkpoints["naflex"])) is Siglip2Model
    processor = AutoProcessor.from_pretrained(checkpoints["naflex"])
    assert type(processor).__name__ == "Siglip2Processor"
    assert type(processor.tokenizer).__name__ == "Siglip2Tokenizer"
    with pytest.raises(CheckpointError, match=r"config.json.*Siglip2Model"):
        SiglipModel.from_pretrained(checkpoints["naflex"])


@pytest.mark.parametrize("family", ["fixres", "naflex"])
def test_embedder_equals_the_model_one_image_at_a_time(checkpoints, images, family):
    """A batch mixing aspect ratios (NaFlex pads each image's patches) gives each image the embedding it gets
    alone; texts are embedded as the model embeds lowercased, fixed-length text."""
    embedder = Embedder.from_pretrained(checkpoints[family], device="cpu", precision="fp32")
    model, processor = embedder.model, embedder.processor
    batch = embedder.embed_images(images, batch_size=len(images))
    with torch.inference_mode():
        alone = [
            model.encode_images(**processor.image_processor(path, return_tensors="pt"))[0] for path in images
        ]
    np.testing.assert_allclose(batch, torch.stack(alone).numpy(), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1, atol=1e-5)

    texts = ["A Photo of a CAT.", "a photo of a cat.", "ΣΟΦΙΑ"]
    vectors = embedder.embed_texts(texts)
    np.testing.assert_array_equal(vectors[0], vectors[1])  # SigLIP 2 was trained on lowercased text
    ids = processor(text=[t.lower() for t in texts[1:]])["input_ids"]
    assert ids.shape[1] == 64
    with torch.inference_mode():
        expected = model(
            input_ids=ids, **processor.image_processor(images[:2], return_tensors="pt")
        ).text_embeds
    np.testing.assert_allclose(vectors[1:], expected.numpy(), atol=2e-6)


def test_pipeline_scores_are_the_model_logits_through_a_sigmoid(checkpoints, images):
    classifier = pipeline(
        model=Embedder.from_pretrained(checkpoints["naflex"], device="cpu", precision="fp32")
    )
    labels = ["cat", "dog", "rocket"]
    result = classifier(images[:3], candidate_labels=labels, hypothesis_template="{}")
    model, processor = classifier.embedder.model, classifier.embedder.processor
    with torch.inference_mode():
        logits = model(**processor(text=labels, images=images[:3])).logits_per_image
    for row, expected in zip(result, torch.sigmoid(logits).numpy(), strict=True):
        by_label = {r["label"]: r["score"] for r in row}
        np.testing.assert_allclose([by_label[label] for label in labels], expected, rtol=1e-4)


def test_max_num_patches_reaches_the_image_processor_and_is_checked(checkpoints, images):
    embedder = Embedder.from_pretrained(
        checkpoints["naflex"], device="cpu", precision="fp32", max_num_patches=16
    )
    inputs = embedder.processor.image_processor(images[0], return_tensors="pt")
    assert inputs["pixel_values"].shape[1] == 16
    assert int(inputs["pixel_attention_mask"].sum()) <= 16
    with pytest.raises(UsageError, match=r"NaFlex models; .*fixres.* resizes every image to 32x32"):
        Embedder.from_pretrained(checkpoints["fixres"], device="cpu", max_num_patches=64)
    with pytest.raises(UsageError, match="reduced-decode applies to fixed-size models"):
        Embedder.from_pretrained(checkpoints["naflex"], device="cpu", reduced_decode=True)
    done = _siglip(
        "classify", images[0], "--labels", "a", "--model", checkpoints["naflex"], "--max-num-patches", "0"
    )
    assert done.returncode == 2 and "--max-num-patches" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("family", ["fixres", "naflex"])
def test_every_command_runs_on_the_checkpoint(checkpoints, images, family, tmp_path):
    model = checkpoints[family]
    embedder = Embedder.from_pretrained(model, device="cpu", precision="fp32")
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in images:
        shutil.copy(path, folder)
    files = sorted(str(p) for p in folder.iterdir())

    classified = json.loads(
        _ok(
            _siglip(
                "classify", folder, "--labels", "Cat", "dog", "--model", model, "--json", "--workers", "0"
            )
        ).stdout
    )
    assert len(classified["results"]) == len(files)

    out = tmp_path / "vectors.npy"
    _ok(_siglip("embed", folder, "--out", out, "--model", model, "--batch-size", "4", "--workers", "2"))
    manifest = json.loads(out.with_suffix(".npy.json").read_text())
    vectors = dict(zip(manifest["paths"], np.load(out), strict=True))
    expected = dict(zip(files, embedder.embed_images(files), strict=True))
    assert vectors.keys() == expected.keys()
    for path, vector in vectors.items():
        np.testing.assert_allclose(vector, expected[path], atol=2e-6)

    index = tmp_path / "index"
    _ok(_siglip("index", folder, "--index", index, "--model", model, "--batch-size", "3"))
    found = json.loads(_ok(_siglip("search", "A Cat", "--index", index, "-k", "3", "--json")).stdout)[
        "results"
    ]
    query = embedder.embed_texts(["a cat"])[0]
    ranking = sorted(files, key=lambda p: -float(expected[p] @ query))[:3]
    assert [r["path"] for r in found] == ranking

    labelled = tmp_path / "labelled"
    for name, chosen in (("wide", files[:4]), ("tall", files[4:])):
        (labelled / name).mkdir(parents=True)
        for path in chosen:
            shutil.copy(path, labelled / name)
    args = ("eval", "zeroshot", "--data", labelled, "--model", model, "--json", "--plot", tmp_path / "cm.png")
    report = json.loads(_ok(_siglip(*args)).stdout)
    assert report["count"] == len(files)

    run = tmp_path / "run"
    _ok(_siglip("train", "--data", labelled, "--model", model, "--output-dir", run, "--batch-size", "4",
                "--steps", "2", "--workers", "0", "--templates", "a photo of a {}", "--lr", "1e-3"))  # fmt: skip
    trained = AutoModel.from_pretrained(run / "model")
    assert type(trained) is type(embedder.model)
    assert not torch.equal(trained.logit_bias, embedder.model.logit_bias)  # it trained


def test_inference_modes_run_naflex(checkpoints, images):
    """int8 quantises the NaFlex patch embedding (a Linear) too; bf16 casts the patches to the weights."""
    reference = Embedder.from_pretrained(checkpoints["naflex"], device="cpu", precision="fp32").embed_images(
        images
    )
    for precision in ("int8", "bf16"):
        vectors = Embedder.from_pretrained(
            checkpoints["naflex"], device="cpu", precision=precision
        ).embed_images(images)
        cosine = (vectors * reference).sum(axis=1)
        assert cosine.min() > 0.99, (precision, cosine)
        assert not np.array_equal(vectors, reference)


def test_naflex_onnx_export_matches_the_model_at_any_batch_and_patch_budget(checkpoints, tmp_path, capsys):
    """`siglip export` on a NaFlex checkpoint: the graph takes the image processor's three outputs, resizes
    the position grid to each image's spatial_shapes itself, and runs at any batch size and max_num_patches.

    Tolerance 1e-5 on features of magnitude ~2: onnxruntime sums in another order than PyTorch, and float32
    rounding through two layers stays near 1e-6 (measured: at most 1.1e-6)."""
    ort = pytest.importorskip("onnxruntime")
    from siglip.tools.cli import main

    assert main(["export", "--model", checkpoints["naflex"], "--out", str(tmp_path)]) == 0
    assert "vision: onnxruntime vs PyTorch" in capsys.readouterr().out
    session = ort.InferenceSession(str(tmp_path / "vision_model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    pictures = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                for h, w in ((1, 1), (1, 4000), (333, 517), (224, 224), (4000, 3))]  # fmt: skip
    model = AutoModel.from_pretrained(checkpoints["naflex"]).eval()
    processor = AutoProcessor.from_pretrained(tmp_path).image_processor  # as saved beside the graph
    for max_num_patches, chosen in ((64, pictures), (24, pictures), (100, pictures[1:2])):
        processor.max_num_patches = max_num_patches
        inputs = processor(chosen, return_tensors="pt")
        assert inputs["pixel_values"].shape[:2] == (len(chosen), max_num_patches)
        ours = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})[0]
        with torch.inference_mode():
            expected = model.get_image_features(**inputs).numpy()
        np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_an_index_embeds_as_it_was_built_and_refuses_other_settings(checkpoints, images, tmp_path, capsys):
    """The index records precision and max_num_patches: a later update or image search without them embeds
    alike (the vectors equal an Embedder made with those settings, not the checkpoint's default budget), and
    other values, asked for or in a given Embedder, are refused before anything is embedded."""
    from siglip import SearchIndex
    from siglip.errors import StoreError
    from siglip.tools.cli import main

    model, index = checkpoints["naflex"], str(tmp_path / "index")
    first, later = images[:3], images[3:5]
    args = ["index", *first, "--index", index, "--model", model, "--max-num-patches", "16", "--workers", "0"]
    assert main([*args, "--precision", "fp32"]) == 0
    capsys.readouterr()
    assert main(["info", index, "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["embedding"] == {
        "precision": "fp32",
        "max_num_patches": 16,
        "reduced_decode": None,
        "image_backend": "torch",  # the default, recorded by name
    }
    assert main(["info", index]) == 0
    assert "precision fp32, max_num_patches 16" in capsys.readouterr().out

    assert main(["index", *later, "--index", index, "--workers", "0"]) == 0  # no options: the recorded ones
    budget16 = Embedder.from_pretrained(model, device="cpu", precision="fp32", max_num_patches=16)
    default = Embedder.from_pretrained(model, device="cpu", precision="fp32")
    expected = budget16.embed_images(later)
    assert not np.allclose(expected, default.embed_images(later), atol=1e-3)  # the budget matters
    with SearchIndex(index) as opened:
        assert opened.embedder.settings == {
            "precision": "fp32",
            "max_num_patches": 16,
            "reduced_decode": None,
            "image_backend": "torch",
        }
        hit = opened.search_image(later[1], k=1)[0]
        assert hit.path == later[1] and hit.score == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(opened.entry(hit.id)[1], expected[1], atol=1e-6)  # flat fp32 storage

    capsys.readouterr()
    for option, value in (("--max-num-patches", "32"), ("--precision", "int8")):
        assert main(["index", *later, "--index", index, option, value]) == 2
        error = capsys.readouterr().err
        recorded = "16" if option == "--max-num-patches" else "fp32"
        assert f"was built with {option} {recorded}, asked for {value}" in error
    assert main(["index", *later, "--index", index, "--precision", "auto"]) == 0  # fp32 here, as recorded
    with pytest.raises(StoreError, match="max-num-patches 16, the model given runs with 64"):
        SearchIndex(index, default).update(images[5:6], workers=0)
    with SearchIndex(index) as opened:
        assert len(opened) == len(first + later)  # refused before any change
