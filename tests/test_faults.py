"""Fault injection: `kill -9` at random points of `siglip index`, `siglip embed` and `siglip train`, then a
rerun whose result equals a clean run's; SIGTERM of `embed`, which unwinds, keeps its finished batches and
resumes; `kill -9` of `index` and `embed` while their decoding workers wait on
a full queue, then no process of the run is left; `kill -9` of `siglip convert`, then no half-written output and
a rerun that succeeds. The points are drawn from a fixed seed (the same on every run, so CI
is stable) over the length of a clean run, so kills land in start-up, work and writing alike.

After each kill the committed state must be consistent (every stored embedding equals the clean one, one
entry per file; every checkpoint equals the clean run's at that step); the next run resumes from it; the last
run completes and must equal the clean result (a trained model bit for bit). A full disk, a read-only index,
two concurrent runs and a damaged SQLite page are in test_hardening.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from _material import BUNDLED, write_photos
from siglip import SearchIndex, SiglipModel
from siglip.tools.search.index import RECORDS_FILE
from siglip.tools.search.store import VectorStore
from siglip.tools.training import latest_checkpoint

KILLS = 10  # per command: 20 in all for index and embed
CONVERT_KILLS = 3  # at random points; then one mid-write
TRAIN_KILLS = 4  # each train process spends most of its life starting up: a few kills cover its steps
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
TRAIN_ENV = {**ENV, "OMP_NUM_THREADS": "1"}  # one thread: the same summation order in every run
BATCH = 8  # pairs per training step


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    write_photos(root, corrupt=True)
    for i in range(20):
        Image.new("RGB", (40, 40), (5 * i, 255 - 5 * i, 90)).save(root / f"swatch-{i:02d}.png")
    return root


def _command(kind: str, collection: Path, target: Path) -> list[str]:
    out = ["--index", str(target)] if kind == "index" else ["--out", str(target)]
    return [sys.executable, "-m", "siglip", kind, str(collection), *out, "--model", BUNDLED,
            "--batch-size", "4", "--workers", "0", "--no-progress"]  # fmt: skip


def _vectors(kind: str, target: Path) -> dict[str, np.ndarray]:
    """path -> embedding of a finished output, or of what an interrupted run committed."""
    if kind == "index":  # the vectors live in vectors.faiss once synced, in the records until then
        with SearchIndex(target) as index:
            paths = index.store.paths_of(index.store.ids())
            return {path: index.entry(i)[1] for i, path in paths.items()}
    else:
        journal = target.with_name(target.name + ".partial")
        if target.exists():
            paths = json.loads(target.with_suffix(target.suffix + ".json").read_text())["paths"]
            return dict(zip(paths, np.load(target), strict=True))
        if not journal.exists():
            return {}
        store = VectorStore(journal)
    with store:
        paths = store.paths_of(store.ids())
        return {paths[int(i)]: v for ids, vs in store.vectors_from(0) for i, v in zip(ids, vs, strict=True)}


def _assert_consistent(partial: dict[str, np.ndarray], clean: dict[str, np.ndarray]) -> None:
    assert set(partial) <= set(clean)
    for path, vector in partial.items():
        np.testing.assert_allclose(vector, clean[path], atol=1e-5)


@pytest.mark.parametrize("kind", ["index", "embed"])
def test_kill_9_at_random_points_then_rerun_equals_a_clean_run(kind, collection, tmp_path):
    clean_target = tmp_path / ("clean.index" if kind == "index" else "clean.npy")
    start = time.monotonic()
    subprocess.run(
        _command(kind, collection, clean_target), env=ENV, check=True, capture_output=True, timeout=300
    )
    duration = time.monotonic() - start
    clean = _vectors(kind, clean_target)
    assert len(clean) == len(list(collection.glob("**/*.*"))) - 1  # all but broken.jpg

    target = tmp_path / ("killed.index" if kind == "index" else "killed.npy")
    rng = np.random.default_rng(16)
    for delay in rng.uniform(0.3 * duration, duration, KILLS):
        run = subprocess.Popen(_command(kind, collection, target), env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(delay)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
        # what a killed run may have committed: an index's records (a kill between making its folder and its
        # records leaves a folder that is not yet an index), or the .npy or its journal
        if kind == "index":
            committed = [target / RECORDS_FILE]
        else:
            committed = [target, target.with_name(target.name + ".partial")]
        if any(path.exists() for path in committed):
            _assert_consistent(_vectors(kind, target), clean)
    done = subprocess.run(
        _command(kind, collection, target), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    final = _vectors(kind, target)
    assert set(final) == set(clean)
    _assert_consistent(final, clean)
    if kind == "index":
        with SearchIndex(target) as index, SearchIndex(clean_target) as reference:
            assert [h.path for h in index.search_text("a red swatch", k=5)] == [
                h.path for h in reference.search_text("a red swatch", k=5)
            ]


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """Enough images for several batches of 64: one batch of decoded pixels is more than a pipe holds."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(320):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


