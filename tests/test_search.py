"""The search index: brute-force-equal results, incremental updates, and a build killed with SIGKILL."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _material import BUNDLED, save_tiny_checkpoint, write_photos
from siglip import Embedder, SearchIndex, find_images
from siglip.errors import MissingDependencyError
from siglip.tools.cli import main
from siglip.tools.search.index import RECORDS_FILE, VECTORS_FILE
from siglip.tools.search.store import FileState, StoreError

pytest_plugins = ["_fixtures"]


def _brute_force(vectors: np.ndarray, paths: list[str], query: np.ndarray, k: int) -> list[tuple[str, float]]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    order = np.argsort(-scores, kind="stable")[:k]
    return [(paths[i], float(scores[i])) for i in order]


def _assert_same_ranking(hits, expected):
    assert [h.path for h in hits] == [p for p, _ in expected]
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], atol=1e-5)


def test_search_equals_a_brute_force_cosine_ranking(embedder, tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, embedder.dims)).astype(np.float32)
    paths = [f"/photos/{i:04d}.jpg" for i in range(len(vectors))]
    index = SearchIndex(tmp_path / "index", embedder)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for start in range(0, 500, 128):  # as a build writes them: batch by batch
        index.store.record(
            [FileState(p, 1, 1) for p in paths[start : start + 128]], unit[start : start + 128]
        )
    queries = rng.standard_normal((3, embedder.dims)).astype(np.float32)

    results = index.search(queries, k=10)
    for hits, query in zip(results, queries, strict=True):
        _assert_same_ranking(hits, _brute_force(vectors, paths, query, 10))
    _assert_same_ranking(index.search(queries[0] * 7.5, k=3)[0], _brute_force(vectors, paths, queries[0], 3))
    assert len(index.search(queries[0], k=10_000)[0]) == 500  # k beyond the size gives everything

    reopened = SearchIndex(tmp_path / "index")
    _assert_same_ranking(reopened.search(queries[1], k=5)[0], _brute_force(vectors, paths, queries[1], 5))
    with pytest.raises(ValueError, match=f"must have {embedder.dims} dimensions"):
        reopened.search(np.ones(3, dtype=np.float32))

    # the faiss file holds the vectors (stored once): deleted, their records drop out, to be embedded again
    reopened.close()
    index.close()
    (tmp_path / "index" / VECTORS_FILE).unlink()
    with SearchIndex(tmp_path / "index") as emptied:
        assert emptied.search(queries[1], k=5) == [[]] and len(emptied) == 0


def _embeddings_by_hand(embedder: Embedder, files: list[Path]) -> dict[str, np.ndarray]:
    return dict(zip(map(str, files), embedder.embed_images([str(f) for f in files]), strict=True))


def test_update_embeds_new_and_changed_files_and_drops_deleted_ones(embedder, tmp_path):
    photos = tmp_path / "photos"
    files = write_photos(photos)
    index = SearchIndex(tmp_path / "index", embedder)

    first = index.update([photos], batch_size=2, workers=0, progress=False)
    assert (first.added, first.updated, first.removed, first.unchanged, first.total) == (5, 0, 0, 0, 5)
    assert [p for p, _ in first.skipped] == [str(photos / "broken.jpg")]

    again = index.update([photos], batch_size=2, workers=0, progress=False)
    assert (again.added, again.updated, again.removed, again.unchanged, again.skipped) == (0, 0, 0, 6, [])

    Image.open(files[1]).rotate(90).save(files[1])  # chelsea changes
    files[3].unlink()  # coffee is deleted
    Image.open(files[0]).convert("L").save(photos / "new.png")
    report = index.update([photos], batch_size=2, workers=0, progress=False)
    assert (report.added, report.updated, report.removed, report.unchanged, report.total) == (1, 1, 1, 4, 5)

    now = find_images([photos])
    now.remove(str(photos / "broken.jpg"))
    expected = _embeddings_by_hand(embedder, [Path(p) for p in now])
    stored = {path: index.entry(i)[1] for i, path in index.store.paths_of(index.store.ids()).items()}
    assert sorted(stored) == sorted(expected)
    for path in now:
        np.testing.assert_allclose(stored[path], expected[path], atol=1e-5)
    query = embedder.embed_texts(["a cat"])[0]
    brute = _brute_force(np.stack(list(expected.values())), list(expected), query, 5)
    _assert_same_ranking(index.search_text("a cat", k=5), brute)
    assert index.search_image(str(files[1]), k=1)[0].path == str(files[1])


def test_an_index_built_with_reduced_decode_keeps_it_and_refuses_a_model_without_it(
    embedder, tmp_path, capsys
):
    """reduced_decode changes the pixels of large JPEG files: the index records it with the precision, a later
    opening without the option decodes alike, and an Embedder that decodes otherwise adds nothing."""
    files = write_photos(tmp_path / "photos")
    directory = tmp_path / "index"
    with SearchIndex(directory, BUNDLED, device="cpu", precision="fp32", reduced_decode=True) as index:
        index.update([files[0]], workers=0, progress=False)
    with SearchIndex(directory) as reopened:
        assert reopened.embedding_settings == {
            "precision": "fp32",
            "max_num_patches": None,
            "reduced_decode": True,
            "image_backend": "torch",  # the processor's default
        }
        assert reopened.embedder.processor.image_processor.reduced_decode  # not asked for: as built
    assert not embedder.processor.image_processor.reduced_decode and embedder.mode.precision == "fp32"
    with pytest.raises(StoreError, match="built with --reduced-decode True, the model given runs with False"):
        SearchIndex(directory, embedder).update([files[1]], workers=0, progress=False)
    assert len(SearchIndex(directory)) == 1
    assert main(["info", str(directory)]) == 0
    assert "precision fp32, reduced JPEG decoding" in capsys.readouterr().out


def test_an_index_refuses_another_model_and_a_missing_index(embedder, tmp_path, spiece_model):
    SearchIndex(tmp_path / "index", embedder).close()
    other = save_tiny_checkpoint(tmp_path / "other", spiece_model, seed=1)
    with pytest.raises(StoreError, match="holds embeddings of model"):
        SearchIndex(tmp_path / "index", str(other))
    with pytest.raises(FileNotFoundError, match=r"no index at '.*nowhere'"):
        SearchIndex(tmp_path / "nowhere")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / RECORDS_FILE).write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not a siglip store"):
        SearchIndex(tmp_path / "junk")


# `siglip index` is killed with SIGKILL inside the transaction of its third batch: the first two batches are
# committed, the third is written but not committed.
_KILLED_BUILD = """
import os, signal, sys
from siglip.tools.cli import main
from siglip.tools.search.store import VectorStore

