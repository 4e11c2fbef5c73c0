"""`int8-static`: int8 with activation scales calibrated ahead on inputs the user names (`--calibration`),
compiled by AOTInductor. The oracle is the float32 model: the issue's int8 bounds (cosine >= 0.995, zero-shot
agreement >= 99% on the bundled model), and the property that makes the scales static: an item's embedding
does not depend on what shares its batch (per-call scales, as `int8`'s, do)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from _material import BUNDLED, FASHION_CLASSES, fashion_mnist, needs_fashion_mnist
from siglip import Embedder, SiglipModel
from siglip.errors import UsageError
from siglip.tools.cli import main
from siglip.tools.embeddings import compiled
from siglip.tools.embeddings.calibration import (
    MAX_IMAGES,
    UNCALIBRATED,
    calibration_inputs,
    read_calibration,
)
from siglip.tools.embeddings.compiled import CompiledTower
from siglip.tools.embeddings.inference import InferenceMode
from siglip.tools.embeddings.options import ModelOptions
from siglip.tools.embeddings.writers import embed_to_file

pytest.importorskip("torchao")
pytestmark = needs_fashion_mnist
PROMPTS = ["a photo of a {}.", "an image of the {}", "this is a {}", "a picture of a {}, for sale"]


def _fashion(split: str, count: int) -> list[np.ndarray]:
    return list(fashion_mnist(split)[0][:count])


@pytest.fixture(scope="module")
def calibration_folder(tmp_path_factory) -> Path:
    """64 Fashion-MNIST training images and a .txt file of prompts: the kind of inputs the model embeds, none
    of them among the test images."""
    folder = tmp_path_factory.mktemp("calibration")
    for i, image in enumerate(_fashion("train", 64)):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    texts = [prompt.format(label) for label in FASHION_CLASSES for prompt in PROMPTS]
    (folder / "prompts.txt").write_text("\n".join(texts) + "\n")
    return folder


@pytest.fixture(scope="module")
def static(calibration_folder) -> Embedder:
    return Embedder.from_pretrained(
        BUNDLED, "cpu", precision="int8-static", calibration=[str(calibration_folder)]
    )


def test_int8_static_keeps_the_int8_bounds_on_the_bundled_model(static):
    reference = Embedder.from_pretrained(BUNDLED, "cpu", precision="fp32")
    test_images = _fashion("t10k", 512)
    labels = [f"a photo of a {label}." for label in FASHION_CLASSES]
    assert isinstance(static.model.vision_model, CompiledTower)
    assert static.model.vision_model.precision == static.model.text_model.precision == "int8-static"
    images, texts = static.embed_images(test_images, 64), static.embed_texts(labels)
    ref_images, ref_texts = reference.embed_images(test_images, 64), reference.embed_texts(labels)
    image_cosine = (images * ref_images).sum(-1)
    text_cosine = (texts * ref_texts).sum(-1)
    agreement = ((images @ texts.T).argmax(-1) == (ref_images @ ref_texts.T).argmax(-1)).mean()
    print(f"int8-static: image cosine min {image_cosine.min():.5f}, text {text_cosine.min():.5f}, "
          f"agreement {agreement:.4f}")  # fmt: skip
    assert image_cosine.min() >= 0.995 and text_cosine.min() >= 0.995
    assert agreement >= 0.99


def test_an_items_embedding_does_not_depend_on_its_batch(static):
    """Static scales: an image embedded alone and beside an image of another range gives the same vector;
    with `int8`'s per-call scales the neighbour changes it (the check can fail)."""
    image = _fashion("t10k", 1)[0]
    loud = np.where(np.indices((28, 28)).sum(0) % 2 == 0, 255, 0).astype(np.uint8)  # a checkerboard
    dynamic = Embedder.from_pretrained(BUNDLED, "cpu", precision="int8")
    for embedder, bound in ((static, 1e-5), (dynamic, None)):
        alone = embedder.embed_images([image])[0]
        beside = embedder.embed_images([image, loud])[0]
        change = float(np.abs(alone - beside).max())
        if bound is None:
            assert change > 1e-3, "per-call scales should depend on the batch"
        else:
            assert change <= bound, change


