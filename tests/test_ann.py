"""Approximate index types: recall against exact search, save/open round trips, fp16 storage stored once,
memory-mapped opening, and a build killed with SIGKILL."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from _vectors import clustered
from siglip import SearchIndex
from siglip.errors import UsageError
from siglip.tools.search import ann
from siglip.tools.search.index import RECORDS_FILE, VECTORS_FILE
from siglip.tools.search.store import FileState, VectorStore

faiss = pytest.importorskip("faiss")


def _new_index(directory: Path, vectors: np.ndarray, years: bool = False, **settings: str) -> SearchIndex:
    """A search index holding `vectors` under paths /v/<row>.jpg, written as a build writes them (with
    `years`, each row's metadata says year 2000 + row % 7, for filters)."""
    directory.mkdir()
    VectorStore(directory / RECORDS_FILE, "synthetic", vectors.shape[1]).close()
    index = SearchIndex(directory, **settings)
    for start in range(0, len(vectors), 20_000):
        part = vectors[start : start + 20_000]
        rows = range(start, start + len(part))
        metadata = [{"year": 2000 + row % 7} for row in rows] if years else None
        index.store.record([FileState(f"/v/{row}.jpg", 1, 1) for row in rows], part, metadata=metadata)
    return index


def _exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)[1]