commits = 0
original = VectorStore._bump_generation

def bump_then_die_on_the_third_batch(self):
    global commits
    original(self)
    commits += 1
    if commits == 3:
        os.kill(os.getpid(), signal.SIGKILL)

VectorStore._bump_generation = bump_then_die_on_the_third_batch
main(["index", sys.argv[3], "--index", sys.argv[2], "--model", sys.argv[1], "--batch-size", "2", "--workers", "0"])
"""


def test_a_build_killed_mid_way_completes_on_rerun_with_one_entry_per_file(embedder, tmp_path):
    photos = tmp_path / "photos"
    write_photos(photos, corrupt=False)
    for i in range(7):  # 12 images: 6 batches of 2
        Image.effect_noise((40 + i, 30), 50 + 10 * i).save(photos / f"noise{i}.png")
    files = find_images([photos])
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_KILLED_BUILD),
            embedder.name,
            str(tmp_path / "index"),
            str(photos),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    with sqlite3.connect(tmp_path / "index" / RECORDS_FILE) as db:  # what survived: two whole batches
        assert sorted(p for (p,) in db.execute("SELECT path FROM images")) == sorted(files[:4])

    index = SearchIndex(tmp_path / "index")
    report = index.update([photos], batch_size=2, workers=0, progress=False)
    assert (report.added, report.unchanged, report.total) == (8, 4, 12)
    with sqlite3.connect(tmp_path / "index" / RECORDS_FILE) as db:
        rows = db.execute("SELECT path, COUNT(*) FROM images GROUP BY path").fetchall()
    assert sorted(rows) == sorted((path, 1) for path in files)
    assert index.sync().ntotal == 12
    hits = index.search_image(files[5], k=12)
    assert sorted(h.path for h in hits) == sorted(files) and hits[0].path == files[5]
    assert SearchIndex(tmp_path / "index").search_image(files[5], k=12) == hits


def test_a_missing_faiss_names_the_extra_to_install(embedder, tmp_path, monkeypatch):
    index = SearchIndex(tmp_path / "index", embedder)
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if not installed
    with pytest.raises(
        MissingDependencyError, match=re.escape("needs the 'faiss' package: pip install 'siglip[search]'")
    ):
        index.search(np.ones(embedder.dims, dtype=np.float32))
