"""Zero-shot pipeline, prompt ensembles and embeddings, checked against computations by hand from SiglipModel."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from _material import CORRUPT_REASON, save_tiny_checkpoint, write_photos
from siglip import (
    Embedder,
    ImageInputError,
    SiglipModel,
    SiglipProcessor,
    embed_images,
    embed_texts,
    embed_to_file,
    find_images,
    pipeline,
)
from siglip.errors import NoImagesError
from siglip.tools.search.store import StoreError, VectorStore

pytest_plugins = ["_fixtures"]
LABELS = ["an astronaut", "a cat", "a cup of coffee", "a rocket"]


def _hand_scores(checkpoint, images, labels, template="This is a photo of {}."):
    """sigmoid(logits_per_image) of SiglipModel.forward, text padded to max_length by the processor."""
    model = SiglipModel.from_pretrained(checkpoint)
    processor = SiglipProcessor.from_pretrained(checkpoint)
    inputs = processor(text=[template.format(label) for label in labels], images=images)
    with torch.no_grad():
        return torch.sigmoid(
            model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"]).logits_per_image
        )


def test_pipeline_equals_sigmoid_of_siglip_model_logits(checkpoint, embedder, photos):
    _, files = photos
    images = [str(files[0]), Image.open(files[1]), np.asarray(Image.open(files[2]))]
    expected = _hand_scores(checkpoint, images, LABELS)
    classifier = pipeline("zero-shot-image-classification", model=embedder)

    batch = classifier(images, candidate_labels=LABELS)
    single = classifier(images[0], candidate_labels=LABELS)

    assert isinstance(single[0], dict) and isinstance(batch[0], list)  # one image: one list; a list: lists
    np.testing.assert_allclose(
        [r["score"] for r in sorted(single, key=lambda r: r["label"])],
        [r["score"] for r in sorted(batch[0], key=lambda r: r["label"])],
        rtol=1e-4,
    )
    for result, row in zip(batch, expected, strict=True):
        assert [r["score"] for r in result] == sorted((r["score"] for r in result), reverse=True)
        assert sorted(r["label"] for r in result) == sorted(LABELS)
        by_label = {r["label"]: r["score"] for r in result}
        np.testing.assert_allclose([by_label[label] for label in LABELS], row.numpy(), rtol=1e-4, atol=1e-7)
    top = classifier(images, candidate_labels=LABELS, top_k=2)
    assert [len(r) for r in top] == [2, 2, 2] and [r[:2] for r in batch] == top


def test_hypothesis_template_reaches_the_prompts(checkpoint, embedder, photos):
    _, files = photos
    expected = _hand_scores(checkpoint, [str(files[1])], LABELS, template="{}")[0]
    result = pipeline(model=embedder)(str(files[1]), candidate_labels=LABELS, hypothesis_template="{}")
    by_label = {r["label"]: r["score"] for r in result}
    np.testing.assert_allclose([by_label[label] for label in LABELS], expected.numpy(), rtol=1e-4, atol=1e-7)


def test_prompt_ensemble_is_the_normalised_mean_of_normalised_prompt_embeddings(checkpoint, embedder, photos):
    _, files = photos
    templates = ["a photo of {}.", "a blurry picture of {}", "{}"]
    model = SiglipModel.from_pretrained(checkpoint)
    processor = SiglipProcessor.from_pretrained(checkpoint)
    with torch.no_grad():
        classes = []
        for label in LABELS:
            ids = processor(text=[t.format(label) for t in templates])["input_ids"]
            per_prompt = F.normalize(model.get_text_features(ids), dim=-1)
            classes.append(F.normalize(per_prompt.mean(dim=0), dim=-1))
        image = F.normalize(
            model.get_image_features(processor(images=[str(files[3])])["pixel_values"]), dim=-1
        )
        expected = torch.sigmoid(image @ torch.stack(classes).T * model.logit_scale.exp() + model.logit_bias)[
            0
        ]

    result = pipeline(model=embedder)(str(files[3]), candidate_labels=LABELS, hypothesis_template=templates)
    by_label = {r["label"]: r["score"] for r in result}
    np.testing.assert_allclose([by_label[label] for label in LABELS], expected.numpy(), rtol=1e-4, atol=1e-7)


def test_text_is_padded_to_the_model_text_length(tmp_path, spiece_model, photos):
    """16 positions (so400m-224) and 64 positions both work; 64 agrees with transformers' own pipeline."""
    import transformers

    _, files = photos
    for positions in (16, 64):
        directory = save_tiny_checkpoint(tmp_path / str(positions), spiece_model, text_positions=positions)
        ours = pipeline(model=Embedder.from_pretrained(directory))(str(files[0]), candidate_labels=LABELS)
        expected = _hand_scores(directory, [str(files[0])], LABELS)[0]
        by_label = {r["label"]: r["score"] for r in ours}
        np.testing.assert_allclose(
            [by_label[label] for label in LABELS], expected.numpy(), rtol=1e-4, atol=1e-7
        )
    theirs = transformers.pipeline("zero-shot-image-classification", model=str(directory), device="cpu")
    reference = theirs(Image.open(files[0]), candidate_labels=LABELS)
    assert [r["label"] for r in ours] == [r["label"] for r in reference]
    np.testing.assert_allclose(
        [r["score"] for r in ours], [r["score"] for r in reference], rtol=1e-4, atol=1e-7
    )


