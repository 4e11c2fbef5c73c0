"""The `siglip` command end to end, in subprocesses, on real photos: outputs parsed and checked against the API.

Bad input is checked in process through `siglip.tools.cli.main` (the same entry point, without the cost of a new
interpreter per case), except the offline hub case, which needs its own environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from _material import BUNDLED, CORRUPT_REASON
from siglip import SiglipModel, pipeline
from siglip.tools.cli import main
from siglip.tools.cli._options import score_text
from siglip.tools.embeddings.embedder import default_device
from siglip.tools.embeddings.inference import InferenceMode

pytest_plugins = ["_fixtures"]
LABELS = ["an astronaut", "a cat", "a cup of coffee", "a rocket", "a man with a camera"]


def siglip(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run the command as a user does, offline."""
    return subprocess.run(
        [sys.executable, "-m", "siglip", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def _ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done


def _rows(stdout: str) -> list[list[str]]:
    """The cells of a table printed with two or more spaces between columns (header included)."""
    return [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines() if line.strip()]


def _assert_skipped_broken(stderr: str, directory) -> None:
    assert "skipped 1 unreadable file(s)" in stderr
    assert f"{directory / 'broken.jpg'}: {CORRUPT_REASON}" in stderr


# --- classify ---------------------------------------------------------------------------------------------
def test_classify_json_and_table(checkpoint, embedder, photos):
    directory, files = photos
    as_json = json.loads(
        _ok(siglip("classify", directory, "--labels", *LABELS, "--model", checkpoint, "--json")).stdout
    )
    expected = pipeline(model=embedder)([str(f) for f in files], candidate_labels=LABELS)

    assert as_json["model"] == embedder.name
    assert [r["path"] for r in as_json["results"]] == [str(f) for f in files]
    for result, reference in zip(as_json["results"], expected, strict=True):
        assert [r["label"] for r in result["labels"]] == [r["label"] for r in reference]
        np.testing.assert_allclose(
            [r["score"] for r in result["labels"]], [r["score"] for r in reference], rtol=1e-4
        )
    assert [s["path"] for s in as_json["skipped"]] == [str(directory / "broken.jpg")]

    done = _ok(
        siglip(
            "classify",
            directory / "*.jpg",
            files[0],
            "--labels",
            *LABELS,
            "--model",
            checkpoint,
            "--top-k",
            "2",
        )
    )
    rows = _rows(done.stdout)
    assert rows[0] == ["image", "label", "score"]
    jpgs = [r for r in as_json["results"] if r["path"].endswith(".jpg")]
    assert len(rows) == 1 + 2 * len(jpgs)  # a glob and a file it already matched: each image once
    for i, result in enumerate(jpgs):
        first, second = rows[1 + 2 * i], rows[2 + 2 * i]
        assert first[:2] == [result["path"], result["labels"][0]["label"]]
        assert first[2] == score_text(result["labels"][0]["score"])
        assert second[0] == result["labels"][1]["label"]  # the image column is left blank on its second line
    _assert_skipped_broken(done.stderr, directory)


# --- embed ------------------------------------------------------------------------------------------------
def test_embed_to_parquet_and_npy(checkpoint, embedder, photos, tmp_path):
    directory, files = photos
    done = _ok(
        siglip("embed", directory, "--out", tmp_path / "v.parquet", "--model", checkpoint, "--workers", "2")
    )
    assert done.stdout.startswith(f"wrote {len(files)} embeddings ({embedder.dims}-d, model {embedder.name})")
    assert f"embedded {len(files)} images (1 unreadable)" in done.stdout
    _assert_skipped_broken(done.stderr, directory)
    table = pq.read_table(tmp_path / "v.parquet").to_pydict()
    expected = embedder.embed_images([str(f) for f in files])
    assert table["path"] == [str(f) for f in files]
    np.testing.assert_allclose(np.array(table["vector"]), expected, atol=1e-5)

    _ok(siglip("embed", files[2], directory / "grey", "--out", tmp_path / "v.npy", "--model", checkpoint))
    manifest = json.loads((tmp_path / "v.npy.json").read_text())
    assert files[3] == directory / "grey" / "camera.png"
    assert manifest["paths"] == [str(files[2]), str(files[3])] and manifest["skipped"] == []
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), expected[[2, 3]], atol=1e-5)