def _alive_in_group(group: int) -> list[int]:
    """The processes of process group `group` that still run (zombies are dead)."""
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state, _, pgrp = f.read().rsplit(")", 1)[1].split()[:3]
        except OSError:  # ended meanwhile
            continue
        if int(pgrp) == group and state != "Z":
            alive.append(int(pid))
    return alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")
@pytest.mark.parametrize("kind", ["index", "embed"])
def test_kill_9_with_a_full_worker_queue_leaves_no_process_and_the_rerun_finishes(
    kind, many_images, tmp_path
):
    target = tmp_path / ("out.index" if kind == "index" else "out.npy")
    command = _command(kind, many_images, target)
    command[command.index("--workers") + 1] = "2"
    command[command.index("--batch-size") + 1] = "64"
    run = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(_alive_in_group(run.pid)) < 3:  # the command and its two workers
            assert run.poll() is None and time.monotonic() < deadline, "the workers never started"
            time.sleep(0.05)
        run.send_signal(signal.SIGSTOP)  # nothing reads the queue: the workers fill it and block
        time.sleep(2)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
        deadline = time.monotonic() + 15
        while _alive_in_group(run.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _alive_in_group(run.pid) == [], f"processes of the killed {kind} outlived it"
    finally:
        for pid in _alive_in_group(run.pid):
            os.kill(pid, signal.SIGKILL)
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(_vectors(kind, target)) == 320


# `siglip embed` sent SIGTERM (as `kill`, `timeout`, systemd or Kubernetes would) right after committing its
# second batch; an exit handler shows that the process unwound (Python's default for SIGTERM runs none)
_TERMINATED_EMBED = """
import atexit, os, signal, sys
from siglip.tools.cli import main
from siglip.tools.search.store import VectorStore

record, batches = VectorStore.record, []

def record_then_terminated(self, *args, **kwargs):
    result = record(self, *args, **kwargs)
    batches.append(len(args[0]))
    if len(batches) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return result

VectorStore.record = record_then_terminated
atexit.register(lambda: print("exit handlers ran after", sum(batches), "images", file=sys.stderr))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")
def test_sigterm_unwinds_embed_keeps_its_finished_batches_and_the_rerun_resumes(many_images, tmp_path):
    target = tmp_path / "out.npy"
    command = _command("embed", many_images, target)
    command[command.index("--workers") + 1] = "2"
    command[command.index("--batch-size") + 1] = "64"
    command[1:3] = ["-c", _TERMINATED_EMBED]  # `python -m siglip embed ...` -> the script, with `embed ...`
    run = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # fmt: skip
    try:
        _, stderr = run.communicate(timeout=300)
        deadline = time.monotonic() + 15
        while _alive_in_group(run.pid) and time.monotonic() < deadline:  # the decoding workers stopped too
            time.sleep(0.2)
        assert _alive_in_group(run.pid) == []
    finally:
        for pid in _alive_in_group(run.pid):
            os.kill(pid, signal.SIGKILL)
    assert run.returncode == 143, stderr  # not -15: the command ended itself
    assert "siglip embed: terminated" in stderr and "exit handlers ran after 128 images" in stderr
    assert not target.exists() and len(_vectors("embed", target)) == 128  # the journal: two batches
    done = subprocess.run(_command("embed", many_images, target), env=ENV, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(_vectors("embed", target)) == 320


@pytest.fixture(scope="module")
def open_clip_checkpoint(tmp_path_factory) -> Path:
    """An open_clip SigLIP checkpoint as open_clip's torch.save writes it (B/16 widths, 2 layers a tower)."""
    from siglip.core.convert import open_clip as open_clip_table
    from siglip.core.convert._rules import Tensors

    config = open_clip_table.arch("ViT-B-16-SigLIP").config(vision_depth=2, text_depth=2)
    config.text_config.vocab_size = 512
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in SiglipModel(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    ours = {name: torch.randn(shape, generator=generator) * 0.02 for name, shape in shapes.items()}
    path = tmp_path_factory.mktemp("open_clip") / "open_clip_pytorch_model.bin"
    torch.save(open_clip_table.siglip_to_open_clip(Tensors(ours, "ours"), config).tensors, path)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_kill_9_of_convert_leaves_no_half_written_output_and_the_rerun_succeeds(
    open_clip_checkpoint, tmp_path
):
    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "siglip", "convert", str(open_clip_checkpoint), "--to", str(out)]

    start = time.monotonic()
    subprocess.run(command(tmp_path / "clean"), env=ENV, check=True, capture_output=True, timeout=300)
    duration = time.monotonic() - start
    clean = _files(tmp_path / "clean")

    out = tmp_path / "killed" / "model"
    rng = np.random.default_rng(16)
    for delay in [*rng.uniform(0.3 * duration, duration, CONVERT_KILLS), None]:
        run = subprocess.Popen(command(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if delay is None:  # last, mid-write: as soon as a staging folder holds a file
            while run.poll() is None and not any((tmp_path / "killed").glob("**/.saving-*/*")):
                time.sleep(0.001)
            assert run.poll() is None, "the conversion ended before its writing was seen"
        else:
            time.sleep(delay)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
        if out.exists():  # all or nothing
            assert delay is not None and _files(out) == clean
            shutil.rmtree(out)  # the next kill has something to interrupt
    done = subprocess.run(command(out), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _files(out) == clean
    assert [p.name for p in (tmp_path / "killed").iterdir()] == ["model"]  # no staging left


@pytest.fixture(scope="module")
def classes(tmp_path_factory) -> Path:
    """Class folders of noisy colour patches: 4 classes x 6 images."""
    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(0)
    for name, rgb in {
        "red": (220, 30, 30),
        "green": (30, 200, 40),
        "blue": (30, 40, 220),
        "grey": (128,) * 3,
    }.items():
        (root / name).mkdir()
        for i in range(6):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (28, 28, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _train_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "siglip", "train", "--data", str(data), "--output-dir", str(out), "--model",
            BUNDLED, "--batch-size", str(BATCH), "--steps", "12", "--save-every", "2", "--keep-checkpoints", "6",
            "--lr", "1e-3", "--workers", "0", "--no-progress", "--log-every", "1", *extra]  # fmt: skip


def _assert_same_weights(directory: Path, reference: Path) -> None:
    weights, expected = load_file(directory / "model.safetensors"), load_file(reference / "model.safetensors")
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected), (
        f"{directory} differs from {reference}"
    )


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _kill_after_step(command: list[str], out: Path, step: int, delay: float) -> None:
    """Run `command` and kill -9 it `delay` seconds after the run logged `step` (at once if it had)."""
    run = subprocess.Popen(command, env=TRAIN_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "metrics.jsonl"
    while run.poll() is None and not (metrics.exists() and len(metrics.read_text().splitlines()) >= step):
        time.sleep(0.01)
    time.sleep(delay)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)


def test_kill_9_of_train_at_random_points_then_resume_equals_a_clean_run(classes, tmp_path):
    clean = tmp_path / "clean"
    subprocess.run(
        _train_command(classes, clean), env=TRAIN_ENV, check=True, capture_output=True, timeout=300
    )
    seconds_per_step = np.mean([BATCH / r["samples_per_s"] for r in _metrics(clean)])

    out = tmp_path / "killed"
    command = _train_command(classes, out, "--resume")
    rng = np.random.default_rng(16)
    # each point: a step of the run, then a fraction of a step (mid-step, or mid-checkpoint every second step)
    for step, fraction in zip(rng.integers(1, 12, TRAIN_KILLS), rng.uniform(0, 1, TRAIN_KILLS), strict=True):
        _kill_after_step(command, out, int(step), fraction * seconds_per_step)
        checkpoint = latest_checkpoint(out)
        if checkpoint is not None:  # what a killed run committed is what the clean run had at that step
            _assert_same_weights(checkpoint, clean / "checkpoints" / checkpoint.name)
    done = subprocess.run(command, env=TRAIN_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr  # the kills left checkpoints: the rerun continued one
    _assert_same_weights(out / "model", clean / "model")
    assert [(r["step"], r["loss"]) for r in _metrics(out)] == [
        (r["step"], r["loss"]) for r in _metrics(clean)
    ]
