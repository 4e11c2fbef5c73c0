"""Compiling a long-running embedder's towers without making it wait: what `siglip serve` does by default.

    embedder = Embedder.from_pretrained("siglip-tiny-fashion", precision="int8")
    job = BackgroundCompile(embedder)
    if job.why_not is None:          # else: why this embedder has no package to compile, in words
        job.start()                  # the embedder keeps answering with its eager towers meanwhile
    ...                              # once the packages are in, its towers are the compiled ones
    job.stop()

Compiled towers (`compiled.CompiledTower`) served the bundled model's requests 1.0-1.6x as fast as the eager
ones (BENCHMARKS.md; measured before eager int8 took oneDNN's int8 products), but their packages take 10-60 s
to compile the first time on a machine: a server that compiled before answering would keep its users waiting
that long, and one that compiled on its first request would time its first requests out. Instead a child
process, spawned at a lower CPU priority so that requests come first, loads the same checkpoint in the same
precision and compiles its towers into `compiled_cache()`; this process then loads the packages (about a
second; at once when an earlier run compiled them) and swaps each eager tower for its compiled one between two
model calls (a package in a cache this process may only read is loaded from there; what the cache cannot take
is compiled into this process's own folder). Until then, and for good if the compile fails, the eager towers
answer.
Vectors then move within the precision's bounds of fp32 (the compiled mode's numbers, not bit for bit the
eager mode's: BENCHMARKS.md); a compiled tower whose output on a probe batch is not the eager one's (another
checkpoint under the same name since this process loaded it) is refused. A text tower is kept eager when the
tokenizer gives an attention mask, which a compiled tower does not take.
Nothing is compiled where the packages would run no faster than the eager towers (`compiled.eager_as_fast`:
bf16 on a CPU with AMX and int8 on a CPU without VNNI, for models of a base tower's size and up), nor in
fp32, whose eager towers are transformers' bit for bit (its package only with `--compile`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import torch
from PIL import Image

from .cache_folder import PARENT_FOLDER, compiled_cache, writable_cache
from .compiled import CompiledTower, Package, missing_for_compile, no_unasked_package
from .embedder import Embedder

logger = logging.getLogger("siglip")
TOWERS = ("text_model", "vision_model")  # the towers of a two-tower model that may be packaged
STOP_WAIT_S = 30  # a stopped child's time to unwind before it is killed
SAME_TOWER_COSINE = 0.99  # a compiled tower's probe output against the eager one's: below, another model


class BackgroundCompile:
    """Compiles `embedder`'s towers in a child process while it keeps running them eagerly, then puts the
    compiled towers in its model (see the module doc). `on_done(state)` is told how it ended (`state`)."""

    def __init__(self, embedder: Embedder, on_done: Callable[[str], None] | None = None) -> None:
        self.embedder = embedder
        self.on_done = on_done
        self.state = "not started"  # then "compiling", and "compiled in N s", "failed: why" or "stopped"
        self._thread: threading.Thread | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # a stop and the child's start do not cross

    @functools.cached_property
    def why_not(self) -> str | None:
        """Why the embedder has nothing to compile in the background, in words (None: it has)."""
        mode, device = self.embedder.mode, self.embedder.device
        model = self.embedder.model
        if mode.compile is True or isinstance(model.vision_model, CompiledTower):
            return "its towers are compiled already"
        return no_unasked_package(model.config, mode.precision, device) or missing_for_compile(mode.precision)

    def start(self) -> None:
        """Start compiling (on a thread of this process, which waits for the child)."""
        if self.why_not is not None:
            raise RuntimeError(f"nothing to compile in the background: {self.why_not}")
        if self._thread is not None:
            raise RuntimeError("this background compile was started already")
        self.state = "compiling"
        self._thread = threading.Thread(target=self._run, name="siglip-compile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop a compile still running (its child is ended, leaving no half-written package) and wait."""
        with self._lock:
            self._stopping.set()
            if self._process is not None and self._process.is_alive():
                self._process.terminate()
        if self._process is not None:
            self._process.join(STOP_WAIT_S)
            if self._process.is_alive():  # stuck where SIGTERM does not reach Python
                self._process.kill()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        """The thread: the child's packages swapped in, and the state (and `on_done`) told how it ended."""
        started = time.monotonic()
        try:
            result = self._child_result()
            if self._stopping.is_set():
                state = "stopped"
            elif isinstance(result, str):
                state = f"failed: {result}"
            else:
                _swap_in(self.embedder, result)
                state = f"compiled in {time.monotonic() - started:.0f} s"
        except Exception as error:  # no child, or a package that does not load or match here: stay eager
            state = f"failed: {type(error).__name__}: {error}"
        self.state = state
        if state.startswith("failed"):
            logger.warning("the towers stay eager: compiling them %s", state)
        if self.on_done is not None:
            self.on_done(state)

    def _child_result(self) -> dict[str, Package] | str:
        """What the child sends back: the packages by tower, or why it failed (also when stopped)."""
        context = multiprocessing.get_context("spawn")  # torch's threads do not survive a fork
        receive, send = context.Pipe(duplex=False)
        embedder = self.embedder
        # the cache (a package already there is loaded even where the cache is read-only), and where to write
        # what it cannot take: the cache, or this process's own folder, which outlives the child (the child
        # warns if it compiles into it: here nothing may need compiling)
        child_args = (
            embedder.name,
            embedder.mode.precision,
            torch.get_num_threads(),
            str(compiled_cache()),
            str(writable_cache(warn=False)),
            send,
        )
        with self._lock:
            if self._stopping.is_set():
                return "stopped before it started"
            self._process = context.Process(target=_compile_in_child, args=child_args, name="siglip-compile")
            self._process.start()
        send.close()  # the child's end only: the parent's read ends when the child ends
        try:
            return receive.recv()
        except EOFError:
            pass
        finally:
            self._process.join()
        return f"the compiling process ended with status {self._process.exitcode}"


