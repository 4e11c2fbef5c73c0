"""Compiling a long-running embedder's towers in the background (`siglip serve`'s default): the eager towers
answer meanwhile, the compiled ones are then the `--compile` mode's, a stop leaves nothing half-written, a
failure keeps the eager towers; and the real server does it by default, `--compile` before its first request."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from _material import BUNDLED, write_photos
from _serving import start_server
from siglip import Embedder
from siglip.tools.embeddings import background_compile, cache_folder
from siglip.tools.embeddings.background_compile import BackgroundCompile, _swap_in, compile_now
from siglip.tools.embeddings.compiled import CompiledTower

TEXTS = ["a red dress", "a pair of sneakers", "an ankle boot in the snow"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One package cache for the file (the server test loads what the first test compiled when both run
    torch on as many threads)."""
    return tmp_path_factory.mktemp("compiled")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    return write_photos(tmp_path_factory.mktemp("photos"), corrupt=False)[:4]


def _towers(embedder: Embedder) -> tuple[bool, bool]:
    model = embedder.model
    return isinstance(model.text_model, CompiledTower), isinstance(model.vision_model, CompiledTower)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_eager_towers_answer_until_the_compiled_ones_are_swapped_in(cache, photos, tmp_path, monkeypatch):
    embedder = Embedder.from_pretrained(BUNDLED, "cpu", precision="bf16")
    eager_texts, eager_images = embedder.embed_texts(TEXTS), embedder.embed_images(photos)

    # stopped while it compiles: the child unwinds (its SIGTERM handler), the eager towers stay, and no
    # package or half of one is left
    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(tmp_path))
    stopped = BackgroundCompile(embedder)
    stopped.start()
    deadline = time.monotonic() + 300
    while not any(tmp_path.glob("*.lock")):  # the lock of the first package: its compile has begun
        assert time.monotonic() < deadline and stopped.state == "compiling", stopped.state
        time.sleep(0.05)
    stopped.stop()
    assert stopped.state == "stopped" and stopped._process.exitcode == 1
    assert _towers(embedder) == (False, False)
    assert not [
        p.name for p in tmp_path.iterdir() if p.suffix != ".lock" and p.name != "kernels"
    ]  # a kernel built

    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(cache))
    told: list[str] = []
    job = BackgroundCompile(embedder, on_done=told.append)
    assert job.why_not is None
    job.start()
    answered, deadline = [], time.monotonic() + 600
    while job.state == "compiling":  # the model answers meanwhile (eager vectors; once swapped, the new)
        answered.append(embedder.embed_texts(TEXTS[:1])[0])
        assert time.monotonic() < deadline, "not compiled in 600 s"
        time.sleep(0.01)  # leave the (lower priority) child some CPU
    job.stop()
    assert job.state.startswith("compiled in ") and told == [job.state]
    assert len(answered) > 10
    assert _cosines(np.array(answered), eager_texts[:1]).min() > 0.999
    assert _towers(embedder) == (True, True)

    # the swapped-in towers are the --compile mode's, bit for bit, within the bf16 bound of the eager ones
    texts, images = embedder.embed_texts(TEXTS), embedder.embed_images(photos)
    reference = Embedder.from_pretrained(BUNDLED, "cpu", precision="bf16", compile=True)
    np.testing.assert_array_equal(texts, reference.embed_texts(TEXTS))
    np.testing.assert_array_equal(images, reference.embed_images(photos))
    assert _cosines(texts, eager_texts).min() > 0.999 and _cosines(images, eager_images).min() > 0.999

    # packages of other weights (the checkpoint changed under the same name) are refused, all or nothing;
    # a tokenizer that gives an attention mask keeps its text tower eager (a compiled one takes no mask)
    packages = compile_now(reference)
    other = Embedder.from_pretrained(BUNDLED, "cpu", precision="bf16")
    with torch.no_grad():
        other.model.vision_model.post_layernorm.weight.mul_(-1)
    with pytest.raises(RuntimeError, match="the compiled vision_model is not this process's model"):
        _swap_in(other, packages)
    assert _towers(other) == (False, False)
    masked = Embedder.from_pretrained(BUNDLED, "cpu", precision="bf16")
    masked.processor.tokenizer.model_input_names = ["input_ids", "attention_mask"]
    _swap_in(masked, packages)
    assert _towers(masked) == (False, True)


