"""The index never serves another image's vector: its records and its vector file prove they belong together,
every writer stores a path alike, imported rows are checked, and searches return the k results that exist."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _material import BUNDLED
from _vectors import clustered
from siglip import SearchIndex
from siglip.errors import DataError, StoreError, UsageError
from siglip.tools.cli import main
from siglip.tools.search.index import RECORDS_FILE, SET_ASIDE, VECTORS_FILE
from siglip.tools.search.store import FileState, VectorStore

pytest_plugins = ["_fixtures"]
faiss = pytest.importorskip("faiss")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _noise_photos(folder: Path, count: int, seed: int) -> list[str]:
    """`count` distinct small images, as absolute paths, sorted."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (24 + i, 32, 3), dtype=np.uint8)).save(folder / f"n{i}.png")
    return sorted(str(p) for p in folder.iterdir())


def _index(*args: str) -> int:
    return main(["index", *args, "--model", BUNDLED, "--workers", "0", "--device", "cpu"])


def _synthetic_index(directory: Path, vectors: np.ndarray, **settings: str) -> SearchIndex:
    """An index holding `vectors` under the paths /v/<row>.jpg."""
    directory.mkdir()
    VectorStore(directory / RECORDS_FILE, "synthetic", vectors.shape[1]).close()
    index = SearchIndex(directory, **settings)
    index.store.record([FileState(f"/v/{i}.jpg", 1, 1) for i in range(len(vectors))], vectors)
    return index


def _parquet(path: Path, paths: list[str], vectors: np.ndarray, model: str = "synthetic") -> Path:
    from siglip.tools.embeddings.writers import parquet_schema, parquet_table

    schema = parquet_schema(pa, vectors.shape[1])
    pq.write_table(parquet_table(pa, schema, model, paths, np.asarray(vectors, np.float32)), path)
    return path


# --- one fingerprint, one lock --------------------------------------------------------------------------------
def test_the_index_and_the_ray_engine_fingerprint_a_model_alike(embedder, tmp_path):
    from siglip.tools.embeddings import ray_engine

    with SearchIndex(tmp_path / "index", BUNDLED, device="cpu") as index:
        recorded = index.store.get_meta("weights_sha256")
    assert recorded is not None and ray_engine.model_fingerprint(BUNDLED) == recorded


def test_the_index_imports_where_there_is_no_fcntl():
    """Windows has no fcntl: the update lock is filelock's, so the index module imports there."""
    script = "import sys; sys.modules['fcntl'] = None; import siglip.tools.search.index; print('imported')"
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr


# --- the records and the vectors belong together --------------------------------------------------------------
@pytest.mark.parametrize("first_type", ["flat", "hnsw"])
def test_a_vector_file_left_by_deleted_records_is_set_aside_and_never_served(
    embedder, tmp_path, first_type, capsys, caplog
):
    """`index.sqlite` deleted (as a damaged-records message once advised), then an index of another folder:
    the old `vectors.faiss` holds vectors under the ids the new records reuse. It must not be served (flat:
    wrong images with exit 0) nor break later commands (HNSW: remove_ids not implemented)."""
    old = _noise_photos(tmp_path / "old", 6, seed=0)
    new = _noise_photos(tmp_path / "new", 4, seed=1)
    directory = tmp_path / "index"
    assert _index(str(tmp_path / "old"), "--index", str(directory), "--index-type", first_type) == 0
    for suffix in ("", "-wal", "-shm"):
        Path(f"{directory / RECORDS_FILE}{suffix}").unlink(missing_ok=True)

    with caplog.at_level(logging.WARNING, logger="siglip"):
        assert _index(str(tmp_path / "new"), "--index", str(directory)) == 0
    assert "belongs to other records" in caplog.text
    assert (directory / (VECTORS_FILE + SET_ASIDE)).exists()

    vectors = dict(zip(new, embedder.embed_images(new), strict=True))
    with SearchIndex(directory) as index:
        hits = index.search(vectors[new[0]], k=10)[0]
    assert sorted(h.path for h in hits) == new and not set(old) & {h.path for h in hits}
    for hit in hits:
        assert hit.score == pytest.approx(float(vectors[new[0]] @ vectors[hit.path]), abs=1e-5)
    assert _index(str(tmp_path / "new"), "--index", str(directory)) == 0  # later commands keep working
    capsys.readouterr()
    assert main(["search", "a photo", "--index", str(directory), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 4
    assert main(["info", str(directory)]) == 0


def test_a_vector_file_of_other_records_is_refused_on_read_only_media_with_safe_advice(tmp_path, monkeypatch):
    vectors = clustered(50, 16, clusters=2, rank=4)
    _synthetic_index(tmp_path / "a", vectors).sync()
    _synthetic_index(tmp_path / "b", vectors[::-1].copy()).sync()
    (tmp_path / "a" / VECTORS_FILE).replace(tmp_path / "b" / VECTORS_FILE)  # b's records, a's vectors
    monkeypatch.setattr("siglip.tools.search.store._writable", lambda path: False)
    with SearchIndex(tmp_path / "b") as index, pytest.raises(StoreError, match="copy the index folder"):
        index.search(vectors[0], 1)


def test_damaged_records_advise_deleting_the_index_folder_not_one_file(tmp_path):
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / RECORDS_FILE).write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match=r"delete the index folder '.*index' and build the index again"):
        SearchIndex(tmp_path / "index")


