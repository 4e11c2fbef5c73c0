"""Metadata and `--where` filters: EXIF read from JPEGs the test writes, filters equal to a brute-force check
over the stored metadata, k results under a filter with approximate indexes, one-line errors, the server's
`where` and the Parquet columns of `siglip embed`."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from siglip import SearchIndex
from siglip.errors import UsageError
from siglip.tools.cli import main
from siglip.tools.metadata import SCHEMA, read_metadata
from siglip.tools.search import ann
from siglip.tools.search.filters import parse_filter
from siglip.tools.search.index import RECORDS_FILE
from siglip.tools.search.store import FileState, VectorStore, stored_path
from siglip.tools.serve import ServeSettings, create_app

pytest_plugins = ["_fixtures"]

MTIME = dt.datetime(2020, 3, 4, 5, 6, 7).timestamp()  # local time, as read_metadata reads it back
# name -> (EXIF DateTimeOriginal, make, model, GPS, EXIF orientation, pixel size (w, h))
PHOTOS = {
    "holiday/beach.jpg": ("2023:07:14 10:20:30", "Apple", "iPhone 12", True, 1, (48, 32)),
    "holiday/turned.jpg": ("2023:07:15 08:00:00", "Apple", "iPhone 12", False, 6, (48, 32)),
    "holiday/dinner.jpg": ("2022:12:31 23:59:59", "Canon", "Canon EOS R5", True, 1, (40, 40)),
    "home/cat.jpg": ("2024:01:02 03:04:05", "Canon", "Canon EOS R5", False, 1, (30, 50)),
    "home/scan.jpg": (None, None, None, False, 1, (64, 32)),
    "home/dog.jpg": ("2021:05:06 07:08:09", "FUJIFILM", "X-T4", True, 8, (50, 30)),
}


def _write_jpeg(path: Path, taken, make, model, gps, orientation, size, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    exif = Image.Exif()
    if make:
        exif[0x010F], exif[0x0110] = make, model
    exif[0x0112] = orientation
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    if gps:
        exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    Image.fromarray(pixels).save(path, exif=exif, quality=90)
    os.utime(path, (MTIME, MTIME))


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A folder of JPEGs with EXIF (see PHOTOS) and three PNGs: a screen-sized one, one named as a screenshot and
    one whose EXIF comment says it is one (as iOS writes them)."""
    root = tmp_path_factory.mktemp("library")
    for seed, (name, exif) in enumerate(PHOTOS.items()):
        _write_jpeg(root / name, *exif, seed=seed)
    Image.new("RGB", (1920, 1080), "navy").save(root / "home" / "desktop.png")
    Image.new("RGB", (300, 200), "teal").save(root / "home" / "Screenshot 2024-02-03.png")
    exif = Image.Exif()
    exif[0x0112] = 1  # Pillow writes the EXIF block of a sub-IFD only beside a tag of the main one
    exif.get_ifd(0x8769)[0x9286] = b"ASCII\0\0\0Screenshot"
    Image.new("RGB", (100, 100), "olive").save(root / "home" / "IMG_0001.png", exif=exif)
    for png in ("desktop.png", "Screenshot 2024-02-03.png", "IMG_0001.png"):
        os.utime(root / "home" / png, (MTIME, MTIME))
    return root


@pytest.fixture(scope="module")
def index(embedder, library, tmp_path_factory) -> SearchIndex:
    index = SearchIndex(tmp_path_factory.mktemp("meta") / "index", embedder)
    index.update([library], workers=0, progress=False)
    yield index
    index.close()


