"""`siglip embed --engine ray` on a local Ray cluster (2 CPUs, no dashboard): the in-process job's output bit
for bit, unreadable files listed alike, URIs and lists as inputs, and `siglip index --from-embeddings`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _material import BUNDLED
from _ray_material import BATCH, SHARD, in_process, read_parquet, shutdown_ray, write_200_photos, write_shards
from siglip import SearchIndex
from siglip.errors import UsageError
from siglip.tools.cli import main
from siglip.tools.embeddings import ray_engine
from siglip.tools.embeddings.ray_engine import embed_with_ray
from siglip.tools.search.fingerprint import model_fingerprint

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False
    )  # a new cluster, never one left running
    yield
    shutdown_ray()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ray") / "photos"
    write_200_photos(directory)
    return directory


@pytest.fixture(scope="module")
def shards(photos, tmp_path_factory):
    """The 202 files of `photos` (corrupt ones included), in order, in 3 WebDataset shards."""
    return write_shards(sorted(photos.glob("*.jpg"), key=str), tmp_path_factory.mktemp("ray") / "shards")


@pytest.fixture(scope="module")
def oracle(photos, tmp_path_factory):
    return in_process(photos, tmp_path_factory.mktemp("oracle") / "vectors.parquet")


def test_the_ray_engine_writes_the_in_process_vectors_bit_for_bit(cluster, photos, oracle, tmp_path, capsys):
    paths, vectors, skipped = oracle
    out = tmp_path / "shards"
    code = main(
        ["embed", str(photos), "--out", str(out), "--engine", "ray", "--model", BUNDLED, "--precision", "fp32",
         "--batch-size", str(BATCH), "--shard-size", str(SHARD), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    assert "wrote 200 embeddings in 9 shards" in capsys.readouterr().out
    got_paths, got_vectors = read_parquet(out)
    assert got_paths == paths and len(paths) == 200  # one row per readable file, in order
    assert got_vectors.dtype == np.float32 and np.array_equal(got_vectors, vectors)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert [(s["path"], s["reason"]) for s in manifest["skipped"]] == skipped and len(skipped) == 2
    assert manifest["precision"] == ["fp32"] and manifest["count"] == 200
    assert manifest["fingerprint"] == model_fingerprint(BUNDLED)
    assert sorted(p.name for p in out.glob("*.parquet")) == [f"part-{i:05d}.parquet" for i in range(9)]

    again = embed_with_ray([photos], out, BUNDLED, precision="fp32", batch_size=BATCH, shard_size=SHARD)
    assert (again.resumed, again.embedded, again.count) == (9, 0, 200)  # a rerun has nothing left to do


def test_lists_and_uris_are_inputs(cluster, photos, oracle, tmp_path):
    paths, vectors, _ = oracle
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"file://{p}\n" for p in paths[:10]) + f"file://{photos}/missing.jpg\n")
    report = embed_with_ray([listing], tmp_path / "out", BUNDLED, precision="fp32", batch_size=BATCH)
    got_paths, got_vectors = read_parquet(tmp_path / "out")
    assert got_paths == [f"file://{p}" for p in paths[:10]]
    np.testing.assert_allclose(
        got_vectors, vectors[:10], atol=1e-6
    )  # other batches than the oracle's: last bit
    assert [p for p, _ in report.skipped] == [f"file://{photos}/missing.jpg"]
    assert "No such file" in report.skipped[0][1] or "cannot be read" in report.skipped[0][1]


def test_an_index_from_the_shards_answers_like_an_index_of_the_folder(cluster, photos, tmp_path, capsys):
    out = tmp_path / "shards"
    embed_with_ray([photos], out, BUNDLED, precision="fp32", batch_size=BATCH, shard_size=SHARD)
    assert main(["index", "--index", str(tmp_path / "imported"), "--from-embeddings", str(out)]) == 0
    assert "200 added" in capsys.readouterr().out
    assert main(["index", str(photos), "--index", str(tmp_path / "direct"), "--model", BUNDLED, "--precision",
                 "fp32", "--batch-size", str(BATCH), "--workers", "0", "--no-progress"]) == 0  # fmt: skip
    with SearchIndex(tmp_path / "imported") as imported, SearchIndex(tmp_path / "direct") as direct:
        assert len(imported) == len(direct) == 200
        for query in ("a cat", "a rocket at night", "coffee"):
            assert [h.path for h in imported.search_text(query, 20)] == [
                h.path for h in direct.search_text(query, 20)
            ]
        first, second = (i.search_image(str(photos / "007.jpg"), 10) for i in (imported, direct))
        assert [h.path for h in first] == [h.path for h in second] and first[0].path.endswith("007.jpg")
        # the direct build ran 2 threads, the actor 1: the same vectors to the last bit or so
        np.testing.assert_allclose([h.score for h in first], [h.score for h in second], atol=1e-6)
        # the imported files kept their state: an update of the folder finds nothing to embed
        report = imported.update([photos], workers=0, progress=False)
        assert (report.added, report.updated, report.removed, report.unchanged) == (0, 0, 0, 202)


def test_webdataset_shards_give_the_vectors_of_their_files_in_both_engines(cluster, shards, oracle, tmp_path):
    pattern, names = shards
    paths, vectors, skipped = oracle
    expected = [names[p] for p in paths]  # the readable files, as samples
    last = pattern.replace("{000000..000002}", "000002")
    unreadable = {names[p] for p, _ in skipped} | {f"{last}:captiononly"}

    local = in_process(pattern, tmp_path / "local.parquet")  # the in-process engine, reading the shards
    assert local[0] == expected and np.array_equal(local[1], vectors)  # the files' vectors, bit for bit
    assert {p for p, _ in local[2]} == unreadable and len(unreadable) == 3
    assert dict(local[2])[f"{last}:captiononly"] == "no image in the sample"

    report = embed_with_ray(
        [pattern], tmp_path / "ray", BUNDLED, precision="fp32", batch_size=BATCH, shard_size=SHARD
    )
    got_paths, got_vectors = read_parquet(tmp_path / "ray")
    assert got_paths == expected and np.array_equal(got_vectors, vectors)
    assert sorted(report.skipped) == sorted(local[2]) and report.count == 200


def test_max_num_patches_reaches_the_ray_decoders(cluster, tmp_path, capsys):
    """A NaFlex checkpoint at a patch budget other than its own: the Ray job's vectors are the in-process
    job's at that budget (same batches, same threads per model call), which differ from the default's."""
    import torch
    from PIL import Image

    from _material import save_tiny_naflex
    from _ray_material import ACTOR_THREADS
    from siglip import Embedder

    model = str(save_tiny_naflex(tmp_path / "naflex"))
    rng = np.random.default_rng(0)
    files = []
    for i, (height, width) in enumerate(((1, 1), (1, 400), (333, 517), (224, 224), (90, 30), (40, 41))):
        files.append(tmp_path / "images" / f"{i}.png")
        files[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(files[-1])
    out = tmp_path / "shards"
    code = main(
        ["embed", str(tmp_path / "images"), "--out", str(out), "--engine", "ray", "--model", model,
         "--precision", "fp32", "--batch-size", "4", "--max-num-patches", "24", "--no-progress"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    paths, vectors = read_parquet(out)
    assert paths == [str(f) for f in files]
    threads = torch.get_num_threads()
    torch.set_num_threads(ACTOR_THREADS)
    try:
        embedder = Embedder.from_pretrained(model, device="cpu", precision="fp32", max_num_patches=24)
        expected = np.concatenate([embedder.embed_images(paths[:4]), embedder.embed_images(paths[4:])])
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(vectors, expected)
    default = Embedder.from_pretrained(model, device="cpu", precision="fp32").embed_images(paths)
    assert not np.allclose(vectors, default, atol=1e-3)
    # an index of the shards records their budget, not the checkpoint's its own model loads with
    assert main(["index", "--index", str(tmp_path / "index"), "--from-embeddings", str(out)]) == 0
    with SearchIndex(tmp_path / "index") as index:
        assert index.embedding_settings == {
            "precision": "fp32",
            "max_num_patches": 24,
            "reduced_decode": None,
            "image_backend": "torch",  # the processor's default
        }
    capsys.readouterr()
    assert main(["embed", str(tmp_path / "images"), "--out", str(out), "--engine", "ray", "--model", model,
                 "--precision", "fp32", "--batch-size", "4"]) == 2  # fmt: skip
    assert "patch budget 24" in capsys.readouterr().err  # a rerun at another budget would mix the shards


def test_a_file_restored_after_it_was_missing_is_embedded_by_the_rerun(cluster, photos, oracle, tmp_path):
    """As the in-process job embeds an unreadable file again once it changed: the shard that skipped it is
    embedded again, and no longer reports it; a shard whose unreadable file is as it was is kept."""
    paths, vectors, _ = oracle
    restored = tmp_path / "restored.jpg"
    listed = [*paths[:6], str(restored), *paths[6:12], str(photos / "050b.jpg")]  # 2 shards of 8 and 6
    (tmp_path / "list.txt").write_text("".join(f"{p}\n" for p in listed))
    out = tmp_path / "out"

    def run():
        return embed_with_ray(
            [tmp_path / "list.txt"], out, BUNDLED, precision="fp32", batch_size=4, shard_size=8
        )

    first = run()
    assert [p for p, _ in first.skipped] == [str(restored), str(photos / "050b.jpg")]
    assert "no such file" in first.skipped[0][1].lower() and first.count == 12

    restored.write_bytes(Path(paths[0]).read_bytes())
    second = run()
    assert (second.resumed, second.embedded, second.count) == (1, 8, 13)
    assert [p for p, _ in second.skipped] == [str(photos / "050b.jpg")]
    assert [s["path"] for s in json.loads((out / "_manifest.json").read_text())["skipped"]] == [
        str(photos / "050b.jpg")
    ]
    got_paths, got_vectors = read_parquet(out)
    assert got_paths == listed[:-1]
    np.testing.assert_allclose(
        got_vectors, np.concatenate([vectors[:6], vectors[:1], vectors[6:12]]), atol=1e-6
    )

    third = run()  # nothing changed: nothing to embed
    assert (third.resumed, third.embedded, third.count) == (2, 0, 13)

    # a rerun in another precision would add shards not comparable with these: refused before any work
    plan = out / "_plan.json"
    with pytest.raises(UsageError, match="precision fp32, now bf16"):
        embed_with_ray([tmp_path / "list.txt"], out, BUNDLED, precision="bf16", batch_size=4, shard_size=8)
    # a plan written before the settings were recorded takes them from the next run
    recorded = json.loads(plan.read_text())
    assert recorded.pop("settings")["precision"] == "fp32"
    plan.write_text(json.dumps(recorded))
    assert run().resumed == 2
    assert json.loads(plan.read_text())["settings"]["precision"] == "fp32"


def test_a_folder_is_bound_to_its_settings_once_a_shard_is_written(photos, tmp_path):
    """--calibration without int8-static is refused before anything is written (each actor would refuse it,
    after the plan); the settings of a run that wrote no shard bind nothing: the next run's replace them."""
    paths = sorted(str(p) for p in photos.glob("*.jpg"))[:4]
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="--calibration applies to --precision int8-static, not to 'auto'"):
        embed_with_ray(paths, out, BUNDLED, calibration=[paths[0]])
    assert not (out / ray_engine.PLAN_FILE).exists()
    ray_engine._plan(out, paths, 4, 4, None, {"precision": "bf16"})  # a first run that failed before a shard
    ray_engine._plan(out, paths, 4, 4, None, {"precision": "fp32"})
    assert json.loads((out / ray_engine.PLAN_FILE).read_text())["settings"] == {"precision": "fp32"}