def _top_rows(index: SearchIndex, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows (0-based, as in the vectors given to `_new_index`) of the k best hits of each query."""
    return np.array([[int(h.path[3:-4]) for h in hits] for hits in index.search(queries, k)])


def test_the_default_index_of_100k_clustered_vectors_has_recall_at_10_of_at_least_095(tmp_path):
    vectors, queries = np.split(clustered(100_300, 768), [100_000])  # queries: new, same distribution
    index = _new_index(tmp_path / "index", vectors)
    index.sync()
    info = index.build_info
    assert (info.kind, info.storage, info.vectors_at_build) == ("ivf", "fp16", 100_000)
    assert info.recall_at_10 >= 0.95 and info.recall_queries == 500

    # an independent check: new queries from the same distribution, against an exact ranking by numpy
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = ann.recall_at_k(_top_rows(index, queries, 10), exact)
    assert recall >= 0.95, recall
    assert VectorStore(tmp_path / "index" / RECORDS_FILE).released_ids().size == 100_000  # stored once


@pytest.mark.parametrize(
    ("kind", "storage", "factory"),
    [
        ("flat", "auto", "Flat"),
        ("flat", "fp16", "SQfp16"),
        ("ivf", "auto", "IVF256,SQfp16"),
        ("hnsw", "fp32", "HNSW32,Flat"),
        ("ivfpq", "auto", "IVF128,PQ16x4fs"),
    ],
)
def test_each_type_round_trips_through_save_and_open_and_follows_changes(tmp_path, kind, storage, factory):
    vectors, queries = np.split(clustered(12_020, 64, clusters=20, rank=8), [12_000])
    index = _new_index(tmp_path / "index", vectors[:11_000], index_type=kind, storage=storage)
    before = index.search(queries, 10)
    info = index.build_info
    assert info.factory == factory and info.recall_at_10 is not None
    assert info.recall_at_10 >= 0.95  # every type reaches the target (ivfpq by re-ranking)
    index.close()

    reopened = SearchIndex(tmp_path / "index")
    again = reopened.search(queries, 10)
    assert [[(h.path, h.id) for h in hits] for hits in again] == [
        [(h.path, h.id) for h in hits] for hits in before
    ]
    # the scores up to float rounding: an ivfpq search re-ranks in faiss or (its first, probing one) in numpy
    assert np.allclose(
        [[h.score for h in hits] for hits in again], [[h.score for h in hits] for hits in before]
    )
    assert reopened.build_info == info
    recall = ann.recall_at_k(_top_rows(reopened, queries, 10), _exact_top(vectors[:11_000], queries, 10))
    assert recall >= 0.9
    path, vector = reopened.entry(before[0][0].id)
    assert path == before[0][0].path
    assert np.dot(vector, vectors[int(path[3:-4])]) > 0.9999  # ivfpq keeps fp16 vectors for re-ranking

    # updates: new vectors are found, removed ones are gone (HNSW by a rebuild, the others in place)
    reopened.store.record([FileState(f"/v/{i}.jpg", 1, 1) for i in range(11_000, 12_000)], vectors[11_000:])
    gone = before[0][0].path
    reopened.store.remove([gone])
    assert reopened.search(vectors[11_500], 1)[0][0].path == "/v/11500.jpg"
    assert gone not in {h.path for h in reopened.search(queries[0], 10)[0]}
    assert reopened.sync().ntotal == 11_999
    assert reopened.build_info.factory == factory


def test_fp16_storage_keeps_each_vector_once_and_opens_memory_mapped(tmp_path):
    vectors = clustered(60_000, 128, clusters=30, rank=8)
    index = _new_index(tmp_path / "index", vectors)
    index.sync()
    assert index.build_info.factory.endswith("SQfp16")
    index.close()
    with sqlite3.connect(tmp_path / "index" / RECORDS_FILE) as db:
        assert db.execute("SELECT SUM(length(vector)) FROM images").fetchone()[0] == 0
    fp16_bytes = vectors.size * 2
    disk = (tmp_path / "index" / VECTORS_FILE).stat().st_size
    assert fp16_bytes < disk < fp16_bytes + 32 * len(vectors) + 2**20  # + ids, the id map and the centroids
    assert (tmp_path / "index" / RECORDS_FILE).stat().st_size < 0.2 * fp16_bytes  # paths and states only

    reopened = SearchIndex(tmp_path / "index")
    reopened.search(vectors[0], 1)
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    if maps:
        assert str(tmp_path / "index" / VECTORS_FILE) in maps


_KILLED_BUILD = """
import os, signal, sys
import numpy as np
from siglip import SearchIndex
from siglip.tools.search import index as index_module
from siglip.tools.search.store import FileState

def killed_write(path, write):  # the new vector file is half written when the process dies
    path.with_name(f".{path.name}.tmp").write_bytes(b"half a faiss file")
    os.kill(os.getpid(), signal.SIGKILL)

index_module.replace_atomically = killed_write
index = SearchIndex(sys.argv[1], index_type="hnsw")  # another type: the next sync rebuilds
vectors = np.load(sys.argv[2])
index.store.record([FileState(f"/v/{i}.jpg", 1, 1) for i in range(3000, 3500)], vectors[3000:3500])
index.sync()
"""


def test_a_build_killed_with_sigkill_leaves_the_old_index_usable(tmp_path):
    vectors, queries = np.split(clustered(3505, 64, clusters=10, rank=8), [3500])
    np.save(tmp_path / "vectors.npy", vectors)
    index = _new_index(tmp_path / "index", vectors[:3000], index_type="ivf")
    old = index.search(queries, 10)
    index.close()
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_KILLED_BUILD),
            str(tmp_path / "index"),
            str(tmp_path / "vectors.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    with SearchIndex(tmp_path / "index", index_type="ivf") as survivor:  # the old file, the new records
        assert survivor.build_info.factory.startswith("IVF")
        assert len(survivor) == 3500 and survivor.sync().ntotal == 3500
        now = survivor.search(queries, 10)
        assert [h.path for h in now[0]] != [] and survivor.search(vectors[3200], 1)[0][
            0
        ].path == "/v/3200.jpg"
        assert {h.path for h in now[1]} & {h.path for h in old[1]}
        exact = _exact_top(vectors, queries, 10)
        assert ann.recall_at_k(_top_rows(survivor, queries, 10), exact) >= 0.9


def test_siglip_info_shows_the_type_and_the_recall_of_an_index(tmp_path, capsys):
    from siglip.tools.cli import main

    vectors = clustered(3000, 64, clusters=10, rank=8)
    with _new_index(tmp_path / "index", vectors, index_type="ivf") as index:
        index.sync()
        recall = index.build_info.recall_at_10
    assert main(["info", str(tmp_path / "index")]) == 0
    shown = capsys.readouterr().out
    assert "IVF64,SQfp16" in shown and f"{recall:.4f} against exact search (300 held-out queries" in shown
    assert main(["info", str(tmp_path / "index"), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["images"] == 3000 and described["build"]["recall_at_10"] == recall


def _embeddings_file(path: Path, vectors: np.ndarray) -> None:
    """A `siglip embed` Parquet file of `vectors` under the paths of `_new_index`, in one row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from siglip.tools.embeddings.writers import parquet_schema, parquet_table

    schema = parquet_schema(pa, vectors.shape[1])
    table = parquet_table(pa, schema, "synthetic", [f"/v/{i}.jpg" for i in range(len(vectors))], vectors)
    pq.write_table(table, path, row_group_size=len(vectors))


def test_an_import_streams_the_vectors_in_bounded_reads_and_answers_like_the_records(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from siglip.tools.embeddings import readers as embedding_shards

    vectors, queries = np.split(clustered(3020, 64, clusters=10, rank=8), [3000])
    _embeddings_file(tmp_path / "vectors.parquet", vectors)
    direct = _new_index(tmp_path / "direct", vectors, index_type="ivf")
    direct.sync()
    imported = _new_index(tmp_path / "imported", vectors[:0], index_type="ivf")
    with sqlite3.connect(
        tmp_path / "imported" / RECORDS_FILE
    ) as db:  # any vector staged in the records fails
        db.execute(
            "CREATE TRIGGER no_staging BEFORE INSERT ON images WHEN length(NEW.vector) > 0 "
            "BEGIN SELECT RAISE(ABORT, 'a vector was staged in the records'); END"
        )
    reads = []
    iter_batches = pq.ParquetFile.iter_batches

    def counted(self, *args, **kwargs):
        for batch in iter_batches(self, *args, **kwargs):
            reads.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counted)
    monkeypatch.setattr(embedding_shards, "READ_ROWS", 512)
    report = imported.import_embeddings(tmp_path / "vectors.parquet")
    assert (report.added, report.updated, report.unchanged, report.total) == (3000, 0, 0, 3000)
    assert max(reads) == 512 and sum(reads) == 3 * 3000  # the paths, then the build: its sample, the rest
    assert imported.build_info == direct.build_info  # the same build: same vectors, ids and sample
    assert imported.search(queries, 10) == direct.search(queries, 10)

    again = imported.import_embeddings(tmp_path / "vectors.parquet")
    assert (again.added, again.unchanged, again.total) == (0, 3000, 3000)
    assert imported.sync().ntotal == 3000


def test_an_import_records_the_settings_of_its_embeddings_and_refuses_others(tmp_path):
    """An empty index takes the settings `siglip embed` (manifest) or the Ray engine (shard record) made the
    embeddings with, not those of the model it loaded; one holding images refuses others made otherwise."""
    import pyarrow.parquet as pq

    from siglip.errors import StoreError, UsageError
    from siglip.tools.embeddings.readers import SHARD_METADATA
    from siglip.tools.search.index import _EMBEDDING

    vectors = clustered(300, 64, clusters=5, rank=8)
    made = {"precision": "bf16", "max_num_patches": None, "reduced_decode": True, "image_backend": "pil"}
    for folder in ("embed", "ray"):
        (tmp_path / folder).mkdir()
    _embeddings_file(tmp_path / "embed" / "vectors.parquet", vectors[:200])
    (tmp_path / "embed" / "vectors.parquet.json").write_text(json.dumps({"model": "synthetic", **made}))
    index = _new_index(tmp_path / "index", vectors[:0])
    local = {"precision": "fp32", "max_num_patches": None, "reduced_decode": False, "image_backend": "torch"}
    index.store.set_meta(_EMBEDDING, json.dumps(local))
    index.import_embeddings(tmp_path / "embed")
    assert index.embedding_settings == made and len(index) == 200

    ray = tmp_path / "ray" / "part-00000.parquet"  # a Ray shard in fp32 of the rows 200..299
    _embeddings_file(ray, vectors)
    table = pq.read_table(ray).slice(200)
    record = {"model": "synthetic", "skipped": [], **local}
    pq.write_table(table.replace_schema_metadata({SHARD_METADATA: json.dumps(record)}), ray)
    with pytest.raises(StoreError, match="built with --precision bf16, the embeddings were made with fp32"):
        index.import_embeddings(ray.parent)
    assert len(index) == 200 and index.embedding_settings == made

    fresh = _new_index(tmp_path / "fresh", vectors[:0])
    fresh.import_embeddings(ray.parent)
    assert fresh.embedding_settings == local
    (tmp_path / "embed" / "vectors.parquet.json").unlink()  # not recorded: None, which refuses nothing
    unknown = _new_index(tmp_path / "unknown", vectors[:0])
    unknown.import_embeddings(tmp_path / "embed")
    assert unknown.embedding_settings == dict.fromkeys(
        ("precision", "max_num_patches", "reduced_decode", "image_backend")
    )
    unknown.import_embeddings(ray.parent)
    assert len(unknown) == 300 and SearchIndex(tmp_path / "unknown").options.precision_word == "auto"

    (ray.parent / "vectors.parquet.json").write_text(json.dumps(made))  # a folder of embeddings made unlike
    _embeddings_file(ray.parent / "vectors.parquet", vectors[:10])
    with pytest.raises(UsageError, match=r"differing precision \['bf16', 'fp32'\]"):
        _new_index(tmp_path / "mixed", vectors[:0]).import_embeddings(ray.parent)


def test_an_embeddings_file_replaced_during_an_import_is_refused_and_the_index_kept(tmp_path, monkeypatch):
    """The import reads its files in several passes (paths, then vectors): a file replaced between them would
    pair the recorded paths with other rows' vectors; it is refused and the import rolled back."""
    from siglip.errors import DataError

    vectors = clustered(300, 64, clusters=5, rank=8)
    source = tmp_path / "vectors.parquet"
    _embeddings_file(source, vectors)
    index = _new_index(tmp_path / "index", vectors[:0])
    record_paths = SearchIndex._record_imported_paths

    def then_replaced(self, files, first):
        report = record_paths(self, files, first)
        _embeddings_file(tmp_path / "other.parquet", vectors[::-1].copy())  # the same paths, rows reversed
        os.replace(tmp_path / "other.parquet", source)
        return report

    monkeypatch.setattr(SearchIndex, "_record_imported_paths", then_replaced)
    with pytest.raises(DataError, match=f"{source} changed while being imported"):
        index.import_embeddings(source)
    assert len(index) == 0
    monkeypatch.undo()
    index.import_embeddings(source)  # the file as it is now: its paths with their own vectors
    assert index.search(vectors[0], 1)[0][0].path == "/v/299.jpg"


_KILLED_IMPORT = """
import os, signal, sys
from siglip import SearchIndex
from siglip.tools.search import index as index_module

def killed_write(path, write):  # the new vector file is half written when the process dies
    path.with_name(f".{path.name}.tmp").write_bytes(b"half a faiss file")
    os.kill(os.getpid(), signal.SIGKILL)

index_module.replace_atomically = killed_write
SearchIndex(sys.argv[1]).import_embeddings(sys.argv[2])
"""


def test_an_import_killed_with_sigkill_leaves_the_old_index_usable_and_a_rerun_completes(tmp_path):
    vectors, queries = np.split(clustered(3505, 64, clusters=10, rank=8), [3500])
    _embeddings_file(tmp_path / "vectors.parquet", vectors)
    index = _new_index(tmp_path / "index", vectors[:3000], index_type="ivf")
    old = index.search(queries, 10)
    index.close()
    script = [sys.executable, "-c", textwrap.dedent(_KILLED_IMPORT), str(tmp_path / "index")]
    killed = subprocess.run([*script, str(tmp_path / "vectors.parquet")], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    with SearchIndex(tmp_path / "index") as survivor:  # as it was: the import's transaction never committed
        assert len(survivor) == 3000 and survivor.search(queries, 10) == old
        report = survivor.import_embeddings(tmp_path / "vectors.parquet")
        # the first 3000 were recorded with another (made-up) file state: updated, under new ids
        assert (report.added, report.updated, report.total) == (500, 3000, 3500)
        assert survivor.search(vectors[3200], 1)[0][0].path == "/v/3200.jpg"
        assert ann.recall_at_k(_top_rows(survivor, queries, 10), _exact_top(vectors, queries, 10)) >= 0.9


def test_past_8192_cells_a_graph_finds_the_cells_and_the_index_still_round_trips():
    assert ann.plan("auto", "auto", 1_000_000, 768).factory == "IVF4096,SQfp16"  # the 1M figures stand
    big = ann.plan("ivf", "auto", 10_000_000, 768)
    assert (big.factory, big.nlist) == ("IVF16384_HNSW32,SQfp16", 16384)

    vectors, queries = np.split(clustered(12_020, 64, clusters=20, rank=8), [12_000])
    plan = ann.Plan("ivf", "fp16", "IVF64_HNSW32,SQfp16")  # the same factory at a size a test affords
    ids = np.arange(100, 12_100)
    index, info = ann.build(plan, 64, 12_000, lambda: iter([(ids, vectors)]))
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(index).quantizer), faiss.IndexHNSWFlat)
    assert info.recall_at_10 >= 0.95 and plan.nlist == 64
    reopened = faiss.deserialize_index(faiss.serialize_index(index))
    ann.apply_search_params(reopened, info.search_params)
    ann.remove_ids(reopened, ids[:10])
    assert np.array_equal(ann.ids_of(reopened), ids[10:])
    found = ann.search(reopened, queries, 10)[1] - 100
    assert ann.recall_at_k(found, _exact_top(vectors, queries, 10)) >= 0.9