def test_read_metadata_gives_the_exif_the_test_wrote(library):
    beach = read_metadata(str(library / "holiday/beach.jpg"))
    assert beach["date"] == "2023-07-14T10:20:30" and beach["date_source"] == "exif" and beach["year"] == 2023
    assert (beach["camera_make"], beach["camera_model"], beach["camera"]) == (
        "Apple",
        "iPhone 12",
        "Apple iPhone 12",
    )
    assert beach["has_gps"] is True and (beach["width"], beach["height"], beach["orientation"]) == (
        48,
        32,
        "landscape",
    )
    assert beach["file_size"] == (library / "holiday/beach.jpg").stat().st_size
    assert (
        beach["file_mtime"] == "2020-03-04T05:06:07"
        and beach["media"] == "image"
        and beach["frame_time"] is None
    )
    assert beach["screenshot"] is False
    turned = read_metadata(str(library / "holiday/turned.jpg"))  # orientation 6: shown turned a quarter
    assert (turned["width"], turned["height"], turned["orientation"], turned["has_gps"]) == (
        32,
        48,
        "portrait",
        False,
    )
    assert read_metadata(str(library / "holiday/dinner.jpg"))["camera"] == "Canon EOS R5"  # no "Canon Canon"
    scan = read_metadata(str(library / "home/scan.jpg"))  # no EXIF date: the file's, and it says so
    assert (scan["date"], scan["date_source"], scan["year"], scan["camera"]) == (
        "2020-03-04T05:06:07",
        "mtime",
        2020,
        None,
    )
    assert read_metadata(str(library / "home/desktop.png"))["screenshot"] is True  # PNG, 16:9, no camera
    assert read_metadata(str(library / "home/Screenshot 2024-02-03.png"))["screenshot"] is True  # its name
    assert read_metadata(str(library / "home/IMG_0001.png"))["screenshot"] is True  # its EXIF comment
    Image.new("RGB", (100, 100)).save(library.parent / "square.png")  # a camera-less PNG, not screen-shaped
    assert read_metadata(str(library.parent / "square.png"))["screenshot"] is False
    frame = read_metadata(f"{library / 'home/cat.jpg'}#t=12.400")  # a frame: the file's fields, no size
    assert (frame["media"], frame["frame_time"], frame["width"], frame["camera"]) == (
        "video",
        12.4,
        None,
        None,
    )
    assert frame["file_size"] == (library / "home/cat.jpg").stat().st_size
    assert set(beach) == set(SCHEMA) - {"path"}
    damaged = library.parent / "damaged-exif.jpg"  # a Make tag pointing past the end of the EXIF block
    Image.new("RGB", (12, 10)).save(
        damaged, exif=b"Exif\0\0II*\0\x08\0\0\0\x01\0\x0f\x01\x02\0\xff\xff\xff\x7f\0\0\0\0"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow says what it skipped
        meta = read_metadata(str(damaged))
    assert (meta["camera"], meta["date_source"], meta["width"], meta["orientation"]) == (
        None,
        "mtime",
        12,
        "landscape",
    )


# each filter with the brute-force check it must equal, over a row's stored metadata
FILTERS = {
    "year >= 2023 and orientation = 'landscape' and not screenshot": lambda m: (
        (m["year"] or 0) >= 2023 and m["orientation"] == "landscape" and not m["screenshot"]
    ),
    "camera ~ 'IPHONE' or (has_gps and date < '2023')": lambda m: (
        "iphone" in (m["camera"] or "").casefold() or (bool(m["has_gps"]) and m["date"][:4] < "2023")
    ),
    "path ~ 'holiday/' and not orientation in ('portrait', 'square')": lambda m: (
        "holiday/" in m["path"] and m["orientation"] not in ("portrait", "square")
    ),
    "date = '2023-07' or year in (2021, 2024)": lambda m: (
        m["date"].startswith("2023-07") or m["year"] in (2021, 2024)
    ),
    "camera is null and date_source = 'mtime'": lambda m: m["camera"] is None and m["date_source"] == "mtime",
    "not camera ~ 'canon' and width > 40": lambda m: (
        "canon" not in (m["camera"] or "").casefold() and (m["width"] or 0) > 40
    ),
    "screenshot or has_gps = false": lambda m: m["screenshot"] or m["has_gps"] is False,
}


@pytest.mark.parametrize("where", FILTERS)
def test_filters_match_a_brute_force_check_and_search_inside_them(index, where):
    stored = index.store.metadata_of(index.store.ids())
    assert len(stored) == len(PHOTOS) + 3
    expected = sorted(i for i, meta in stored.items() if FILTERS[where](meta))
    assert index.matching(where).tolist() == expected
    assert 0 < len(expected) < len(stored)  # each filter keeps some and drops some: a real test
    query = np.random.default_rng(1).standard_normal(index.store.dims).astype(np.float32)
    everything = index.search(query, k=100)[0]
    hits = index.search(query, k=3, where=where)[0]
    # the flat index is exact: the filtered search is the full ranking cut to the matching rows
    assert [h.id for h in hits] == [h.id for h in everything if h.id in expected][:3]
    assert all(h.metadata == stored[h.id] for h in hits)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])  # ivfpq: re-ranked, the filter in its base