# --- index and search -------------------------------------------------------------------------------------
class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.captions: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])

    def handle_data(self, data):
        if data.startswith("/"):
            self.captions.append(data)


def _ranking(vectors: dict[str, np.ndarray], query: np.ndarray) -> list[tuple[str, float]]:
    scores = {path: float(v @ query) for path, v in vectors.items()}
    return sorted(scores.items(), key=lambda item: -item[1])


def test_index_update_and_search_by_text_and_image(checkpoint, embedder, photos, tmp_path):
    directory = shutil.copytree(photos[0], tmp_path / "photos")  # this test changes and deletes files
    files = [directory / f.relative_to(photos[0]) for f in photos[1]]
    index = tmp_path / "index"
    first = _ok(siglip("index", directory, "--index", index, "--model", checkpoint, "--batch-size", "2"))
    assert first.stdout.startswith(
        "5 added, 0 updated, 0 removed, 0 unchanged, 1 unreadable; the index holds 5"
    )
    _assert_skipped_broken(first.stderr, directory)

    vectors = dict(zip(map(str, files), embedder.embed_images([str(f) for f in files]), strict=True))
    by_text = json.loads(
        _ok(siglip("search", "a cat on a sofa", "--index", index, "-k", "3", "--json")).stdout
    )
    expected = _ranking(vectors, embedder.embed_texts(["a cat on a sofa"])[0])[:3]
    assert [r["path"] for r in by_text["results"]] == [p for p, _ in expected]
    np.testing.assert_allclose([r["score"] for r in by_text["results"]], [s for _, s in expected], atol=1e-5)

    page = tmp_path / "results.html"
    done = _ok(siglip("search", "--image", files[1], "--index", index, "--html", page))
    rows = _rows(done.stdout)
    expected = _ranking(vectors, vectors[str(files[1])])
    assert rows[0] == ["rank", "score", "date", "camera", "path"]
    assert [r[4] for r in rows[1:]] == [p for p, _ in expected]  # all 5: fewer than the default k of 10
    assert [float(r[1]) for r in rows[1:]] == pytest.approx([s for _, s in expected], abs=1e-4)
    html = _Images()
    html.feed(page.read_text())
    assert html.captions == [p for p, _ in expected]
    assert len(html.sources) == 5 and all(s.startswith("data:image/jpeg;base64,") for s in html.sources)

    files[0].unlink()
    Image.open(files[2]).rotate(180).save(files[2])
    again = _ok(siglip("index", directory, "--index", index))  # the index remembers its model
    assert again.stdout.startswith(
        "0 added, 1 updated, 1 removed, 4 unchanged, 0 unreadable; the index holds 4"
    )
    remaining = json.loads(_ok(siglip("search", "coffee", "--index", index, "--json")).stdout)["results"]
    assert sorted(r["path"] for r in remaining) == sorted(map(str, files[1:]))