# --- one rule for stored paths ------------------------------------------------------------------------------
def test_every_writer_stores_absolute_paths_so_an_image_is_indexed_once(tmp_path, monkeypatch, capsys):
    """`embed --out` from a relative folder, `index --from-embeddings`, then `index` of the same folder given
    relatively: one entry per image, and `--html` from another directory shows every thumbnail."""
    files = _noise_photos(tmp_path / "photos", 5, seed=2)
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            ["embed", "photos", "--out", "e.parquet", "--model", BUNDLED, "--workers", "0", "--device", "cpu"]
        )
        == 0
    )
    assert sorted(pq.read_table("e.parquet").column("path").to_pylist()) == files
    assert main(["index", "--from-embeddings", "e.parquet", "--index", "idx"]) == 0
    assert _index("photos", "--index", "idx") == 0
    assert "0 added, 0 updated, 0 removed, 5 unchanged" in capsys.readouterr().out
    with SearchIndex("idx") as index:
        assert sorted(index.store.states()) == files

    # an embeddings file of an earlier version, with relative paths: taken from the working directory
    relative = [str(Path("photos") / Path(f).name) for f in files]
    fresh = SearchIndex(tmp_path / "fresh", BUNDLED, device="cpu")
    _parquet(tmp_path / "old.parquet", relative, np.eye(5, fresh.store.dims, dtype=np.float32), BUNDLED)
    fresh.import_embeddings(tmp_path / "old.parquet")
    assert sorted(fresh.store.states()) == files

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    args = ["search", "--image", files[0], "--index", str(tmp_path / "idx"), "--html", "r.html", "-k", "5"]
    assert main(args) == 0
    assert (tmp_path / "elsewhere" / "r.html").read_text().count('src="data:image/jpeg;base64,') == 5


# --- imported rows are checked ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["nan", "inf", "zero"])
def test_an_imported_vector_without_a_direction_is_refused_by_row_and_the_index_kept(tmp_path, bad):
    vectors = clustered(40, 16, clusters=2, rank=4)
    vectors[17] = {"nan": np.nan, "inf": np.inf, "zero": 0.0}[bad]
    source = _parquet(tmp_path / "e.parquet", [f"/v/{i}.jpg" for i in range(40)], vectors)
    index = _synthetic_index(tmp_path / "index", clustered(3, 16, clusters=1, rank=4))
    before = index.search(vectors[0], 3)
    with pytest.raises(DataError, match=r"e\.parquet' row 17 \(/v/17\.jpg\): its vector is"):
        index.import_embeddings(source)
    assert len(index) == 3 and index.search(vectors[0], 3) == before


def test_an_imported_vector_off_unit_length_is_normalised_with_a_warning(tmp_path, caplog):
    vectors = clustered(40, 16, clusters=2, rank=4)
    scaled = vectors.copy()
    scaled[5] *= 7  # a "cosine similarity" of 7 otherwise
    source = _parquet(tmp_path / "e.parquet", [f"/v/{i}.jpg" for i in range(40)], scaled)
    index = _synthetic_index(tmp_path / "index", vectors[:0])
    with caplog.at_level(logging.WARNING, logger="siglip"):
        index.import_embeddings(source)
    assert caplog.text.count("1 vectors of") == 1 and "normalised" in caplog.text
    best = index.search(vectors[5], 1)[0][0]
    assert best.path == "/v/5.jpg" and best.score == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(index.entry(best.id)[1], vectors[5], atol=1e-6)


@pytest.mark.parametrize(
    "content",
    [b"", b"PAR1 this is not parquet at all", "truncated", b"path,vector\n/a.jpg,1\n"],
    ids=["empty", "garbage", "truncated", "csv"],
)
def test_from_embeddings_on_a_file_that_is_not_parquet_is_one_line_naming_it(tmp_path, capsys, content):
    source = tmp_path / "e.parquet"
    if content == "truncated":
        _parquet(source, [f"/v/{i}.jpg" for i in range(100)], clustered(100, 16, clusters=2, rank=4))
        content = source.read_bytes()[:-100]
    source.write_bytes(content)
    for index in ("new", "existing"):  # the model is read from the file, or the index's is used
        if index == "existing":
            _synthetic_index(tmp_path / index, clustered(3, 16, clusters=1, rank=4)).close()
        code = main(["index", "--from-embeddings", str(source), "--index", str(tmp_path / index)])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"'{source}' is not a readable Parquet file of embeddings" in err