def test_bad_labels_and_templates_are_refused_by_name(embedder, photos):
    _, files = photos
    classify = pipeline(model=embedder)
    with pytest.raises(ValueError, match="label list is empty"):
        classify(str(files[0]), candidate_labels=[])
    with pytest.raises(ValueError, match="label 1 is ''"):
        classify(str(files[0]), candidate_labels=["cat", ""])
    with pytest.raises(ValueError, match=re.escape("must contain '{}'")):
        classify(str(files[0]), candidate_labels=["cat"], hypothesis_template="a photo")
    with pytest.raises(ValueError, match="no other braces"):
        classify(str(files[0]), candidate_labels=["cat"], hypothesis_template="{} in {place}")
    with pytest.raises(ValueError, match="unknown task 'image-to-text'"):
        pipeline("image-to-text", model=embedder)


def test_embeddings_equal_normalised_model_features(checkpoint, embedder, photos):
    _, files = photos
    model = SiglipModel.from_pretrained(checkpoint)
    processor = SiglipProcessor.from_pretrained(checkpoint)
    texts = [
        "a cat",
        "a rocket on the launch pad at night, seen from far away " * 4,
    ]  # the second is truncated
    with torch.no_grad():
        text = F.normalize(model.get_text_features(processor(text=texts)["input_ids"]), dim=-1)
        image = F.normalize(
            model.get_image_features(processor(images=[str(f) for f in files])["pixel_values"]), dim=-1
        )

    np.testing.assert_allclose(embed_texts(texts, model=embedder), text.numpy(), atol=1e-5)
    np.testing.assert_allclose(
        embed_images([str(f) for f in files], embedder, batch_size=2), image.numpy(), atol=1e-5
    )
    np.testing.assert_allclose(embed_texts("a cat", model=checkpoint), text[:1].numpy(), atol=1e-5)  # by name
    with pytest.raises(ImageInputError, match=r"broken\.jpg"):
        embedder.embed_images([str(files[0]), str(files[0].parent / "broken.jpg")])