# --- eval -------------------------------------------------------------------------------------------------
def test_eval_zeroshot_and_retrieval(checkpoint, embedder, photos, tmp_path):
    _, files = photos
    for name, file in {"astronaut": files[0], "cat": files[1], "coffee": files[2]}.items():
        (tmp_path / "classes" / name).mkdir(parents=True)
        Image.open(file).save(tmp_path / "classes" / name / file.name)
    plot = tmp_path / "cm.png"
    done = _ok(
        siglip(
            "eval",
            "zeroshot",
            "--data",
            tmp_path / "classes",
            "--model",
            checkpoint,
            "--plot",
            plot,
            "--json",
        )
    )
    report = json.loads(done.stdout)
    scores = (
        embedder.embed_images([str(f) for f in files[:3]])
        @ embedder.embed_texts([f"This is a photo of {c}." for c in ("astronaut", "cat", "coffee")]).T
    )
    hits = scores.argmax(axis=1) == np.arange(3)
    assert report["top1"] == pytest.approx(hits.mean()) and report["top5"] == 1.0
    assert report["per_class_recall"] == {
        c: float(h) for c, h in zip(["astronaut", "cat", "coffee"], hits, strict=True)
    }
    assert report["plot"] == str(plot) and Image.open(plot).format == "PNG"
    reliability_plot = tmp_path / "reliability-diagram.png"  # beside the confusion matrix
    assert (
        report["reliability_plot"] == str(reliability_plot) and Image.open(reliability_plot).format == "PNG"
    )
    assert 0 <= report["ece"] <= 1 and 0 <= report["median_true_class_probability"] <= 1
    assert sum(report["reliability"]["count"]) == 3

    captions = ["Color image of the astronaut Eileen Collins.", "Chelsea the cat.", "Coffee cup."]
    (tmp_path / "pairs.jsonl").write_text(
        "\n".join(
            json.dumps({"image": str(f), "caption": c}) for f, c in zip(files[:3], captions, strict=True)
        )
    )
    done = _ok(siglip("eval", "retrieval", "--data", tmp_path / "pairs.jsonl", "--model", checkpoint))
    rows = _rows(done.stdout)
    assert rows[:2] == [["3 images, 3 captions"], ["R@1", "R@5", "R@10"]]
    assert [rows[2][0], rows[3][0]] == ["image->text", "text->image"]
    similarity = embedder.embed_texts(captions) @ embedder.embed_images([str(f) for f in files[:3]]).T
    image_to_text = (similarity.T.argmax(axis=1) == np.arange(3)).mean()
    text_to_image = (similarity.argmax(axis=1) == np.arange(3)).mean()
    assert [float(rows[2][1]), float(rows[3][1])] == pytest.approx([image_to_text, text_to_image], abs=1e-4)
    assert [float(x) for x in rows[2][2:] + rows[3][2:]] == [1.0] * 4  # 3 candidates: R@5 = R@10 = 1


# --- info -------------------------------------------------------------------------------------------------
def test_info(checkpoint):
    info = json.loads(_ok(siglip("info", checkpoint, "--json")).stdout)
    loaded = SiglipModel.from_pretrained(checkpoint)
    assert info["parameters"]["total"] == loaded.num_parameters()
    assert (
        info["parameters"]["vision"] + info["parameters"]["text"] + 2 == loaded.num_parameters()
    )  # + scale, bias
    assert info["embedding_dims"] == loaded.config.text_config.projection_size
    device = default_device()
    assert info["inference"] == {
        "device": str(device),
        "precision": InferenceMode().resolve(device).precision,
    }
    assert {"config.json", "model.safetensors", "spiece.model", "preprocessor_config.json"} <= set(
        info["files"]
    )
    assert info["text"]["positions"] == loaded.config.text_config.max_position_embeddings