def test_what_is_not_compiled_in_the_background_says_why(monkeypatch):
    fp32 = Embedder.from_pretrained(BUNDLED, "cpu", precision="fp32")
    assert BackgroundCompile(fp32).why_not == (
        "fp32 computes transformers' products bit for bit, or --compile"
    )
    with pytest.raises(RuntimeError, match="nothing to compile in the background: fp32 computes"):
        BackgroundCompile(fp32).start()
    compiled = Embedder.from_pretrained(BUNDLED, "cpu", precision="bf16", compile=True)
    assert "compiled already" in BackgroundCompile(compiled).why_not
    monkeypatch.setattr(background_compile, "missing_for_compile", lambda precision: "no C++ compiler")
    assert BackgroundCompile(Embedder.from_pretrained(BUNDLED, "cpu", precision="bf16")).why_not == (
        "no C++ compiler"
    )
    # bf16 with AMX: a model of a base tower's size stays eager (its packages are no faster), the tiny one not
    bf16 = Embedder.from_pretrained(BUNDLED, "cpu", precision="bf16")
    monkeypatch.setattr(background_compile, "missing_for_compile", lambda precision: None)
    monkeypatch.delenv("SIGLIP_BF16_UNITS", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert BackgroundCompile(bf16).why_not is None
    bf16.model.config.vision_config.hidden_size *= 16  # 16x wider: 256x the linear work per image
    bf16.model.config.vision_config.intermediate_size *= 16
    assert "bf16 on a CPU with AMX" in BackgroundCompile(bf16).why_not


def test_a_failed_background_compile_keeps_the_eager_towers(monkeypatch, tmp_path):
    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(tmp_path))
    embedder = Embedder.from_pretrained(BUNDLED, "cpu", precision="bf16")
    before = embedder.embed_texts(TEXTS)
    embedder.name = str(tmp_path / "gone")  # the child cannot load the model again
    job = BackgroundCompile(embedder)
    job.start()
    while job.state == "compiling":
        time.sleep(0.1)
    assert job.state.startswith("failed: ") and "gone" in job.state
    assert _towers(embedder) == (False, False)
    np.testing.assert_array_equal(embedder.embed_texts(TEXTS), before)


def test_the_server_compiles_in_the_background_by_default_and_before_serving_with_compile(
    cache, photos, monkeypatch
):
    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(cache))
    reference = Embedder.from_pretrained(BUNDLED, "cpu", precision="bf16", compile=True)
    for options in ((), ("--compile",)):
        process, url = start_server(None, "--precision", "bf16", *options)
        try:
            with httpx.Client(base_url=url, timeout=60) as http:
                deadline = time.monotonic() + 600
                while http.get("/v1/info").json()["compiled"] != {"text": True, "image": True}:
                    assert not options, "--compile loads the compiled towers before it is ready"
                    assert time.monotonic() < deadline, "the towers were not compiled in 600 s"
                    time.sleep(0.5)
                texts = http.post("/v1/embed/text", json={"texts": TEXTS}).json()["embeddings"]
                images = [
                    http.post("/v1/embed/image", files={"file": ("p", path.read_bytes())}).json()[
                        "embeddings"
                    ][0]
                    for path in photos
                ]
        finally:
            process.terminate()
            output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
        np.testing.assert_allclose(texts, reference.embed_texts(TEXTS), atol=2e-3)
        np.testing.assert_allclose(images, reference.embed_images(photos), atol=2e-3)
        expected = "compiled towers loaded" if options else "siglip serve: towers compiled in "
        assert expected in output, output


def test_the_child_reads_a_read_only_cache_and_writes_into_its_parents_folder(tmp_path, monkeypatch):
    # a cache this process may only read (a container image's layer): the child is told the cache, to load the
    # packages already there, and this process's own folder, which outlives it, for what it compiles

    own_folder = cache_folder.process_folder.__wrapped__  # unmemoised: read afresh below
    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(tmp_path / "read-only"))
    monkeypatch.setattr(cache_folder, "write_error", lambda folder: PermissionError(13, "read-only"))
    monkeypatch.setattr(cache_folder, "process_folder", lambda: tmp_path / "parent")
    told: list[tuple] = []

    class Child:  # the spawned child, recorded instead of started
        exitcode = 0

        def __init__(self, target, args, name):
            told.append(args)

        def start(self):
            told[-1][-1].send({})  # no packages: nothing to swap in

        def join(self, timeout=None):
            pass

    class Spawn:
        Pipe = staticmethod(multiprocessing.Pipe)
        Process = Child

    monkeypatch.setattr(background_compile.multiprocessing, "get_context", lambda method: Spawn)
    job = BackgroundCompile(Embedder.from_pretrained(BUNDLED, "cpu", precision="bf16"))
    assert job._child_result() == {}
    cache, folder = told[0][3:5]
    assert (cache, folder) == (str(tmp_path / "read-only"), str(tmp_path / "parent"))

    # in the child (its start-up stubbed), whatever cannot go into the cache goes into the parent's folder
    # (never one of its own, removed with it)
    monkeypatch.setattr(cache_folder, "process_folder", own_folder)
    for name in ("SIGLIP_COMPILED_CACHE", cache_folder.PARENT_FOLDER):
        monkeypatch.setenv(name, "")  # restored afterwards, whatever the child's code sets
    monkeypatch.setattr(background_compile.signal, "signal", lambda *args: None)
    monkeypatch.setattr(background_compile.os, "nice", lambda increment: 0)
    monkeypatch.setattr(background_compile.multiprocessing, "parent_process", lambda: None)
    monkeypatch.setattr(background_compile.Embedder, "from_pretrained", lambda *args, **kwargs: None)
    monkeypatch.setattr(
        background_compile, "compile_now", lambda embedder: {"to": cache_folder.writable_cache()}
    )
    receive, send = multiprocessing.Pipe(duplex=False)
    background_compile._compile_in_child(BUNDLED, "bf16", torch.get_num_threads(), cache, folder, send)
    assert receive.recv() == {"to": Path(folder)}