@pytest.mark.parametrize("exact_among_below", [0, ann.EXACT_AMONG_BELOW])
def test_k_results_come_back_when_k_rows_match_under_ann(tmp_path, monkeypatch, kind, exact_among_below):
    monkeypatch.setattr(ann, "EXACT_AMONG_BELOW", exact_among_below)  # 0: always through the IDSelector
    rng = np.random.default_rng(0)
    n = ann.TRAINS_FROM.get(kind, 0) + 2000  # enough for the type to be built as asked
    vectors = rng.standard_normal((n, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    (tmp_path / "i").mkdir()
    VectorStore(tmp_path / "i" / RECORDS_FILE, "synthetic", 32).close()
    index = SearchIndex(tmp_path / "i", index_type=kind)
    files = [FileState(f"/v/{i}.jpg", 1, 1) for i in range(len(vectors))]
    index.store.record(
        files, vectors, metadata=[{"year": 2000 + i % 300, "media": "image"} for i in range(n)]
    )
    queries = rng.standard_normal((4, 32)).astype(np.float32)
    for where, k in (("year = 2007", 10), ("year = 2007", 20), ("year < 2002", 10), ("year >= 2150", 10)):
        rows = np.array([i for i in range(n) if eval_year(where, 2000 + i % 300)])
        for query, hits in zip(queries, index.search(queries, k=k, where=where), strict=True):
            assert len(hits) == min(k, len(rows))
            found = [int(h.path[3:-4]) for h in hits]
            assert set(found) <= set(rows.tolist())
            truth = rows[np.argsort(-(vectors[rows] @ (query / np.linalg.norm(query))))[: len(found)]]
            assert len(set(found) & set(truth.tolist())) >= 0.8 * len(found)  # approximate, yet near
    assert index.build_info.kind == kind


def eval_year(where: str, year: int) -> bool:
    _, op, value = where.split()
    return {"=": year == int(value), "<": year < int(value), ">=": year >= int(value)}[op]


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("year >= ", "expected a value, found the end at character 9"),
        ("yeer = 2023", "unknown field 'yeer' (fields: path, date"),
        ("year = '2023'", "year is an int field: compare it with a number, not '2023'"),
        ("screenshot > 1", "screenshot is a bool field: '>' does not apply"),
        ("(year = 2023", "expected ')', found the end"),
        ("date >= '2023-13-01'", "'2023-13-01' is not a date"),
        ("year = 2023; drop table images", "unexpected character ';'"),
        ("camera ~ 'a' camera", "expected 'and', 'or' or the end, found 'camera'"),
    ],
)
def test_bad_filters_are_one_line_errors_naming_the_filter(where, problem):
    with pytest.raises(UsageError) as caught:
        parse_filter(where)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"filter {where!r}: ") and problem in message