# --- bad input ----------------------------------------------------------------------------------------------
def test_unknown_model_offline_is_one_line_without_traceback(photos, tmp_path):
    directory, _ = photos
    done = siglip(
        "classify",
        directory,
        "--labels",
        "cat",
        "--model",
        "google/siglip-not-cached",
        env={"HF_HOME": str(tmp_path)},
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith(
        "siglip classify: error: 'google/siglip-not-cached' is not a local directory"
    )
    assert (
        "not in the Hugging Face cache" in done.stderr and "pass the path of a local directory" in done.stderr
    )

    typo = siglip("info", "siglip-tiny-fashon", env={"HF_HOME": str(tmp_path)})
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert "Models shipped with siglip:" in typo.stderr


def _user_error(capsys, *argv) -> str:
    """Run the command in process; it must fail with exit code 2 and one line on stderr, naming the problem."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_bad_input_gives_one_line_naming_it(checkpoint, photos, tmp_path, capsys, monkeypatch):
    directory, _ = photos
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.jpg").write_bytes((directory / "broken.jpg").read_bytes())

    line = _user_error(capsys, "classify", tmp_path / "missing.jpg", "--labels", "cat", "--model", checkpoint)
    assert line == f"siglip classify: error: no such file or folder: '{tmp_path / 'missing.jpg'}'"
    line = _user_error(
        capsys, "embed", tmp_path / "empty", "--out", tmp_path / "v.npy", "--model", checkpoint
    )
    assert line.startswith(f"siglip embed: error: folder '{tmp_path / 'empty'}' contains no image files")
    line = _user_error(capsys, "classify", directory, "--labels", "--model", checkpoint)
    assert line.startswith("siglip classify: error: the label list is empty")
    line = _user_error(
        capsys, "classify", tmp_path / "bad", "--labels", "cat", "--model", checkpoint, "--workers", "0"
    )
    assert line == "siglip classify: error: none of the 1 images could be read"
    line = _user_error(
        capsys, "index", tmp_path / "empty", "--index", tmp_path / "index", "--model", checkpoint
    )
    assert line == f"siglip index: error: no image files in {tmp_path / 'empty'}"
    line = _user_error(capsys, "search", "a cat", "--index", tmp_path / "nowhere")
    assert line.startswith(f"siglip search: error: no index at '{tmp_path / 'nowhere'}'")
    line = _user_error(capsys, "search", "--index", tmp_path / "nowhere")
    assert line == "siglip search: error: give a text to search for, or --image QUERY.jpg (one of the two)"
    line = _user_error(capsys, "eval", "zeroshot", "--data", tmp_path / "empty", "--model", checkpoint)
    assert line == f"siglip eval: error: {tmp_path / 'empty'} has no class sub-folders"
    line = _user_error(capsys, "eval", "retrieval", "--data", tmp_path / "pairs.csv", "--model", checkpoint)
    assert line.startswith(
        f"siglip eval: error: cannot read {tmp_path / 'pairs.csv'}: [Errno 2] No such file"
    )
    line = _user_error(capsys, "embed", directory, "--out", tmp_path / "v.csv", "--model", checkpoint)
    assert line == f"siglip embed: error: --out '{tmp_path / 'v.csv'}' must end with .parquet or .npy"
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    line = _user_error(capsys, "embed", directory, "--out", tmp_path / "v.parquet", "--model", checkpoint)
    assert (
        line
        == "siglip embed: error: writing Parquet needs the 'pyarrow' package: pip install 'siglip[parquet]'"
    )


# `main` running a command that forks a child (as a DataLoader's decoding workers are) and sends it SIGTERM,
# then is sent SIGTERM itself (as by `kill`, `timeout`, systemd or Kubernetes)
_TERMINATED_COMMAND = """
import argparse, os, signal, sys, time
from siglip.tools import cli

def run(args):
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    time.sleep(0.2)
    os.kill(child, signal.SIGTERM)
    _, status = os.waitpid(child, 0)
    print("child ended by signal", os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, flush=True)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
    finally:
        print("the command unwound", flush=True)

command = argparse.Namespace(command="fake", run=run)
cli.build_parser = lambda: argparse.Namespace(parse_args=lambda argv: command)
sys.exit(cli.main())
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks a child")
def test_sigterm_unwinds_the_command_and_a_forked_child_dies_as_before():
    """SIGTERM raises in the command's process (its `finally` blocks run; exit 143), while a child forked
    with the handler dies of SIGTERM as it would without it; in-process callers get the handler back."""
    import signal

    done = subprocess.run(
        [sys.executable, "-c", _TERMINATED_COMMAND], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 143, done.stderr
    assert done.stdout.splitlines() == [f"child ended by signal {int(signal.SIGTERM)}", "the command unwound"]
    assert done.stderr.strip() == "siglip fake: terminated"
    assert main(["info", BUNDLED]) == 0 and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