def test_a_graph_of_the_cells_places_vectors_and_finds_cells_as_exact_search_does():
    # faiss's default graph effort (16 candidates) put 1.5% of these vectors in another cell than their
    # nearest, and probed other cells than the nearest ones; `quantizer_ef` explores enough for both
    centroids = clustered(4096, 128, clusters=100, rank=32, part=9)  # stand-ins for k-means centroids (quick)
    vectors, queries = np.split(clustered(20_200, 128, clusters=100, rank=32, part=3), [20_000])
    index = ann.new_index(ann.Plan("ivf", "fp16", "IVF4096_HNSW32,SQfp16"), 128)
    ivf = faiss.extract_index_ivf(index)
    ivf.quantizer.add(centroids)
    index.train(vectors[:1000])  # the scalar quantizer's; the cells are given
    index.add_with_ids(vectors, np.arange(len(vectors)))
    cell_of = np.empty(len(vectors), np.int64)
    for cell in range(ivf.nlist):
        size = ivf.invlists.list_size(cell)
        cell_of[faiss.rev_swig_ptr(ivf.invlists.get_ids(cell), size).astype(np.int64)] = cell
    nearest = faiss.knn(vectors, centroids, 1, metric=faiss.METRIC_INNER_PRODUCT)[1][:, 0]
    assert (cell_of != nearest).mean() <= 0.001

    truth = _exact_top(vectors, queries, 10)
    ann.apply_search_params(index, "nprobe=96")
    found = ann.search(index, queries, 10)[1]
    ivf.quantizer = faiss.downcast_index(ivf.quantizer).storage  # the same centroids, searched exactly
    exact_cells = ann.search(index, queries, 10)[1]
    assert ann.recall_at_k(found, truth) >= ann.recall_at_k(exact_cells, truth) - 0.005