def compile_now(embedder: Embedder) -> dict[str, Package]:
    """Load, or compile, the packages of `embedder`'s compiled towers (made with `compile=True`) now rather
    than on their first call; the packages by tower attribute."""
    model = embedder.model
    if isinstance(model.text_model, CompiledTower):
        embedder.embed_texts(["a"])
    if isinstance(model.vision_model, CompiledTower):  # a fixed resolution: any image is resized to it
        embedder.embed_images([Image.new("RGB", (64, 64))])
    return {
        name: getattr(model, name).package
        for name in TOWERS
        if isinstance(getattr(model, name), CompiledTower)
    }


def _swap_in(embedder: Embedder, packages: dict[str, Package]) -> None:
    """Replace each tower of `embedder`'s model named in `packages` by its compiled package, all loaded and
    checked against the eager tower on a probe batch first (a text tower stays eager when the tokenizer gives
    an attention mask). A model call in flight finishes on the tower it started with (each call looks its
    tower up once)."""
    model, precision = embedder.model, embedder.mode.precision
    if "attention_mask" in embedder.processor.tokenizer.model_input_names:
        packages = {name: package for name, package in packages.items() if name != "text_model"}
    compiled = {}
    for name, package in packages.items():
        eager = getattr(model, name)
        tower = CompiledTower.from_package(eager, precision, package)
        probe = _probe(package)
        with torch.inference_mode():
            cosine = torch.cosine_similarity(
                tower(probe).pooler_output.float(), eager(probe).pooler_output.float()
            ).min()
        if cosine < SAME_TOWER_COSINE:
            raise RuntimeError(
                f"the compiled {name} is not this process's model (cosine {cosine:.3f} on a probe batch): was "
                f"'{embedder.name}' changed since it was loaded?"
            )
        compiled[name] = tower
    for name, tower in compiled.items():
        setattr(model, name, tower)


def _probe(package: Package) -> torch.Tensor:
    """Two inputs for a tower compiled as `package`: token ids 1 and 2, or pixels drawn from a fixed seed."""
    if package.dtype.is_floating_point:
        generator = torch.Generator().manual_seed(0)
        return torch.randn((2, *package.shape), generator=generator).to(package.dtype)
    return torch.arange(1, 3, dtype=package.dtype)[:, None].expand(2, *package.shape).contiguous()


def _compile_in_child(
    name: str,
    precision: str,
    threads: int,
    cache: str,
    folder: str,
    send: multiprocessing.connection.Connection,
) -> None:
    """The child of `BackgroundCompile`: the model `name` in `precision`, its towers' packages loaded from
    `cache` or compiled into it (into `folder` where the cache cannot be written) on `threads` threads (the
    parent's: the kernels are laid out for them), and sent back (or why not). It ends with its parent."""
    stopped = threading.Event()

    def stop(*_: object) -> None:  # unwinds: the half-written package is removed
        stopped.set()
        sys.exit(1)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole group: the parent stops the child
    parent = multiprocessing.parent_process()
    if parent is not None:
        watch = functools.partial(_end_with, parent)
        threading.Thread(target=watch, name="siglip-compile-parent", daemon=True).start()
    try:
        os.nice(10)  # the parent's requests come first
        torch.set_num_threads(threads)
        os.environ["SIGLIP_COMPILED_CACHE"] = cache
        os.environ[PARENT_FOLDER] = folder
        packages = compile_now(Embedder.from_pretrained(name, "cpu", precision=precision, compile=True))
    except Exception as error:
        if stopped.is_set():  # the stop's SystemExit, wrapped on its way up by code that caught it
            sys.exit(1)
        packages = f"{type(error).__name__}: {error}"
    with contextlib.suppress(OSError):  # a parent gone meanwhile
        send.send(packages)


def _end_with(parent: multiprocessing.process.BaseProcess) -> None:
    """Wait for `parent` to end, then end this process as a stop would (SIGTERM)."""
    multiprocessing.connection.wait([parent.sentinel])
    os.kill(os.getpid(), signal.SIGTERM)