def test_the_calibration_names_the_package_and_a_tower_without_runs_per_call_scales(
    static, calibration_folder, tmp_path
):
    static.embed_images(_fashion("t10k", 1))  # the package loaded (or compiled)
    image_tower = static.model.vision_model
    assert image_tower.calibration is None  # in the package: the inputs are not kept
    assert static.mode.calibration.pixel_values is None and static.mode.calibration.input_ids is None
    x = torch.zeros(1, *image_tower.package.shape)
    inputs = calibration_inputs(read_calibration([calibration_folder]), static.processor, static.model.config)
    named = compiled._package_path(image_tower.tower, x, "int8-static", inputs.pixel_values)
    assert image_tower.package.path.name == named.name
    other = compiled._package_path(image_tower.tower, x, "int8-static", inputs.pixel_values[:-1])
    assert other.name != named.name
    # the same calibration in another process' model: the package is loaded, not compiled again
    (tmp_path / "images").mkdir()
    for i, image in enumerate(_fashion("train", 4)):
        Image.fromarray(image).save(tmp_path / "images" / f"{i}.png")
    images_only = Embedder.from_pretrained(
        BUNDLED, "cpu", precision="int8-static", calibration=[str(tmp_path / "images")]
    )
    assert images_only.model.vision_model.precision == "int8-static"
    assert images_only.model.text_model.precision == "int8"  # no texts given: per-call scales
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((tmp_path / "images").iterdir())))
    assert images_only.settings["calibration"] == digest.hexdigest()
    assert images_only.text_settings == {"precision": "int8-static", "calibration": UNCALIBRATED}
    assert "calibration" not in Embedder.from_pretrained(BUNDLED, "cpu", precision="int8").settings
    # texts only: the image tower has per-call scales, and the settings say so
    texts_only = Embedder.from_pretrained(
        BUNDLED, "cpu", precision="int8-static", calibration=[str(calibration_folder / "prompts.txt")]
    )
    assert texts_only.model.vision_model.precision == "int8"
    assert texts_only.settings["calibration"] == UNCALIBRATED
    lines = (calibration_folder / "prompts.txt").read_text().splitlines(keepends=True)
    assert texts_only.text_settings["calibration"] == hashlib.sha256("".join(lines).encode()).hexdigest()


def test_calibration_is_read_from_files_folders_and_patterns(calibration_folder, tmp_path, caplog):
    whole = read_calibration([calibration_folder])
    assert len(whole.images) == 64 and len(whole.texts) == len(FASHION_CLASSES) * len(PROMPTS)
    parts = read_calibration([f"{calibration_folder}/00*.png", calibration_folder / "prompts.txt"])
    assert [Path(p).name for p in parts.images] == [f"{i:03d}.png" for i in range(10)]
    assert parts.texts == whole.texts
    assert read_calibration([f"{calibration_folder}/*.txt"]).texts == whole.texts  # a pattern of text files
    # a pattern takes the images and .txt files it matches (other files left out), each text once
    mixed = tmp_path / "mixed"
    (mixed / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(mixed / name)
    (mixed / "README.md").write_text("not an image")
    (mixed / "sub" / "texts.txt").write_text("a shoe\na bag\n")
    for pattern in (f"{mixed}/*", f"{mixed}/**"):
        found = read_calibration([pattern])
        assert [Path(p).name for p in found.images] == ["a.png", "b.png"] and found.texts == [
            "a shoe",
            "a bag",
        ]
    many = tmp_path / "many"
    many.mkdir()
    for i in range(MAX_IMAGES + 3):
        Image.new("L", (4, 4), i % 256).save(many / f"{i:04d}.png")
    with caplog.at_level("INFO", logger="siglip"):
        assert len(read_calibration([many]).images) == MAX_IMAGES
    assert f"first {MAX_IMAGES} of {MAX_IMAGES + 3} images" in caplog.text


def test_bad_calibration_and_precision_combinations_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"--calibration '.*empty': no image files and no texts"):
        read_calibration([tmp_path / "empty"])
    with pytest.raises(UsageError, match=r"--calibration: no such file or folder: '.*missing'"):
        read_calibration([tmp_path / "missing"])
    with pytest.raises(UsageError, match="--calibration applies to --precision int8-static, not to 'int8'"):
        ModelOptions(precision="int8", calibration=[str(tmp_path)])
    with pytest.raises(UsageError, match="--calibration applies to --precision int8-static, not to 'fp32'"):
        Embedder.from_pretrained(BUNDLED, "cpu", calibration=[str(tmp_path)])  # "auto": fp32 in the suite
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(UsageError, match=r"--calibration: .*broken.jpg"):
        Embedder.from_pretrained(BUNDLED, "cpu", precision="int8-static", calibration=[str(tmp_path)])
    with pytest.raises(UsageError, match="needs calibration inputs"):
        InferenceMode("int8-static").apply(SiglipModel.from_pretrained(BUNDLED))
    with pytest.raises(UsageError, match="'int8-static' runs on the CPU only"):
        InferenceMode("int8-static").resolve("cuda")


def test_the_command_line_runs_int8_static(static, calibration_folder, capsys):
    """`siglip classify --precision int8-static --calibration DIR`: the bundled examples get fp32's labels."""
    examples = sorted(str(p) for p in Path("examples/fashion").glob("*.png"))
    top = {}
    for precision in ("fp32", "int8-static"):
        extra = ["--calibration", str(calibration_folder)] if precision == "int8-static" else []
        args = ["classify", *examples, "--model", BUNDLED, "--precision", precision, "--device", "cpu",
                "--top-k", "1", "--json", "--labels", *FASHION_CLASSES, *extra]  # fmt: skip
        capsys.readouterr()
        assert main(args) == 0
        results = json.loads(capsys.readouterr().out)["results"]
        top[precision] = [(r["path"], r["labels"][0]["label"]) for r in results]
    assert top["int8-static"] == top["fp32"] and len(top["fp32"]) == len(examples)