def test_int8_static_shards_record_their_calibration(cluster, photos, tmp_path):
    """int8-static on Ray: each actor calibrates as the in-process embedder does (the same package, the same
    vectors: static scales do not depend on the batch), and the shards and the manifest name the calibration
    images by their digest, which an import compares."""
    pytest.importorskip("torchao")
    from siglip import Embedder
    from siglip.tools.embeddings.calibration import read_calibration

    paths = sorted(str(p) for p in photos.glob("*.jpg"))[:8]
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for path in sorted(photos.glob("*.jpg"))[-4:]:
        (calibration / Path(path).name).write_bytes(Path(path).read_bytes())
    options = {"precision": "int8-static", "calibration": [str(calibration)]}
    local = Embedder.from_pretrained(BUNDLED, "cpu", **options)
    expected = local.embed_images(paths)
    out = tmp_path / "out"
    embed_with_ray(paths, out, BUNDLED, batch_size=BATCH, shard_size=SHARD, **options)
    got_paths, got_vectors = read_parquet(out)
    assert got_paths == paths
    np.testing.assert_allclose(got_vectors, expected, atol=1e-5)
    digest = read_calibration([calibration]).image_digest
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["precision"] == ["int8-static"] and manifest["calibration"] == [digest]
    other = {**options, "calibration": [paths[0]]}  # resuming with other calibration images is refused
    with pytest.raises(
        UsageError, match=f"calibration {digest}, now {read_calibration([paths[0]]).image_digest}"
    ):
        embed_with_ray(paths, out, BUNDLED, batch_size=BATCH, shard_size=SHARD, **other)
    index = SearchIndex(tmp_path / "index", BUNDLED, "cpu", precision="fp32")
    index.import_embeddings(out)  # an empty index takes the settings of what it imports
    assert index.embedding_settings["precision"] == "int8-static"
    assert index.embedding_settings["calibration"] == digest
