"""`siglip embed --texts` and `siglip dedup`, on real photos with planted near-copies (scikit-image's samples).

The oracles: the model's own text embeddings (`Embedder.embed_texts`) for the texts job; for dedup, the copies
this module plants (resized, re-encoded at JPEG quality 60, slightly cropped) and a brute-force all-pairs check.
"""

from __future__ import annotations

import html
import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from _material import BUNDLED, write_photos
from siglip import Embedder, find_images
from siglip.errors import UsageError
from siglip.tools.cli import main
from siglip.tools.embeddings import precision
from siglip.tools.search import dedup
from siglip.tools.search.dedup import (
    DEFAULT_THRESHOLD,
    embed_folder,
    find_groups,
    move_duplicates,
    similar_pairs,
    undo_moves,
)
from siglip.tools.serve import create_app

pytest_plugins = ["_fixtures"]

TEXTS = ["a photo of a cat", "an astronaut", "  spaces kept  ", "a rocket, on its pad", 'a "quoted" cup']


@pytest.fixture(scope="module")
def fp32() -> Embedder:
    return Embedder.from_pretrained(BUNDLED, device="cpu", precision="fp32")


# --- embed --texts -----------------------------------------------------------------------------------------
def test_embed_texts_from_lines_csv_and_jsonl_equal_the_models_text_embeddings(fp32, tmp_path, capsys):
    expected = fp32.embed_texts(TEXTS)
    lines = tmp_path / "texts.txt"
    lines.write_text(TEXTS[0] + "\n\n" + "\n".join(TEXTS[1:]) + "\n")  # a blank line is left out
    args = ["--model", BUNDLED, "--device", "cpu", "--precision", "fp32", "--batch-size", "2"]
    assert main(["embed", "--texts", str(lines), "--out", str(tmp_path / "lines.parquet"), *args]) == 0
    table = pq.read_table(tmp_path / "lines.parquet").to_pydict()
    assert table["id"] == ["1", "3", "4", "5", "6"]  # line numbers
    assert table["text"] == TEXTS
    np.testing.assert_allclose(np.array(table["vector"]), expected, atol=1e-6)
    assert set(table["model"]) == {fp32.name}

    csv_file = tmp_path / "texts.csv"
    body = "".join(f'k{i},"{t.replace(chr(34), chr(34) * 2)}"\n' for i, t in enumerate(TEXTS))
    csv_file.write_text("key,caption\n" + body)
    out = tmp_path / "csv.npy"
    assert main(["embed", "--texts", str(csv_file), "--id-column", "key", "--out", str(out), *args]) == 0
    manifest = json.loads((tmp_path / "csv.npy.json").read_text())
    assert manifest["ids"] == [f"k{i}" for i in range(len(TEXTS))] and manifest["count"] == len(TEXTS)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)

    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text("".join(json.dumps({"n": i, "query": t}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "jsonl.parquet"
    assert main(["embed", "--texts", str(jsonl), "--text-column", "query", "--out", str(out), *args]) == 0
    table = pq.read_table(out).to_pydict()
    assert table["id"] == ["1", "2", "3", "4", "5"] and table["text"] == TEXTS
    np.testing.assert_allclose(np.array(table["vector"]), expected, atol=1e-6)
    assert not list(tmp_path.glob("*.partial*"))
    assert main(["index", "--from-embeddings", str(out), "--index", str(tmp_path / "index")]) == 2
    assert "holds text embeddings (`siglip embed --texts`): an index holds images" in capsys.readouterr().err


def test_embed_texts_resumes_from_its_journal_and_restarts_on_changed_input(fp32, tmp_path, capsys):
    from siglip.tools.embeddings.writers import embed_texts_to_file
    from siglip.tools.inputs.texts import read_texts

    source = tmp_path / "t.txt"
    source.write_text("\n".join(TEXTS))
    out = tmp_path / "t.parquet"
    calls = []
    real = fp32.embed_texts

    def dies_on_the_second_batch(texts, batch_size=256):
        calls.append(list(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(texts, batch_size)

    def interrupted() -> None:
        calls.clear()
        fp32.embed_texts = dies_on_the_second_batch
        try:
            with pytest.raises(KeyboardInterrupt):
                embed_texts_to_file(read_texts(source), out, fp32, batch_size=2)
        finally:
            del fp32.embed_texts
        assert not out.exists()

    interrupted()
    report = embed_texts_to_file(read_texts(source), out, fp32, batch_size=2)
    assert (report.count, report.embedded) == (5, 3)  # the first batch was kept
    np.testing.assert_allclose(np.array(pq.read_table(out)["vector"].to_pylist()), real(TEXTS), atol=1e-6)

    # interrupted on other texts, then the file changes: the journal of the old texts is not reused
    out.unlink()
    source.write_text("\n".join(TEXTS[::-1]))
    interrupted()
    source.write_text("\n".join(TEXTS))
    report = embed_texts_to_file(read_texts(source), out, fp32, batch_size=2)
    assert report.embedded == 5
    np.testing.assert_allclose(np.array(pq.read_table(out)["vector"].to_pylist()), real(TEXTS), atol=1e-6)


@pytest.mark.parametrize(
    ("name", "content", "options", "message"),
    [
        ("empty.txt", "\n \n", [], "{p} holds no texts"),
        ("empty.csv", "text\n", [], "{p} holds no texts"),
        ("a.csv", "id,title\n1,x\n", [], "{p} line 2 has no column text or caption (columns: id, title)"),
        ("b.csv", "text\nx\n", ["--text-column", "body"], "{p} line 2 has no column 'body' (--text-column"),
        ("c.csv", "id,text\n1,a\n2,b,c\n", [], "{p} line 3 has 3 fields, the header 2"),
        ("d.csv", 'text\n"open\n', [], "{p} line 2: unexpected end of data"),
        ("e.jsonl", '{"text": "a"}\n{"text": \n', [], "{p} line 2: not valid JSON"),
        ("f.jsonl", '{"text": "a"}\n[1]\n', [], "{p} line 2 is not a JSON object"),
        ("g.jsonl", '{"text": "a"}\n{"text": 3}\n', [], "{p} line 2: 'text' is int, not text"),
        ("h.csv", "id,text\n1,a\n1,b\n", ["--id-column", "id"], "{p}: id '1' appears twice"),
        ("i.txt", "a\n", ["--text-column", "x"], "{p} is read as plain lines"),
        ("j.txt", "a\n\xff\n", [], "{p} line 2: not UTF-8 text"),
    ],
)
def test_embed_texts_bad_input_is_one_line_naming_the_file_and_line(
    tmp_path, capsys, name, content, options, message
):
    path = tmp_path / name
    path.write_bytes(content.encode("latin-1"))  # byte for character: "\xff" is a byte that UTF-8 never has
    out = tmp_path / "o.parquet"
    assert main(["embed", "--texts", str(path), "--out", str(out), "--model", BUNDLED, *options]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message.format(p=path) in err, err
    assert not out.exists() and not list(tmp_path.glob("o.parquet*"))


# --- dedup -------------------------------------------------------------------------------------------------
ODD_NAME = "rocket <b>&'q60'.jpg"  # a name the HTML page must escape


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict[str, set[str]]]:
    """scikit-image's photos, and near-copies of three of them: (folder, keeper -> its copies)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("planted")
    originals = write_photos(folder, corrupt=False)
    for original in originals:
        os.utime(original, (1.5e9, 1.5e9))  # older than the copies: the keeper of a same-size re-encode
    astronaut = Image.open(folder / "astronaut.jpg")
    (folder / "copies").mkdir()
    astronaut.resize((256, 256)).save(folder / "copies" / "astronaut_small.jpg", quality=90)
    astronaut.save(folder / "copies" / "astronaut_q60.jpg", quality=60)
    coffee = Image.open(folder / "coffee.jpg")
    w, h = coffee.size
    coffee.crop((w // 50, h // 50, w - w // 50, h - h // 50)).save(folder / "coffee_crop.jpg", quality=90)
    Image.open(folder / "rocket.jpg").save(folder / "copies" / ODD_NAME, quality=60)
    expected = {
        str(folder / "astronaut.jpg"): {
            str(folder / "copies" / "astronaut_small.jpg"),
            str(folder / "copies" / "astronaut_q60.jpg"),
        },
        str(folder / "coffee.jpg"): {str(folder / "coffee_crop.jpg")},
        str(folder / "rocket.jpg"): {str(folder / "copies" / ODD_NAME)},
    }
    return folder, expected


@pytest.fixture(scope="module")
def planted_vectors(planted, fp32) -> tuple[list[str], np.ndarray]:
    paths, vectors, skipped = embed_folder(fp32, find_images([planted[0]]), workers=0)
    assert not skipped
    return paths, vectors


def _groups(report: dict) -> dict[str, set[str]]:
    return {g["keeper"]: {m["path"] for m in g["members"]} for g in report["groups"]}


def test_dedup_finds_exactly_the_planted_copies_with_a_json_and_an_escaped_html_report(
    planted, planted_vectors, fp32, tmp_path, capsys, monkeypatch
):
    folder, expected = planted
    page = tmp_path / "groups.html"
    args = ["--model", BUNDLED, "--device", "cpu", "--precision", "fp32", "--workers", "0"]
    assert main(["dedup", str(folder), "--json", "--html", str(page), *args]) == 0
    report = json.loads(capsys.readouterr().out)
    assert _groups(report) == expected
    assert set(report) == {"threshold", "model", "images", "duplicates", "groups"}
    assert (report["threshold"], report["images"], report["duplicates"]) == (DEFAULT_THRESHOLD, 9, 4)
    # the similarities are the cosines of the model's embeddings (brute force over all pairs)
    paths, vectors = planted_vectors
    row = {p: i for i, p in enumerate(paths)}
    for group in report["groups"]:
        for member in group["members"]:
            cosine = float(vectors[row[group["keeper"]]] @ vectors[row[member["path"]]])
            assert member["similarity"] == pytest.approx(cosine, abs=1e-5)
            assert cosine >= DEFAULT_THRESHOLD
    grouped = {p for g in report["groups"] for p in (g["keeper"], *(m["path"] for m in g["members"]))}
    sims = vectors @ vectors.T
    for i, j in zip(*np.nonzero(sims >= DEFAULT_THRESHOLD), strict=True):
        assert i == j or (paths[i] in grouped and paths[j] in grouped)
    text = page.read_text()
    assert ODD_NAME not in text and html.escape(ODD_NAME) in text
    assert text.count("<section>") == 3 and text.count("data:image/jpeg;base64,") == 7
    assert all(os.path.exists(p) for k, v in expected.items() for p in (k, *v))  # nothing moved

    # from an index: its stored vectors, the same groups
    index = tmp_path / "index"
    assert main(["index", str(folder), "--index", str(index), *args]) == 0
    capsys.readouterr()
    assert main(["dedup", "--index", str(index), "--json"]) == 0
    assert _groups(json.loads(capsys.readouterr().out)) == expected
    assert (
        main(["dedup", "--index", str(index), "--json", "--neighbours", "2"]) == 0
    )  # through the index's search
    assert _groups(json.loads(capsys.readouterr().out)) == expected
    # no model runs: where `auto` means another precision than the index's (int8 on an x86 CPU without AMX),
    # the index's vectors are used all the same
    with monkeypatch.context() as patched:
        patched.setattr(precision, "fast_int8", lambda device: True)
        patched.setattr(precision, "has_amx", lambda device: False)
        assert main(["dedup", "--index", str(index), "--json"]) == 0
    assert _groups(json.loads(capsys.readouterr().out)) == expected

    # the server's /v1/dedup: the same groups, by name and id
    with TestClient(create_app(fp32, index)) as client:
        served = client.get("/v1/dedup").json()
        assert client.get("/v1/dedup", params={"neighbours": 2}).json()["groups"] == served["groups"]
        assert client.get("/v1/dedup", params={"threshold": 1.5}).status_code == 422
        keeper_id = served["groups"][0]["keeper"]["id"]
        assert client.get(f"/v1/images/{keeper_id}/thumbnail").status_code == 200
    by_name = {g["keeper"]["name"]: {m["name"] for m in g["members"]} for g in served["groups"]}
    assert by_name == {Path(k).name: {Path(p).name for p in v} for k, v in expected.items()}
    assert served["duplicates"] == 4 and served["images"] == 9


def test_a_higher_threshold_only_splits_groups_and_members_stay_close_to_their_keeper(planted_vectors):
    paths, vectors = planted_vectors
    thresholds = [0.8, 0.9, 0.95, 0.98, 0.995, 1.0]
    groupings = [find_groups(paths, vectors, t) for t in thresholds]
    row = {p: i for i, p in enumerate(paths)}
    for threshold, groups in zip(thresholds, groupings, strict=True):
        for group in groups:
            keeper = vectors[row[group.keeper]]
            assert all(float(vectors[row[m.path]] @ keeper) >= threshold for m in group.members)
    for lower, higher in itertools.pairwise(groupings):
        coarse = [{g.keeper, *(m.path for m in g.members)} for g in lower]
        for group in higher:
            assert any({group.keeper, *(m.path for m in group.members)} <= c for c in coarse)


def test_a_chain_is_cut_at_the_keepers_threshold():
    # a ~ b and b ~ c at 0.96, but a and c at 0.84: connected, yet c is no duplicate of the keeper a
    angle = np.arccos(0.96)
    vectors = np.array([[np.cos(k * angle), np.sin(k * angle)] for k in range(3)], dtype=np.float32)
    groups = find_groups(["a", "b", "c"], vectors, 0.95)  # files that do not exist: keeper by path
    assert [(g.keeper, [m.path for m in g.members]) for g in groups] == [("a", ["b"])]


def test_similar_pairs_equal_a_brute_force_search_across_blocks():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 32)).astype(np.float32)
    vectors[150:170] = vectors[:20] + 0.05 * rng.standard_normal((20, 32))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    first, second, scores = similar_pairs(vectors, 0.9, block=64)
    sims = vectors @ vectors.T
    truth = {(i, j) for i, j in zip(*np.nonzero(sims >= 0.9), strict=True) if i < j}
    assert set(zip(first.tolist(), second.tolist(), strict=True)) == truth and len(truth) >= 20
    np.testing.assert_allclose(scores, sims[first, second], atol=1e-6)


def test_move_to_moves_exactly_the_duplicates_never_over_a_file_and_undo_puts_them_back(
    planted, planted_vectors, tmp_path, monkeypatch
):
    folder, expected = planted
    copy = tmp_path / "photos"
    shutil.copytree(folder, copy)
    paths, vectors = planted_vectors
    paths = [str(copy / Path(p).relative_to(folder)) for p in paths]
    for p in paths:
        os.utime(
            p, (os.stat(folder / Path(p).relative_to(copy)).st_mtime,) * 2
        )  # copytree kept them; be sure
    groups = find_groups(paths, vectors)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file())
    duplicates = sorted(Path(p).relative_to(folder) for copies in expected.values() for p in copies)

    # a destination that exists: refused before anything moves
    taken = tmp_path / "taken"
    (taken / "copies").mkdir(parents=True)
    (taken / "copies" / "astronaut_q60.jpg").write_bytes(b"mine")
    with pytest.raises(UsageError, match="exists"):
        move_duplicates(groups, taken)
    assert sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file()) == before
    assert (taken / "copies" / "astronaut_q60.jpg").read_bytes() == b"mine"

    moved = tmp_path / "moved"
    manifest = move_duplicates(groups, moved)
    assert (
        sorted(p.relative_to(moved) for p in moved.rglob("*") if p.is_file() and p != manifest) == duplicates
    )
    left = sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file())
    assert left == sorted(set(before) - set(duplicates))
    with pytest.raises(UsageError, match="undo that move first"):
        move_duplicates(groups, moved)
    assert undo_moves(manifest) == 4 and not manifest.exists()
    assert sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file()) == before

    # interrupted after the second file: undo still puts every file back
    calls = []
    real_move = dedup._move

    def dies_on_the_third(source, destination):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(source)
        real_move(source, destination)

    monkeypatch.setattr(dedup, "_move", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        move_duplicates(groups, tmp_path / "again")
    monkeypatch.setattr(dedup, "_move", real_move)
    assert undo_moves(tmp_path / "again" / dedup.MANIFEST_NAME) == 2
    assert sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file()) == before


def test_the_command_moves_only_when_asked_and_undoes(planted, tmp_path, capsys):
    folder, expected = planted
    copy = tmp_path / "photos"
    shutil.copytree(folder, copy)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file())
    args = ["--model", BUNDLED, "--device", "cpu", "--precision", "fp32", "--workers", "0"]
    moved = tmp_path / "moved"
    assert main(["dedup", str(copy), "--move-to", str(moved), *args]) == 0
    err = capsys.readouterr().err
    manifest = moved / dedup.MANIFEST_NAME
    assert f"moved 4 duplicate(s) into {moved}; undo: siglip dedup --undo {manifest}" in err
    gone = {Path(p).relative_to(folder) for copies in expected.values() for p in copies}
    assert {p.relative_to(moved) for p in moved.rglob("*") if p.is_file() and p != manifest} == gone
    assert main(["dedup", "--undo", str(manifest)]) == 0
    assert sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file()) == before

    for wrong, message in [
        ([str(copy), "--index", str(tmp_path)], "one of the two"),
        ([], "one of the two"),
        (["--undo", str(manifest), str(copy)], "--undo MANIFEST puts files back"),
        (["--undo", str(tmp_path / "none.json")], "none.json"),
    ]:
        assert main(["dedup", *wrong]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, err
    with pytest.raises(SystemExit) as exited:  # refused while parsing, before any model loads
        main(["dedup", str(copy), "--threshold", "1.5"])
    assert exited.value.code == 2 and "--threshold" in capsys.readouterr().err