def test_int8_static_images_match_fp32_through_the_model(static):
    """The compiled towers give `get_image_features` as the float model's, within the int8 bound, at batch
    sizes the calibration did not use (1 and 5)."""
    model = SiglipModel.from_pretrained(BUNDLED).eval()
    pixels = static.processor.image_processor(_fashion("t10k", 5), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        reference = model.get_image_features(pixels)
        for batch in (pixels[:1], pixels):
            ours = static.model.get_image_features(batch)
            assert F.cosine_similarity(ours, reference[: len(batch)]).min() > 0.995


def test_siglip_serve_loads_int8_static_packages_before_the_first_request(calibration_folder):
    """int8-static has no eager towers to answer while a background compile runs: `siglip serve` loads (or
    compiles) its packages at start, as with --compile."""
    import argparse

    from siglip.tools.cli import serve

    embedder = Embedder.from_pretrained(
        BUNDLED, "cpu", precision="int8-static", calibration=[str(calibration_folder)]
    )
    assert embedder.model.vision_model.package is None  # not loaded before its first call
    args = argparse.Namespace(compile=False, compile_in_background=True)
    assert serve._compile(embedder, args) is None
    assert embedder.model.vision_model.package is not None and embedder.model.text_model.package is not None


def test_an_index_refuses_images_embedded_with_another_calibration(tmp_path):
    """The digest of the calibration images is part of the settings an index records: images embedded with
    another calibration would not be comparable with those already in it."""
    from siglip.errors import StoreError
    from siglip.tools.search.index import SearchIndex

    images = _fashion("t10k", 12)
    for name, part in (("first", images[:4]), ("second", images[4:8]), ("photos", images[8:])):
        (tmp_path / name).mkdir()
        for i, image in enumerate(part):
            Image.fromarray(image).save(tmp_path / name / f"{i}.png")
    first, second = [str(tmp_path / "first")], [str(tmp_path / "second")]
    index = SearchIndex(tmp_path / "index", BUNDLED, "cpu", precision="int8-static", calibration=first)
    index.update([tmp_path / "photos"], workers=0, progress=False)
    recorded = index.embedding_settings["calibration"]
    assert recorded == read_calibration([tmp_path / "first"]).image_digest
    Image.fromarray(images[0]).save(tmp_path / "photos" / "new.png")
    other = SearchIndex(tmp_path / "index", device="cpu", calibration=second)
    with pytest.raises(StoreError, match=f"built with --calibration {recorded}"):
        other.update([tmp_path / "photos"], workers=0, progress=False)
    with pytest.raises(
        UsageError, match="built with --precision int8-static, calibrated on images with SHA-256"
    ):
        SearchIndex(tmp_path / "index", device="cpu").search_text("a bag")
    query = ["search", "a bag", "--index", str(tmp_path / "index"), "--device", "cpu", "--json"]
    assert main([*query, "--calibration", *first]) == 0  # the command takes the calibration
    # embeddings made elsewhere with another calibration are refused on import as well
    embed_to_file([tmp_path / "photos"], tmp_path / "other.parquet", other.embedder, workers=0)
    with pytest.raises(StoreError, match="calibration"):
        SearchIndex(tmp_path / "index", device="cpu").import_embeddings(tmp_path / "other.parquet")
    same = SearchIndex(tmp_path / "index", device="cpu", calibration=first)
    assert same.update([tmp_path / "photos"], workers=0, progress=False).added == 1


def test_an_interrupted_job_resumes_only_with_the_settings_it_was_made_with(tmp_path, monkeypatch):
    """The journal of an interrupted `embed_to_file` records the settings its rows were made with: a rerun in
    another precision (or calibration) is refused rather than mixing the two in one output."""
    (tmp_path / "photos").mkdir()
    for i, image in enumerate(_fashion("t10k", 6)):
        Image.fromarray(image).save(tmp_path / "photos" / f"{i}.png")
    fp32 = Embedder.from_pretrained(BUNDLED, "cpu", precision="fp32")
    int8 = Embedder.from_pretrained(BUNDLED, "cpu", precision="int8")
    out = tmp_path / "vectors.npy"
    real = Embedder.embed_files

    def first_batch_then_stop(self, *args, **kwargs):
        yield next(real(self, *args, **kwargs))
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(Embedder, "embed_files", first_batch_then_stop)
        with pytest.raises(KeyboardInterrupt):
            embed_to_file([tmp_path / "photos"], out, fp32, batch_size=2, workers=0)
    assert out.with_name("vectors.npy.partial").exists() and not out.exists()
    with pytest.raises(UsageError, match="made with other settings \\(precision fp32, now int8\\)"):
        embed_to_file([tmp_path / "photos"], out, int8, batch_size=2, workers=0)
    report = embed_to_file([tmp_path / "photos"], out, fp32, batch_size=2, workers=0)
    assert report.embedded == 4 and len(np.load(out)) == 6  # the first batch was kept