def test_cli_search_where_shows_metadata_and_refuses_a_bad_filter(index, capsys, tmp_path):
    search = ["search", "a photo", "--index", str(index.directory)]
    assert main([*search, "-k", "2", "--where", "camera ~ 'canon'", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert len(results) == 2 and all(r["metadata"]["camera"] == "Canon EOS R5" for r in results)
    assert main([*search, "--where", "has_gps", "--html", str(tmp_path / "page.html")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["rank", "score", "date", "camera", "path"]
    assert "2023-07-14 10:20" in out and "Apple iPhone 12" in out and "cat.jpg" not in out
    assert "2023-07-14 10:20 &middot; Apple iPhone 12<br>" in (tmp_path / "page.html").read_text()
    with pytest.raises(SystemExit) as exited:  # refused while the command line is parsed, as every option
        main([*search, "--where", "colour = 'red'"])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and "\n" not in err
    assert err.startswith(
        "siglip search: error: argument --where: filter \"colour = 'red'\": unknown field 'colour'"
    )


def test_serve_search_with_where(embedder, index, library):
    with TestClient(create_app(embedder, index.directory, ServeSettings())) as client:
        answer = client.post("/v1/search", json={"text": "a photo", "k": 10, "where": "year = 2023"})
        assert answer.status_code == 200
        results = answer.json()["results"]
        assert sorted(r["name"] for r in results) == ["beach.jpg", "turned.jpg"]
        assert {r["metadata"]["date"][:4] for r in results} == {"2023"}
        with open(library / "home/cat.jpg", "rb") as image:  # an image search takes it as a form field
            by_image = client.post("/v1/search", files={"file": image}, data={"where": "has_gps", "k": "10"})
        assert by_image.status_code == 200, by_image.text
        assert sorted(r["name"] for r in by_image.json()["results"]) == ["beach.jpg", "dinner.jpg", "dog.jpg"]
        bad = client.post("/v1/search", json={"text": "a photo", "where": "year = 'x'"})
        assert bad.status_code == 422 and "year is an int field" in bad.text


def test_an_index_from_before_metadata_refuses_filters_until_updated(embedder, library, tmp_path):
    index = SearchIndex(tmp_path / "old", embedder)
    files = [stored_path(p) for p in sorted(library.rglob("*.jpg"))]
    index.store.record(
        [FileState.of(p) for p in files], embedder.embed_images(files)
    )  # no metadata: as before
    with pytest.raises(
        UsageError, match=r"6 images of index .* were indexed before metadata was kept; run `siglip index"
    ):
        index.search_text("a photo", where="year = 2023")
    assert len(index.search_text("a photo", k=3)) == 3  # unfiltered search still works
    report = index.update([library], workers=0, progress=False)
    assert report.unchanged == 6 and report.added == 3  # the JPEGs were not embedded again, only described
    assert [h.path for h in index.search_text("a photo", k=5, where="year = 2023")] != []
    assert sorted(Path(p).name for p in index.store.paths_of(index.matching("year = 2023")).values()) == [
        "beach.jpg",
        "turned.jpg",
    ]
    index.close()


def test_embed_writes_metadata_columns_and_an_import_keeps_it(library, tmp_path, checkpoint, embedder):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "vectors.parquet"
    assert (
        main(["embed", str(library / "holiday"), "--out", str(out), "--model", checkpoint, "--workers", "0"])
        == 0
    )
    table = pq.read_table(out).to_pylist()
    assert set(SCHEMA) - {"path"} <= set(table[0])
    for row in table:
        expected = read_metadata(row["path"])
        assert row["camera"] == expected["camera"] and row["has_gps"] == expected["has_gps"]
        assert (
            row["date"] == dt.datetime.fromisoformat(expected["date"]) and row["width"] == expected["width"]
        )
    with SearchIndex(tmp_path / "imported", embedder) as imported:  # an import reads the files' metadata
        imported.import_embeddings(out)
        matching = imported.store.paths_of(imported.matching("camera ~ 'iphone'")).values()
        assert sorted(Path(p).name for p in matching) == ["beach.jpg", "turned.jpg"]
    npy = tmp_path / "vectors.npy"
    assert (
        main(["embed", str(library / "home"), "--out", str(npy), "--model", checkpoint, "--workers", "0"])
        == 0
    )
    manifest = json.loads((tmp_path / "vectors.npy.json").read_text())
    assert [m["year"] for m in manifest["metadata"]] == [read_metadata(p)["year"] for p in manifest["paths"]]


@pytest.fixture
def raised_recursion_limit():
    """The limit as torch.compile leaves it for the rest of the process (raised): the filter's depth is
    counted, not left to a RecursionError that a raised limit never gives."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    yield
    sys.setrecursionlimit(before)


def test_a_filter_nested_to_the_limit_is_parsed(raised_recursion_limit):
    nested = "(" * 50 + "not " * 50 + "screenshot" + ")" * 50
    assert parse_filter(nested).sql == parse_filter("not " * 50 + "screenshot").sql


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("(" * 600 + "year = 1" + ")" * 600, r"nested too deeply \(more than 100\) at character 101"),
        ("not " * 150 + "screenshot", r"nested too deeply \(more than 100\) at character 401"),
        ("year = 1 or " * 200, "more than the 2000"),
    ],
)
def test_filters_beyond_a_person_s_are_refused_in_one_line(where, problem, raised_recursion_limit):
    with pytest.raises(UsageError, match=problem) as caught:
        parse_filter(where)
    assert "\n" not in str(caught.value) and str(caught.value).startswith(f"filter {where[:40]!r}...")


def test_rows_another_process_adds_between_sync_and_filter_are_left_out(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((1100, 16)).astype(np.float32)
    (tmp_path / "i").mkdir()
    VectorStore(tmp_path / "i" / RECORDS_FILE, "synthetic", 16).close()
    index = SearchIndex(tmp_path / "i", index_type="ivf")
    metadata = [{"year": 2020} for _ in range(1000)]
    index.store.record(
        [FileState(f"/v/{i}.jpg", 1, 1) for i in range(1000)], vectors[:1000], metadata=metadata
    )
    index.sync()
    matching_ids = VectorStore.matching_ids

    def racing(store, where, params):  # another writer commits rows after the sync, before the filter runs
        with VectorStore(tmp_path / "i" / RECORDS_FILE) as other:
            other.record(
                [FileState(f"/v/{i}.jpg", 1, 1) for i in range(1000, 1100)],
                vectors[1000:],
                metadata=metadata[:100],
            )
        return matching_ids(store, where, params)

    monkeypatch.setattr(VectorStore, "matching_ids", racing)
    hits = index.search(vectors[1050], k=5, where="year = 2020")[0]  # exact among them: ids the file lacks
    assert len(hits) == 5 and all(int(h.path[3:-4]) < 1000 for h in hits)