def test_auto_plans_by_size_and_memory_budget():
    sizes = [(10_000, "flat"), (1_000_000, "ivf"), (5_000_000, "ivf"), (6_000_000, "ivfpq")]
    for n, kind in sizes:  # 8 GiB holds 5.59M fp16 768-d vectors
        assert ann.plan("auto", "auto", n, 768).kind == kind, n
    assert ann.plan("auto", "auto", 1_000_000, 768, memory_budget=1 << 30).kind == "ivfpq"  # 1.43 GiB > 1
    assert ann.plan("auto", "auto", 6_000_000, 768, memory_budget=ann.parse_memory("16GiB")).kind == "ivf"
    # ivfpq holds the budget too: its codes + list ids + centroids (142 B a 768-d vector with PQ192x4fs, the
    # codes' tables included) and about sqrt(n) cells: its codes are cheap to scan (4 sqrt(n): 16384 at 10M)
    assert ann.plan("auto", "auto", 10_000_000, 768).factory == "IVF4096,PQ192x4fs"  # 1.33 GiB
    assert ann.plan("auto", "auto", 100_000_000, 768).factory == "IVF8192_HNSW32,PQ96x4fs"  # 13.3 GiB > 8 GiB
    small = ann.plan("auto", "auto", 100_000_000, 768, memory_budget=ann.parse_memory("4GiB"))
    assert small.factory == "IVF8192_HNSW32,PQ48x4fs"  # 41.6 B a vector: 3.9 GiB with the centroids
    # the model against the serving memory measured by bench_ann.py (BENCHMARKS.md), within 5%
    for m, n, nlist, measured_gib in ((192, 10_000_000, 4096, 1.34), (192, 30_000_000, 4096, 4.014)):
        assert ann.resident_bytes(m, n, nlist, 768) / 2**30 == pytest.approx(measured_gib, rel=0.05)
    with pytest.raises(
        UsageError, match=r"100,000,000 vectors of 768 dimensions need 3\.90 GiB .* 2\.00 GiB"
    ):
        ann.plan("auto", "auto", 100_000_000, 768, memory_budget=ann.parse_memory("2GiB"))
    assert ann.parse_memory("8GiB") == 8 << 30 and ann.parse_memory("512 MB") == 512 << 20
    assert ann.parse_memory("2000") == 2000
    for bad in ("eight", "0GiB", "-1G", "8XB"):
        with pytest.raises(UsageError, match="memory budget must be a size"):
            ann.parse_memory(bad)