def test_find_images_folders_globs_files_and_bad_paths(tmp_path):
    directory = tmp_path / "photos"
    files = write_photos(directory)
    (directory / ".hidden.jpg").write_bytes(b"")
    (directory / ".thumbnails").mkdir()
    (directory / ".thumbnails" / "small.jpg").write_bytes(b"")
    everything = sorted([*map(str, files), str(directory / "broken.jpg")])
    assert find_images([directory]) == everything  # recursive, sorted, hidden files left out
    assert find_images([str(directory / "*.jpg"), str(files[0])]) == [
        f for f in everything if f.endswith(".jpg")
    ]
    assert find_images([str(directory / "**" / "*.png")]) == [str(directory / "grey" / "camera.png")]
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert find_images([notes]) == [str(notes)]  # a file named explicitly is taken as it is
    with pytest.raises(FileNotFoundError, match=r"no such file or folder: '.*missing\.jpg'"):
        find_images([directory / "missing.jpg"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(NoImagesError, match=r"folder '.*empty' contains no image files"):
        find_images([tmp_path / "empty"])
    with pytest.raises(NoImagesError, match=r"pattern '.*nothing-\*\.jpg' matches no image files"):
        find_images([str(directory / "nothing-*.jpg")])


def test_embed_files_skips_a_corrupt_file_among_good_ones_in_worker_processes(embedder, photos):
    directory, files = photos
    batches = list(embedder.embed_files(find_images([directory]), batch_size=2, workers=2, progress=False))
    done = [f.path for b in batches for f in b.files]
    failed = [(f.path, reason) for b in batches for f, reason in b.failed]
    assert done == [str(f) for f in files]
    assert [path for path, _ in failed] == [str(directory / "broken.jpg")]
    assert failed[0][1].startswith(CORRUPT_REASON)
    vectors = np.concatenate([b.vectors for b in batches])
    np.testing.assert_allclose(vectors, embedder.embed_images(done), atol=1e-5)


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_embed_to_file_writes_vectors_paths_and_a_manifest(embedder, photos, tmp_path, suffix):
    directory, files = photos
    out = tmp_path / f"vectors{suffix}"
    report = embed_to_file([directory], out, embedder, batch_size=2, workers=0, progress=False)
    manifest = json.loads((tmp_path / f"vectors{suffix}.json").read_text())
    paths = [str(f) for f in files]
    if suffix == ".parquet":
        table = pq.read_table(out).to_pydict()
        assert (
            table["path"] == paths
            and set(table["model"]) == {embedder.name}
            and set(table["dims"]) == {embedder.dims}
        )
        vectors = np.array(table["vector"], dtype=np.float32)
    else:
        vectors = np.load(out)
        assert manifest["paths"] == paths
    np.testing.assert_allclose(vectors, embedder.embed_images(paths), atol=1e-5)
    broken = str(directory / "broken.jpg")
    assert [s["path"] for s in manifest["skipped"]] == [broken]
    assert manifest["skipped"][0]["reason"].startswith(CORRUPT_REASON)
    assert (manifest["model"], manifest["dims"], manifest["count"]) == (
        embedder.name,
        embedder.dims,
        len(files),
    )
    assert (report.count, report.embedded, report.failed) == (len(files), len(files), 1)
    # what an index importing the file records: the precision, no patch budget, decoding at full scale
    assert {k: manifest.get(k, "absent") for k in ("precision", "max_num_patches", "reduced_decode")} == {
        "precision": embedder.mode.precision,
        "max_num_patches": None,
        "reduced_decode": False,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, f"{out.name}.json"]
    )  # journal gone


def test_an_interrupted_embedding_run_resumes_without_redoing_finished_batches(
    embedder, photos, tmp_path, monkeypatch
):
    directory, files = photos
    out = tmp_path / "vectors.npy"
    original = Embedder.embed_files

    def interrupted_after_two_batches(self, *args, **kwargs):
        for number, batch in enumerate(original(self, *args, **kwargs)):
            if number == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(Embedder, "embed_files", interrupted_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        embed_to_file([directory], out, embedder, batch_size=2, workers=0, progress=False)
    assert not out.exists() and (tmp_path / "vectors.npy.partial").exists()
    monkeypatch.setattr(Embedder, "embed_files", original)

    seen = []
    monkeypatch.setattr(
        Embedder,
        "embed_files",
        lambda self, todo, *a, **k: seen.extend(f.path for f in todo) or original(self, todo, *a, **k),
    )
    report = embed_to_file([directory], out, embedder, batch_size=2, workers=0, progress=False)
    everything = find_images([directory])
    assert seen == everything[4:]  # the first two batches (4 files, one of them broken) were not redone
    assert (report.count, report.embedded, report.failed) == (len(files), 2, 0)
    np.testing.assert_allclose(np.load(out), embedder.embed_images([str(f) for f in files]), atol=1e-5)


def test_a_journal_short_of_rows_writes_no_npy_file(embedder, photos, tmp_path, monkeypatch):
    """The .npy header gives the row count before the rows are written: a journal that yields fewer rows than
    the paths listed (a damaged one) must fail, not leave a file np.load refuses."""
    directory, files = photos
    in_order = VectorStore.in_order
    monkeypatch.setattr(VectorStore, "in_order", lambda self, paths: in_order(self, paths[:-1]))
    out = tmp_path / "vectors.npy"
    with pytest.raises(
        StoreError, match=f"vectors.npy.partial' gave {len(files) - 1} of the {len(files)} embeddings"
    ):
        embed_to_file([directory], out, embedder, batch_size=2, workers=0, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vectors.npy.partial"]  # kept for a rerun


def test_resuming_with_another_model_is_refused(embedder, photos, tmp_path, spiece_model):
    directory, _ = photos
    other = Embedder.from_pretrained(save_tiny_checkpoint(tmp_path / "other", spiece_model, seed=1))
    (tmp_path / "out").mkdir()
    VectorStore(tmp_path / "out" / "v.npy.partial", other.name, other.dims).close()
    with pytest.raises(StoreError, match=r"holds embeddings of model '.*other', not"):
        embed_to_file([directory], tmp_path / "out" / "v.npy", embedder, workers=0)
    with pytest.raises(ValueError, match=r"must end with \.parquet or \.npy"):
        embed_to_file([directory], tmp_path / "v.csv", embedder, workers=0)
