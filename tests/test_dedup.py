"""`siglip embed --texts` and `siglip dedup`, on real photos with planted near-copies (scikit-image's samples).

The oracles: the model's own text embeddings (`Embedder.embed_texts`) for the texts job; for dedup, the copies
this module plants (resized, re-encoded at JPEG quality 60, slightly cropped) and a brute-force all-pairs check.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from _material import BUNDLED
from siglip import Embedder
from siglip.tools.cli import main

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
        ("empty.txt", "\n \n", [], "'{p}' holds no texts"),
        ("a.csv", "id,title\n1,x\n", [], "'{p}' has no column text or caption (columns: id, title)"),
        ("b.csv", "text\nx\n", ["--text-column", "body"], "'{p}' has no column 'body' (--text-column"),
        ("c.csv", "id,text\n1,a\n2,b,c\n", [], "'{p}' line 3: 3 fields where the header has 2"),
        ("d.csv", 'text\n"open\n', [], "'{p}' line 2: bad CSV"),
        ("e.jsonl", '{"text": "a"}\n{"text": \n', [], "'{p}' line 2: not JSON"),
        ("f.jsonl", '{"text": "a"}\n[1]\n', [], "'{p}' line 2: a JSON object is needed, not list"),
        ("g.csv", "id,text\n1,a\n1,b\n", ["--id-column", "id"], "'{p}': id '1' appears twice"),
        ("h.txt", "a\n", ["--text-column", "x"], "'{p}' is read as plain lines"),
    ],
)
def test_embed_texts_bad_input_is_one_line_naming_the_file_and_line(
    tmp_path, capsys, name, content, options, message
):
    path = tmp_path / name
    path.write_text(content)
    out = tmp_path / "o.parquet"
    assert main(["embed", "--texts", str(path), "--out", str(out), "--model", BUNDLED, *options]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message.format(p=path) in err, err
    assert not out.exists() and not list(tmp_path.glob("o.parquet*"))