def test_a_path_given_twice_in_the_embeddings_is_blamed_on_them(tmp_path, monkeypatch):
    vectors = clustered(6, 16, clusters=1, rank=4)
    index = _synthetic_index(tmp_path / "index", vectors[:2])
    twice = _parquet(tmp_path / "twice.parquet", ["/p/a.jpg", "/p/b.jpg", "/p/a.jpg"], vectors[:3])
    with pytest.raises(DataError, match=r"give '/p/a\.jpg' twice \('.*twice\.parquet' rows 0 and 2"):
        index.import_embeddings(twice)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p").mkdir()
    mixed = _parquet(tmp_path / "mixed.parquet", ["p/c.jpg", str(tmp_path / "p" / "c.jpg")], vectors[3:5])
    with pytest.raises(DataError, match="once relative") as raised:
        index.import_embeddings(mixed)
    assert "damaged" not in str(raised.value)
    assert len(index) == 2


# --- search returns the k results that exist ----------------------------------------------------------------
@pytest.mark.parametrize(("kind", "n", "k"), [("hnsw", 300, 400), ("hnsw", 3000, 700), ("ivf", 3000, 1500)])
def test_k_beyond_the_tuned_search_effort_returns_k_results(tmp_path, kind, n, k):
    vectors = clustered(n, 32, clusters=10, rank=6)
    index = _synthetic_index(tmp_path / "index", vectors, index_type=kind)
    index.sync()
    params = index.build_info.search_params
    assert params and int(params.split("=")[1]) < k  # the effort tuned for recall@10 is below k
    hits = index.search(vectors[:3], k)
    assert [len(row) for row in hits] == [min(k, n)] * 3
    assert all(len({h.path for h in row}) == min(k, n) for row in hits)
    if kind == "hnsw":  # the setting of the index is left as tuned: the effort goes with the call
        assert faiss.downcast_index(index.sync().index).hnsw.efSearch == int(params.split("=")[1])


def test_an_explicit_trained_type_below_its_minimum_is_refused_with_the_minimum(tmp_path, capsys):
    _noise_photos(tmp_path / "photos", 3, seed=3)
    code = _index(str(tmp_path / "photos"), "--index", str(tmp_path / "index"), "--index-type", "ivf")
    err = capsys.readouterr().err
    assert (
        code == 2
        and "--index-type ivf needs at least 1,000 images to train on, the index would hold 3" in err
    )
    with SearchIndex(tmp_path / "index") as index:
        assert (
            len(index) == 0 and index.store.get_meta("index_type") is None
        )  # nothing embedded, nothing kept

    small = _synthetic_index(tmp_path / "small", clustered(300, 16, clusters=2, rank=4), index_type="ivfpq")
    with pytest.raises(UsageError, match="ivfpq needs at least 10,000 images"):
        small.search(np.ones(16, np.float32), 5)
    source = _parquet(tmp_path / "e.parquet", ["/x/1.jpg"], np.ones((1, 16), np.float32))
    with pytest.raises(UsageError, match="would hold 301"):
        SearchIndex(tmp_path / "small", index_type="ivf").import_embeddings(source)
    assert len(SearchIndex(tmp_path / "small")) == 300


def test_a_store_whose_creation_dies_leaves_no_file_that_reads_as_a_store(tmp_path, monkeypatch):
    """A run killed while it creates the records left an empty `index.sqlite`, which then opened as an index
    with no model ("is empty; creating a store needs ..."): a new store appears whole, or not at all."""
    from siglip.tools.search import store

    def dies(*args: object) -> None:
        raise KeyboardInterrupt  # the process ends here, between opening the file and creating its tables

    path = tmp_path / "i" / RECORDS_FILE
    path.parent.mkdir()
    with monkeypatch.context() as patched:
        patched.setattr(store, "_create_tables", dies)
        with pytest.raises(KeyboardInterrupt):
            VectorStore(path, "m", 4)
    assert list(path.parent.iterdir()) == []  # neither the store nor its stand-in
    assert not SearchIndex.exists(path.parent)
    with VectorStore(path, "m", 4) as created, VectorStore(path) as reopened:  # the next run creates it
        assert (created.model, reopened.model, reopened.dims) == ("m", "m", 4)