def test_reranked_ivfpq_meets_its_stored_recall_returns_k_removes_in_place_and_keeps_recall_as_it_grows(
    tmp_path,
):
    vectors, queries = np.split(clustered(20_200, 64, clusters=20, rank=8), [20_000])
    plan = ann.plan("ivfpq", "auto", 16_000, 64)
    ids = np.arange(16_000) * 7 + 3  # ids that are not rows: the sidecar must translate the re-ranking's
    index, info = ann.build(
        plan,
        64,
        16_000,
        lambda: iter([(ids[:8_000], vectors[:8_000]), (ids[8_000:], vectors[8_000:16_000])]),
        folder=tmp_path,
    )
    assert (
        isinstance(index, ann.Reranked) and "k_factor=" in info.search_params and "Refine" not in info.factory
    )
    # the sidecars: every vector once, fp16, in stream order; the image id of each row
    assert np.array_equal(np.fromfile(index.paths[1], np.int64), ids)
    assert np.array_equal(
        np.fromfile(index.paths[0], np.float16).reshape(-1, 64), vectors[:16_000].astype("f2")
    )
    # the stored recall is an estimate from 500 queries: new queries agree within its sampling error (3 sigma)
    error = 3 * np.sqrt(info.recall_at_10 * (1 - info.recall_at_10) / (info.recall_queries * 10)) + 0.01
    exact = _exact_top(vectors[:16_000], queries, 10)
    recall = ann.recall_at_k((ann.search(index, queries, 10)[1] - 3) // 7, exact)
    assert info.recall_at_10 >= 0.95 and recall >= info.recall_at_10 - error, (recall, info)
    # the exact scores of the re-ranking: the fp16 inner products, not PQ estimates
    scores, found = ann.search(index, queries[:5], 10)
    assert np.allclose(scores, np.einsum("qd,qkd->qk", queries[:5], vectors[(found - 3) // 7]), atol=2e-3)

    # k results whenever k exist, far past k_factor x the tuned 10, and inside a filter (by image id)
    many = ann.search(index, queries[:3], 3_000)[1]
    assert (many >= 0).all() and all(len(set(row)) == 3_000 for row in many)
    for allowed in (ids[::400], ids[::3]):  # 40 (exact among them) and 5,334 (the base's selector, of rows)
        _, among = ann.search(index, queries[:20], 30, allowed)
        assert np.isin(among, allowed).all() and all(len(set(row)) == 30 for row in among)
        truth = np.argsort(-(queries[:20] @ vectors[(allowed - 3) // 7].T), axis=1)[:, :10]
        assert ann.recall_at_k(among[:, :10], allowed[truth]) >= 0.9

    # removal in place: the rows leave the lists, their ids become -1; nothing else is rewritten
    vectors_file = index.paths[0].stat()
    gone = np.unique(found[:, :3])
    ann.remove_ids(index, gone)
    assert index.ntotal == 16_000 - len(gone) and index.rows == 16_000
    assert (np.fromfile(index.paths[1], np.int64) == -1).sum() == len(gone)
    assert index.paths[0].stat().st_mtime_ns == vectors_file.st_mtime_ns
    after = ann.search(index, queries, 10)[1]
    assert not np.isin(after, gone).any() and not np.isin(ann.ids_of(index), gone).any()
    kept = np.setdiff1d(ids, gone)
    truth = kept[np.argsort(-(queries @ vectors[(kept - 3) // 7].T), axis=1)[:, :10]]
    assert ann.recall_at_k(after, truth) >= info.recall_at_10 - error

    # incremental: 4,000 more rows join their cells (no retraining) and the recall over all of them holds
    index.add_with_ids(vectors[16_000:], np.arange(16_000, 20_000) * 7 + 3)
    index.flush()
    kept = np.concatenate([kept, np.arange(16_000, 20_000) * 7 + 3])
    truth = kept[np.argsort(-(queries @ vectors[(kept - 3) // 7].T), axis=1)[:, :10]]
    assert ann.recall_at_k(ann.search(index, queries, 10)[1], truth) >= info.recall_at_10 - error
    reopened = ann.Reranked.open(
        faiss.deserialize_index(faiss.serialize_index(index.base)), tmp_path, index.generation, index.rows
    )
    ann.apply_search_params(reopened, info.search_params)
    assert np.array_equal(ann.search(reopened, queries, 10)[1], ann.search(index, queries, 10)[1])


def test_an_ivfpq_build_streams_its_vectors_to_the_sidecars_never_holding_them(tmp_path, monkeypatch):
    import tracemalloc

    dims, part = 128, 3_000
    monkeypatch.setattr(ann, "PQ_TRAIN", 2_048)  # a sample small beside the vectors, as at scale
    plan = ann.Plan("ivfpq", "pq", "IVF64,PQ32x4fs")

    def build(n: int, folder: Path) -> tuple[ann.Reranked, ann.BuildInfo, int, list[int]]:
        written = []  # the sidecar's size as each chunk is asked for

        def chunks():
            for start in range(0, n, part):
                if len(list(folder.glob("*.f16"))) == 1:
                    written.append(next(folder.glob("*.f16")).stat().st_size)
                yield np.arange(start, start + part), clustered(part, dims, clusters=20, rank=8, part=start)

        folder.mkdir()
        threads = faiss.omp_get_max_threads()
        # the tuning re-ranks its blocks one at a time: a peak that the threads' timing cannot move
        faiss.omp_set_num_threads(1)
        tracemalloc.start()
        try:
            index, info = ann.build(plan, dims, n, chunks, folder=folder)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            faiss.omp_set_num_threads(threads)
        return index, info, peak, written

    _, _, smaller, _ = build(30_000, tmp_path / "30k")
    index, info, peak, written = build(60_000, tmp_path / "60k")
    assert info.recall_at_10 >= 0.95 and index.rows == 60_000
    # the rows reach the file chunk by chunk (buffered writes: at most a buffer behind), not at the end
    steps = 60_000 // part
    assert len(written) == 2 * steps and written[steps] == 0
    assert all(written[steps + i] >= i * part * dims * 2 - 2**16 for i in range(steps))
    # twice the vectors, about the same peak (a chunk, the queries, the sample, the tuning's candidates): numpy
    # never holds the vectors (+30,000 fp16 vectors would be +7.7 MB)
    assert peak - smaller < 30_000 * dims * 2 / 8, (smaller, peak)
    base = faiss.downcast_index(index.base)  # and faiss holds codes only: 4-bit PQ, no refine copy
    assert isinstance(base, faiss.IndexIVFPQFastScan) and base.code_size == 16


def test_the_memory_budget_is_kept_with_the_index_and_decides_auto(tmp_path):
    vectors = clustered(50_000, 16, clusters=20, rank=4)  # 1.6 MB of fp16: over a 1 MiB budget
    with _new_index(tmp_path / "index", vectors, memory_budget="1MiB") as index:
        index.sync()
        assert index.build_info.kind == "ivfpq" and index.store.get_meta("memory_budget") == str(1 << 20)
    with SearchIndex(tmp_path / "index") as reopened:  # not asked again: the stored budget holds
        reopened.store.record([FileState("/v/new.jpg", 1, 1)], vectors[:1])
        assert reopened.sync().ntotal == 50_001 and reopened.build_info.kind == "ivfpq"
    with pytest.raises(UsageError, match="memory budget must be a size"):
        SearchIndex(tmp_path / "index", memory_budget="lots")


def test_a_truncated_or_missing_vector_file_is_named_in_one_line_and_its_images_drop_out(tmp_path, caplog):
    vectors, queries = np.split(clustered(12_020, 64, clusters=20, rank=8), [12_000])
    with _new_index(tmp_path / "index", vectors, index_type="ivfpq") as index:
        index.sync()  # ivfpq: the re-ranking vectors live only in the vector file now
    path = tmp_path / "index" / VECTORS_FILE
    os.truncate(path, path.stat().st_size // 2)
    with SearchIndex(tmp_path / "index") as index:
        assert index.search(queries[:2], 10) == [[], []]  # never a crash on the half file, nor a wrong hit
    said = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert any("is truncated or damaged" in m for m in said) and all("\n" not in m for m in said)
    assert any("lost the vectors of 12000 images" in m for m in said)

    caplog.clear()
    with _new_index(tmp_path / "again", vectors[:2_000]) as index:
        index.sync()
    (tmp_path / "again" / VECTORS_FILE).unlink()
    with SearchIndex(tmp_path / "again") as index:
        assert index.search(queries[0], 10) == [[]]
    assert f"{tmp_path / 'again' / VECTORS_FILE} lost the vectors of 2000 images" in caplog.text


def _sidecars(folder: Path) -> list[Path]:
    return sorted(folder.glob("rerank-*"))


def test_an_ivfpq_index_removes_in_place_adds_by_appending_and_names_a_lost_sidecar(
    tmp_path, caplog, monkeypatch
):
    from siglip.tools.search import index as index_module

    vectors, queries = np.split(clustered(12_200, 64, clusters=20, rank=8), [12_000])  # 200 queries
    folder = tmp_path / "index"
    with _new_index(folder, vectors[:11_000], years=True, index_type="ivfpq") as index:
        index.sync()
        info = index.build_info
    vectors_file, ids_file = _sidecars(folder)
    assert vectors_file.suffix == ".f16" and vectors_file.stat().st_size == 11_000 * 64 * 2
    before = vectors_file.stat()

    with SearchIndex(folder) as index:
        found = index.search(queries[:5], 10)
        gone = sorted({h.path for hits in found for h in hits[:2]})
        index.store.remove(gone)
        more = range(11_000, 12_000)
        index.store.record(
            [FileState(f"/v/{i}.jpg", 1, 1) for i in more],
            vectors[11_000:],
            metadata=[{"year": 2000 + i % 7} for i in more],
        )
        after = index.search(queries, 10)
        # no rebuild: the same build (recall, factory) and the same sidecars, appended to, never rewritten
        assert index.build_info == info and _sidecars(folder) == [vectors_file, ids_file]
        assert vectors_file.stat().st_ino == before.st_ino and vectors_file.stat().st_size == 12_000 * 64 * 2
        assert np.array_equal(
            np.fromfile(vectors_file, np.float16)[: 11_000 * 64], vectors[:11_000].ravel().astype("f2")
        )
        assert (np.fromfile(ids_file, np.int64) == -1).sum() == len(gone)
        assert not {h.path for hits in after for h in hits} & set(gone)
        assert (
            index.sync().ntotal == 12_000 - len(gone)
            and index.search(vectors[11_500], 1)[0][0].path == "/v/11500.jpg"
        )
        kept = np.array([i for i in range(12_000) if f"/v/{i}.jpg" not in gone])
        truth = kept[np.argsort(-(queries @ vectors[kept].T), axis=1)[:, :10]]
        spread = info.recall_at_10 * (1 - info.recall_at_10)  # both recalls are estimates: 3 sigma each
        error = 3 * np.sqrt(spread / (info.recall_queries * 10)) + 3 * np.sqrt(spread / (len(queries) * 10))
        assert ann.recall_at_k(_top_rows(index, queries, 10), truth) >= info.recall_at_10 - error
        # k results whenever k exist, inside a filter too (1/7 of the rows: exact among them; 6/7: the selector)
        for where, admitted in (("year = 2003", {3}), ("year >= 2001", {1, 2, 3, 4, 5, 6})):
            hits = index.search(queries[:20], 30, where=where)
            assert all(len(row) == 30 and {int(h.path[3:-4]) % 7 for h in row} <= admitted for row in hits)

    # an update that dies after appending to the sidecars, before the vector file that counts the rows: the
    # old file still pairs with its rows, and the next update cuts the dead run's rows before appending
    def dies(path: Path, write: object) -> None:
        raise OSError(28, "No space left on device", str(path))

    with SearchIndex(folder) as index:
        index.store.record([FileState(f"/v/x{i}.jpg", 1, 1) for i in range(10)], queries[:10])
        monkeypatch.setattr(index_module, "replace_atomically", dies)
        with pytest.raises(OSError, match="No space left"):
            index.sync()
        assert vectors_file.stat().st_size == 12_010 * 64 * 2  # appended, flushed, not referenced
        monkeypatch.undo()
    with SearchIndex(folder) as index:
        assert index.search(vectors[11_500], 1)[0][0].path == "/v/11500.jpg"
        index.store.record([FileState("/v/y.jpg", 1, 1)], queries[10:11])
        assert [hits[0].path for hits in index.search(queries[9:11], 1)] == ["/v/x9.jpg", "/v/y.jpg"]
        assert vectors_file.stat().st_size == 12_011 * 64 * 2 and index.build_info == info

    # a sidecar cut short: named in one line; the vectors it held drop out (the records released them)
    _lost_sidecar_is_named(
        folder,
        _sidecars(folder)[1],
        "is truncated: it holds 12 of the 12,011 rows",
        12_011 - len(gone),
        caplog,
    )


def _lost_sidecar_is_named(
    folder: Path, sidecar: Path, said: str, images: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Damage `sidecar` (cut to 100 bytes, or deleted when `said` says it is missing) and check that a search
    names it in one line, and that the images whose vectors it held drop out of the index."""
    caplog.clear()
    sidecar.unlink() if "missing" in said else os.truncate(sidecar, 100)
    with SearchIndex(folder) as index:
        assert index.search(np.ones(64, np.float32), 10) == [[]]
    named = [r.getMessage() for r in caplog.records if str(sidecar) in r.getMessage()]
    assert len(named) == 1 and said in named[0] and "\n" not in named[0], named
    assert f"lost the vectors of {images} images" in caplog.text


def test_an_index_of_the_previous_ivfpq_layout_searches_and_is_rebuilt_with_sidecars_on_update(
    tmp_path, caplog
):
    from siglip.tools.search import index as index_module

    vectors, queries = np.split(clustered(12_020, 64, clusters=20, rank=8), [12_000])
    folder = tmp_path / "index"
    with _new_index(folder, vectors[:11_000], years=True, index_type="ivfpq") as index:
        index.sync()
        ids = index.store.ids()
        paths = index.store.paths_of(ids)
        rows = np.array([int(paths[int(i)][3:-4]) for i in ids])
        # the previous layout, built by faiss directly: IndexIDMap2(IndexRefine(IVF-PQ fast-scan, SQfp16))
        old = faiss.IndexIDMap2(
            faiss.index_factory(64, "IVF128,PQ16x4fs,Refine(SQfp16)", faiss.METRIC_INNER_PRODUCT)
        )
        old.train(vectors[:11_000])
        old.add_with_ids(vectors[rows], ids)
        identity = index.store.get_meta(index_module._IDENTITY).encode()
        (folder / VECTORS_FILE).write_bytes(
            faiss.serialize_index(old).tobytes() + index_module._STAMP + identity
        )
        factory = "IVF128,PQ16x4fs,Refine(SQfp16)"
        built = ann.BuildInfo("ivfpq", "pq", factory, "nprobe=16,k_factor_rf=8", 0.97, 500, 11_000)
        index.store.set_meta(index_module._BUILD_INFO, built.to_json())
    for path in _sidecars(folder):
        path.unlink()

    with SearchIndex(folder) as index:  # searched as it is: memory-mapped, re-ranked by faiss
        assert isinstance(faiss.downcast_index(index.sync().index), faiss.IndexRefine)
        exact = _exact_top(vectors[:11_000], queries, 10)
        assert ann.recall_at_k(_top_rows(index, queries, 10), exact) >= 0.9
        assert [len(h) for h in index.search(queries[:3], 10, where="year >= 2001")] == [10, 10, 10]
        index.store.record([FileState(f"/v/{i}.jpg", 1, 1) for i in range(11_000, 12_000)], vectors[11_000:])
        assert index.search(vectors[11_500], 1)[0][0].path == "/v/11500.jpg"  # the update rebuilt it
        assert index.build_info.factory == "IVF128,PQ16x4fs" and isinstance(index.sync(), ann.Reranked)
        assert len(_sidecars(folder)) == 2
        exact = _exact_top(vectors, queries, 10)
        assert ann.recall_at_k(_top_rows(index, queries, 10), exact) >= 0.9
    _lost_sidecar_is_named(
        folder, _sidecars(folder)[0], "the re-ranking sidecar of its vector file, is missing", 12_000, caplog
    )


def test_reranking_prefetches_exactly_the_pages_of_its_rows_in_merged_runs(tmp_path):
    import mmap

    class Recorder:  # stands for a sidecar's map: records what the kernel is asked to read
        def __init__(self, size: int) -> None:
            self.size, self.runs = size, []

        def __len__(self) -> int:
            return self.size

        def madvise(self, option: int, start: int, length: int) -> None:
            self.runs.append((option, start, length))

    dims, rows = 1000, 5000  # 2,000-byte vector rows (some span two pages) and 8-byte id rows
    index = ann.Reranked.create(faiss.IndexFlatIP(dims), tmp_path)
    index._maps = (Recorder(rows * dims * 2), Recorder(rows * 8))
    wanted = np.unique(np.random.default_rng(0).choice(rows, 300))
    index.prefetch(wanted)
    for recorder, row_bytes in zip(index._maps, (dims * 2, 8), strict=True):
        page = mmap.PAGESIZE
        expected = {
            p for r in wanted for p in range(r * row_bytes // page, ((r + 1) * row_bytes - 1) // page + 1)
        }
        asked = [range(start // page, (start + length - 1) // page + 1) for _, start, length in recorder.runs]
        assert {p for run in asked for p in run} == expected
        assert all(a.stop < b.start for a, b in itertools.pairwise(asked))  # merged, ascending
        assert all(start % page == 0 and option == mmap.MADV_WILLNEED for option, start, _ in recorder.runs)
        assert recorder.runs[-1][1] + recorder.runs[-1][2] <= recorder.size


def test_rows_are_looked_up_by_id_as_a_scan_finds_them_through_removals_and_appends(tmp_path):
    rng = np.random.default_rng(3)
    dims = 8
    index = ann.Reranked.create(faiss.IndexIDMap2(faiss.IndexFlatIP(dims)), tmp_path)
    ids = rng.permutation(10_000)[:3_000] * 7  # not in row order, with gaps
    index.add_with_ids(rng.standard_normal((3_000, dims)).astype(np.float32), ids)
    index.flush()

    def scanned(wanted: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(np.asarray(index.ids), wanted[wanted >= 0]))

    def check() -> None:
        for wanted in (
            rng.choice(ids, 500),  # repeats
            np.r_[rng.choice(ids, 50), rng.integers(0, 70_000, 200), [-1, 70_000 * 2]],  # absent, -1
            np.empty(0, np.int64),
            ids[:1],
        ):
            assert np.array_equal(index.rows_of(wanted), scanned(wanted))

    check()
    index.remove_ids(ids[::3])  # their rows marked -1: not found by id, nor by -1
    assert len(index.rows_of(ids[::3])) == 0
    check()
    more = 100_000 + np.arange(500)
    index.add_with_ids(rng.standard_normal((500, dims)).astype(np.float32), more)
    index.flush()
    assert np.array_equal(index.rows_of(more), np.arange(3_000, 3_500))
    check()


@pytest.mark.parametrize("base", ["exact", "IVF16,PQ8x4fs"])
def test_the_one_call_search_answers_as_the_re_ranking_here_from_the_mapped_rows_themselves(
    tmp_path, monkeypatch, base
):
    rng = np.random.default_rng(5)
    dims = 32
    vectors = rng.standard_normal((4_000, dims)).astype(np.float32)
    if base == "exact":
        index = ann.Reranked.create(faiss.IndexIDMap2(faiss.IndexFlatIP(dims)), tmp_path)
    else:  # the production kind: candidates from fast-scan codes, searched with IVF parameters
        index = ann.Reranked.create(faiss.index_factory(dims, base, faiss.METRIC_INNER_PRODUCT), tmp_path)
        index.base.train(vectors)
    ids = rng.permutation(100_000)[:4_000]
    index.add_with_ids(vectors, ids)
    index.flush()
    index.remove_ids(ids[::5])  # dead rows: still in the file, gone from the base
    index.k_factor = 4
    queries = rng.standard_normal((40, dims)).astype(np.float32)
    live = np.setdiff1d(np.arange(4_000), np.arange(0, 4_000, 5))
    exact = np.asarray(vectors[live].astype(np.float16), np.float32) @ queries.T

    rerank = index.rerank

    def refused(*args: object) -> None:
        raise AssertionError("the one-call search re-ranked in Python")

    def both_ways(
        k: int, params: object = None, one_call: bool = True
    ) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        index._searches, index._cold = 0, False  # the first search is one call (`_fused`)
        with monkeypatch.context() as patched:
            if one_call:
                patched.setattr(index, "rerank", refused)
            fused = index.search(queries, k, params)
        index._cold = True  # as while rows come from disk: the candidates re-ranked by `rerank`
        stepwise = index.search(queries, k, params)
        return fused, stepwise

    def selecting(allowed: np.ndarray | None) -> object:
        selector = None
        if allowed is not None:
            rows = index.rows_of(allowed)
            selector = faiss.IDSelectorBatch(len(rows), faiss.swig_ptr(rows))
            selector.referenced_rows = rows  # kept alive with it
        if base == "exact":
            return None if selector is None else faiss.SearchParameters(sel=selector)
        return ann.cell_params(faiss, faiss.extract_index_ivf(index.base), 16, selector)

    for k, allowed in ((10, None), (10, ids[1::3]), (3_500, None)):  # 3,500: more than the 3,200 alive
        (scores, found), (step_scores, step_found) = both_ways(k, selecting(allowed))
        # the same results and scores; the order may differ where two scores differ by float rounding (1e-6)
        assert np.array_equal(np.sort(found, axis=1), np.sort(step_found, axis=1))
        assert np.allclose(scores, step_scores, atol=1e-5)
        if allowed is not None:
            assert np.isin(found, allowed).all()
        if (
            k == 10 and base == "exact"
        ):  # against numpy's exact ranking of the fp16 vectors alive (and allowed)
            among = live if allowed is None else live[np.isin(ids[live], allowed)]
            truth = ids[among[np.argsort(-exact[np.isin(live, among)], axis=0)[:k]]].T
            assert np.array_equal(found, truth)
        elif k > 10:  # every live vector once, then -1 and -inf
            assert all(set(row[:3_200]) == set(ids[live]) for row in found)
            assert (found[:, 3_200:] == -1).all() and np.isneginf(scores[:, 3_200:]).all()

    # rows another process removed (their ids -1 in the sidecar) while this base still holds them: the queries
    # that meet one among their best are re-ranked here, which leaves them out before taking the best k
    marked = np.unique(found[:20, :2])
    marks = np.memmap(index.paths[1], np.int64, "r+", shape=(index.rows,))
    marks[np.flatnonzero(np.isin(ids, marked))] = -1
    marks.flush()
    reranked = []
    with monkeypatch.context() as patched:
        patched.setattr(
            index, "rerank", lambda queries, *rest: reranked.append(len(queries)) or rerank(queries, *rest)
        )
        (scores, found), (step_scores, step_found) = both_ways(10, one_call=False)
    assert reranked[0] < len(queries)  # only those queries, in the one-call search
    assert (found >= 0).all() and not np.isin(found, marked).any()
    assert np.array_equal(np.sort(found, axis=1), np.sort(step_found, axis=1))

    # the fp16 rows faiss reads are the mapped sidecar itself (no copy in memory), made again for new rows
    _, _, refine, rows = index._fused()
    assert not rows.codes.is_owned and int(rows.codes.data()) == index.vectors.ctypes.data
    near = (
        queries[:1] / np.linalg.norm(queries[0]) * np.sqrt(dims)
    )  # as long as the others, all along the query
    index.add_with_ids(near, np.array([555_555]))
    index.flush()
    index._searches, index._cold = 0, False
    assert index.search(queries[:1], 1, selecting(None))[1][0, 0] == 555_555
    assert index._fused()[2] is not refine and index._fused()[2].ntotal == index.rows == 4_001


def test_vectors_added_after_a_removal_are_found_as_on_an_index_without_removals(tmp_path):
    # faiss's fast-scan lists leave the codes of moved entries behind in their last block, and the next add
    # ORs new codes into them: without clearing those slots, most of these vectors were not found by themselves
    rng = np.random.default_rng(7)
    dims = 32
    vectors = rng.standard_normal((4_300, dims)).astype(np.float32)
    found_first = []
    for removal in (False, True):
        (tmp_path / str(removal)).mkdir()
        index = ann.Reranked.create(
            faiss.index_factory(dims, "IVF16,PQ8x4fs", faiss.METRIC_INNER_PRODUCT), tmp_path / str(removal)
        )
        index.base.train(vectors[:4_000])
        index.k_factor = 1  # the codes alone rank the candidates: a damaged code shows
        index.add_with_ids(vectors[:4_000], np.arange(4_000))
        index.flush()
        if removal:
            index.remove_ids(np.arange(0, 4_000, 5))
        index.add_with_ids(vectors[4_000:], np.arange(4_000, 4_300))
        index.flush()
        params = ann.cell_params(faiss, faiss.extract_index_ivf(index.base), 16)  # every cell
        found = index.search(vectors[4_000:], 1, params)[1][:, 0]
        found_first.append((found == np.arange(4_000, 4_300)).mean())
        if removal:  # and the vectors kept through the removal still find themselves
            kept = np.setdiff1d(np.arange(4_000), np.arange(0, 4_000, 5))
            assert (index.search(vectors[kept], 1, params)[1][:, 0] == kept).mean() >= 0.95
    assert found_first[0] >= 0.95 and found_first[1] >= found_first[0] - 0.02, found_first
