"""Towers compiled ahead of time for the CPU, kept as packages in a cache: the `--compile` of fp32, bf16, fp16
and int8, and int8-static (always compiled).

A fixed-resolution vision tower or a text tower is traced by `torch.export` with a dynamic batch size,
quantised by torchao's PT2E flow for int8 (`siglip.tools.embeddings.int8.pt2e_int8`), and compiled by inductor
(AOTInductor) with freezing: the weights become constants packed for oneDNN, with the bias and the activation
fused into each product (for int8 also the activations' quantisation and the residual adds). The package is
kept in the compiled cache (`cache_folder.compiled_cache()`), named by everything the compiled code depends on
(for int8-static also its calibration inputs, `siglip.tools.embeddings.calibration`): the first call on a
machine compiles (25-60 s per base tower on 2 cores), later processes load it in about a second.

The package runs through its C interface (`PackageRunner`), which lets other Python threads run meanwhile:
torch's own loader holds the GIL for the whole forward, so a compiled tower used to stop a server's event loop
and its decoding threads for as long as each batch took.

Why a package of our own rather than `torch.compile`: inductor's on-disk cache does not cover frozen graphs,
so every process would compile again; and `torch.compile(options={"freezing": True})` does not freeze at all
in torch 2.13 (dynamo has lifted the weights as inputs before the option is read), which left earlier
versions' compiled bf16 at 1.04x eager instead of the 1.2x measured here (BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import glob
import hashlib
import inspect
import logging
import math
import os
import platform
import re
import secrets
import shutil
import threading
import time
import warnings
import weakref
import zipfile
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ...core.config import PretrainedConfig
from ...core.outputs import BaseModelOutputWithPooling
from ...core.staging import staged_file
from ...errors import UsageError
from . import cache_folder, fused_attention, native
from .attention import FusedAttention, use_bf16_mode_attention, use_float32_package_attention
from .calibration import Calibration
from .groups import group_count
from .int8 import PACKAGE_ROWS_PER_CALL, prepare_for_int8, pt2e_int8, torchao_version, use_eager_int8
from .precision import INT8_PRECISIONS, cpu_units, has_amx, isa_caps

logger = logging.getLogger("siglip")
# the precisions whose --compile on the CPU makes a package (int8-static: always)
PACKAGED = ("fp32", "bf16", "fp16", "int8", "int8-static")
# ... of which a job may compile or load a package unasked (`compile_pays`, `CACHED`, a server's background
# compile). Not fp32: its eager towers compute transformers' products bit for bit, its package oneDNN's on
# packed weights (max difference ~4e-6 on a base image tower; 2.1-3.2x eager on a Zen 5, whose fp32 products
# MKL runs with AVX2 only: BENCHMARKS.md), which only `--compile` asks for.
PACKAGED_UNASKED = ("bf16", "fp16", "int8", "int8-static")
# A job's linear work (FLOP) from which compiling the image tower pays back, on a CPU with AMX and, by precision,
# on one without. With AMX the base image tower (33 GFLOP an image) ran 8.7 images/s in eager int8 and 14.0
# compiled, after a 45 s compile (2 threads, BENCHMARKS.md): 45 s / (1/8.7 - 1/14.0 s an image) = ~1,030
# images (bf16 is not compiled there: `eager_as_fast`). Without AMX (a 2-core Zen 5 with AVX-512 BF16 and VNNI),
# the packages gain less over eager towers that already run the linears on packed weights and the attention by
# siglip's fused kernel: the 192-photo job ran 32.0 images/s in eager int8 (`int8.Int8Linear`) and 34.1 on the
# package, after a 28 s compile: ~14,000 images; bf16's package ran 1.04-1.05x eager bf16's 18.9, after 27 s:
# ~12,000 (measured before the fused kernel, which both use).
COMPILE_PAYS_FROM_FLOP = 1_000 * 33.3e9
COMPILE_PAYS_WITHOUT_AMX_FROM_FLOP = {
    "int8": 14_000 * 33.3e9,
    "bf16": 12_000 * 33.3e9,
    "fp16": 12_000 * 33.3e9,
}
# With AMX, eager bf16 runs its products on the tiles and, through oneDNN's fused linears (`onednn`), its bias,
# GELU and residual adds with them: there the base towers' bf16 packages ran 0.64-1.09x the eager towers at
# batches 8-32 and the embedding job 0.92x (2-core Xeon, BENCHMARKS.md). Only a tower small enough for Python's
# per-layer overhead to weigh gains (the bundled tiny model, 51 MFLOP an image, served 1.1-1.2x compiled);
# the line is drawn between the two models measured, in a tower's linear work per item. Without VNNI, int8's
# packages are no faster either: held to AVX2, the base image tower ran 1.32-1.38x transformers fp32 compiled
# and 1.26-1.51x eager, and a 1,100-image job compiled by default 1.00x the transformers loop where eager ran
# 1.43x; the same line is kept for it.
EAGER_AS_FAST_FROM_FLOP = 1e9
CACHED = "cached"  # compile: load the packages an earlier process compiled, else stay eager

# The compiled cache's size limit in gigabytes (`cache_limit`), and the variable that sets another
CACHE_GB = 10.0
CACHE_GB_ENV = "SIGLIP_COMPILED_CACHE_GB"
# The files the cache holds, by name: a package (`_package_path`), its lock, its extracted libraries
# (`_extract`), the marks of the processes that have it loaded (`_hold`), and the partial files of a package or
# library being written (`staged_file`, mkstemp's 8 random characters)
_STEM = rf"(?:{'|'.join(map(re.escape, PACKAGED))})-\w+-[0-9a-f]{{32}}"
_CACHE_FILE = re.compile(
    rf"(?P<stem>{_STEM})(?:(?P<package>\.pt2)|(?P<lock>\.lock)|\.\d+-[0-9a-f]{{8}}\.held|-[0-9a-f]{{8}}\.so)"
    rf"|\.(?P<partial_of>{_STEM})(?:-[0-9a-f]{{8}})?-[a-z0-9_]{{8}}\.(?:pt2|so)"
)
_held: dict[Path, object] = {}  # this process's loaded packages: the locks of their marks (`_hold`)
_MARK_TOKEN = secrets.token_hex(4)  # in the marks' names beside the pid: processes of other containers or
# hosts sharing the cache can have the same pid


class _Outputs(nn.Module):
    """A tower's tensors as a tuple (`torch.export` traces tensors, not output dataclasses)."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.tower(x)
        return tuple(t for t in (out.last_hidden_state, out.pooler_output) if t is not None)


class Package(NamedTuple):
    """A compiled tower's package file and the input it was compiled for: its shape past the batch
    dimension and its dtype."""

    path: Path
    shape: tuple[int, ...]
    dtype: torch.dtype


class CompiledTower(nn.Module):
    """A fixed-resolution vision tower or a text tower compiled ahead of time in `precision` (a word of
    `PACKAGED`) on its first call.

    Called as the tower it replaces with its main input only (pixels, or token ids padded to the model's
    length); it returns `last_hidden_state` and `pooler_output`. Only the batch size may change between calls
    (the first call's other dimensions are fixed in the package); an fp32 tower given more (an attention mask,
    interpolated positions) runs its eager tower, others refuse. The first call loads the tower's package
    from the compiled cache, or exports, (for int8) quantises and compiles it there; `package` says which
    once it is loaded. An int8-static tower is calibrated on `calibration` (inputs of the tower, as `x`, kept
    until the package is loaded), which name its package too.
    """

    def __init__(self, tower: nn.Module, precision: str, calibration: torch.Tensor | None = None) -> None:
        super().__init__()
        if precision not in PACKAGED:
            raise ValueError(f"precision must be one of {PACKAGED} to compile a package, got {precision!r}")
        if (precision == "int8-static") != (calibration is not None):
            raise ValueError("calibration inputs are for an int8-static tower, which needs them")
        self.tower = tower
        self.precision = precision
        self.calibration = calibration
        self.package: Package | None = None
        self._compiled: object | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_package(cls, tower: nn.Module, precision: str, package: Package) -> CompiledTower:
        """`tower` as the package compiled from it in `precision` (by another process: see
        `siglip.tools.embeddings.background_compile`), loaded now."""
        from filelock import FileLock

        compiled = cls(tower, precision)
        lock = FileLock(package.path.with_suffix(".lock"))
        try:  # under its lock, as `_load_or_compile` loads: no prune removes it before it is marked loaded
            lock.acquire()
        except OSError:  # a folder this process cannot write: nor can its user's prunes
            lock = None
        try:
            compiled._compiled, compiled.package = _load_package(package.path), package
        finally:
            if lock is not None:
                lock.release()
        return compiled

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> BaseModelOutputWithPooling:
        if any(a is not None and a is not False for a in (*args, *kwargs.values())):
            if self.precision == "fp32":  # its tower is the float32 one as loaded: transformers' numbers
                return self.tower(x, *args, **kwargs)
            # int8-static has no eager towers: int8 is the one that takes what the package does not
            instead = "int8" if self.precision == "int8-static" else self.precision
            raise UsageError(
                f"the compiled {self.precision} mode runs a tower on its pixels or token ids only (no attention "
                f"mask, attentions, hidden states or interpolated positions); use --precision {instead} "
                "without --compile"
            )
        if not len(x):
            raise UsageError(f"the compiled {self.precision} tower was given an empty batch")
        x = x.contiguous()  # the package reads its input as laid out at compile time, unchecked
        # export cannot trace under inference_mode (which the embedders use): no_grad is enough
        with torch.inference_mode(False), torch.no_grad():
            with self._lock:
                if self._compiled is None:
                    self._compiled, path = _load_or_compile(self.tower, x, self.precision, self.calibration)
                    self.package = Package(path, tuple(x.shape[1:]), x.dtype)
                    self.calibration = None  # in the package now: its inputs need not stay in memory
            _, shape, dtype = self.package
            if (tuple(x.shape[1:]), x.dtype) != (shape, dtype):
                dims = ", ".join(map(str, shape))
                raise UsageError(
                    f"the compiled {self.precision} tower was compiled for {dtype} inputs of shape (batch, "
                    f"{dims}); got {x.dtype} {tuple(x.shape)}"
                )
            outputs = self._run(x)
        return BaseModelOutputWithPooling(outputs[0], outputs[1] if len(outputs) > 1 else None)

    def _run(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The package's outputs for `x`; an int8 package's on groups of at most `PACKAGE_ROWS_PER_CALL`
        tokens' items, concatenated."""
        if self.precision not in INT8_PRECISIONS:
            return self._compiled(x)
        if x.dim() == 2:  # token ids
            tokens = x.shape[1]
        else:  # pixels of a fixed-resolution tower: a token per patch
            tokens = math.prod(side // self.tower.config.patch_size for side in x.shape[-2:])
        groups = group_count(len(x), tokens, PACKAGE_ROWS_PER_CALL)
        if groups == 1:
            return self._compiled(x)
        parts = [self._compiled(part) for part in x.tensor_split(groups)]
        return [torch.cat(each) for each in zip(*parts, strict=True)]


class PackageRunner:
    """The forward of an AOTInductor package on the CPU, called through the C interface of its compiled model
    (`AOTInductorModelContainerRun`) by ctypes, which releases the GIL for the call. torch's loader
    (`aoti_load_package`) holds it throughout: each batch of a compiled tower stopped every other Python thread
    of the process (a server's event loop, the decoding threads) for as long as it ran (BENCHMARKS.md).

    The package's library is extracted beside it (`<package stem>-<crc>.so`; into a folder of this process's
    own where the package's folder cannot be written) and stays there: the dynamic loader knows a library by
    its file, so a file deleted once loaded could be reused by the next package's library, which would then
    get the first one's code; and a library with over 2 GB of weights reads them from its own file when it
    starts. Packages whose weights are kept outside their library are run by torch's loader instead. Calls
    from several threads take turns on the one compiled model.
    """

    def __init__(self, package: Path) -> None:
        from torch._C import _aoti

        self._steal = _aoti.alloc_tensors_by_stealing_from_void_ptrs
        self._handles = _aoti.unsafe_alloc_void_ptrs_from_tensors
        self._package = package
        with zipfile.ZipFile(package) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            libraries = [n for n in names if "/data/aotinductor/" in n and n.endswith(".so")]
            external = [n for n in names if "/data/weights/" in n or n.endswith((".bin", ".o"))]
            if len(libraries) != 1 or external:
                raise _NotSelfContained(f"{package} is not one library with its weights inside")
            library = self._library = _declared(_opened(_extracted(archive, libraries[0], package)))
        handle, count = ctypes.c_void_p(), ctypes.c_size_t()
        self._check(library.AOTInductorModelContainerCreateWithDevice(ctypes.byref(handle), 1, b"cpu", None))
        self._container = handle
        weakref.finalize(self, library.AOTInductorModelContainerDelete, handle)
        self._check(library.AOTInductorModelContainerGetNumInputs(handle, ctypes.byref(count)))
        self._inputs = count.value
        self._check(library.AOTInductorModelContainerGetNumOutputs(handle, ctypes.byref(count)))
        self._outputs = count.value

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        if len(inputs) != self._inputs:  # checked here: the C call would return before taking the handles
            raise TypeError(
                f"the compiled package {self._package} takes {self._inputs} tensors, not {len(inputs)}"
            )
        handles = (ctypes.c_void_p * len(inputs))(*map(_pointer, self._handles(list(inputs))))
        results = (ctypes.c_void_p * self._outputs)()
        self._check(
            self._library.AOTInductorModelContainerRun(  # takes the input handles, gives the outputs'
                self._container, handles, len(inputs), results, self._outputs, None, None
            )
        )
        return self._steal([_capsule(pointer) for pointer in results])

    def _check(self, error: int) -> None:
        if error:
            message = ctypes.c_char_p()
            self._library.AOTInductorGetLastError(ctypes.byref(message))
            why = (message.value or b"no message").decode(errors="replace")
            raise RuntimeError(f"the compiled package {self._package} failed: {why}")


def _opened(library: Path) -> ctypes.CDLL:
    """A package's `library` loaded; one that calls siglip's fused attention kernel (its C shim) finds it
    loaded first, or says why it is not available here."""
    try:
        return ctypes.CDLL(str(library))
    except OSError as error:
        if fused_attention.SHIM not in str(error):
            raise
        why = fused_attention.why_not()  # loads the kernel's library, its symbols global, where it runs
        if why is not None:
            raise RuntimeError(
                f"{library} calls siglip's fused attention kernel, not used here: {why}"
            ) from error
        return ctypes.CDLL(str(library))


def _extracted(archive: zipfile.ZipFile, name: str, package: Path) -> Path:
    """The library `name` of `package`'s `archive` as a file that outlives the process: beside the package,
    named by its checksum, or in a folder of this process's (`cache_folder.process_folder()`) where the
    package's folder cannot be written."""
    info = archive.getinfo(name)
    try:
        return _extract(archive, info, package.parent, package.stem)
    except OSError as error:
        logger.debug("extracting the library of %s for this process only: %s", package, error)
        return _extract(archive, info, cache_folder.process_folder(), package.stem)


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, folder: Path, stem: str) -> Path:
    """`info` of `archive` as `folder/<stem>-<crc>.so`, written unless already there; the other extractions
    of the package `stem` (its earlier versions) are removed."""
    target = folder / f"{stem}-{info.CRC:08x}.so"
    if target.is_file() and target.stat().st_size == info.file_size:
        return target
    with staged_file(target) as partial, partial.open("wb") as out, archive.open(info) as source:
        shutil.copyfileobj(source, out, 1 << 20)
    for stale in folder.glob(f"{glob.escape(stem)}-*.so"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def _declared(library: ctypes.CDLL) -> ctypes.CDLL:
    """`library` with the argument types of the AOTInductor model-container functions this module calls
    (`torch/csrc/inductor/aoti_runtime/interface.h`; each returns 0 on success)."""
    pointer, size = ctypes.c_void_p, ctypes.c_size_t
    signatures = {
        "AOTInductorModelContainerCreateWithDevice": [
            ctypes.POINTER(pointer),
            size,
            ctypes.c_char_p,
            ctypes.c_char_p,
        ],
        "AOTInductorModelContainerGetNumInputs": [pointer, ctypes.POINTER(size)],
        "AOTInductorModelContainerGetNumOutputs": [pointer, ctypes.POINTER(size)],
        "AOTInductorModelContainerRun": [
            pointer,
            ctypes.POINTER(pointer),
            size,
            ctypes.POINTER(pointer),
            size,
            pointer,
            pointer,
        ],
        "AOTInductorModelContainerDelete": [pointer],
        "AOTInductorGetLastError": [ctypes.POINTER(ctypes.c_char_p)],
    }
    for name, arguments in signatures.items():
        function = getattr(library, name)
        function.argtypes, function.restype = arguments, ctypes.c_int32
    return library


class _NotSelfContained(Exception):
    """A package `PackageRunner` does not run (torch's loader does)."""


_GetPointer = ctypes.pythonapi.PyCapsule_GetPointer  # torch hands the tensor handles over as capsules
_GetPointer.restype, _GetPointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
_NewCapsule = ctypes.pythonapi.PyCapsule_New
_NewCapsule.restype, _NewCapsule.argtypes = (
    ctypes.py_object,
    [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p],
)


def _pointer(capsule: object) -> int:
    return _GetPointer(capsule, None)


def _capsule(pointer: int | None) -> object:
    return _NewCapsule(pointer, None, None)


def _load_package(path: Path) -> object:
    """A loaded package: `PackageRunner` where it can run it, else torch's loader. The package is marked as
    loaded now (its time of modification, where its folder lets this process: `prune_cache` removes those
    loaded least recently first) and held for as long as this process lives (`_hold`)."""
    with contextlib.suppress(OSError):
        os.utime(path)
    _hold(path)
    try:
        return PackageRunner(path)
    except _NotSelfContained:
        from torch._inductor import aoti_load_package  # not at import: it loads torch._dynamo

        fused_attention.why_not()  # the kernel's library loaded first where it runs: the package may call it
        return aoti_load_package(str(path))


def _hold(package: Path) -> None:
    """Mark `package` as loaded by this process until it exits: a file beside it, `<stem>.<pid>-<token>.held`,
    locked meanwhile (the operating system lets the lock go with the process), so that no `prune_cache`
    removes the package while it is loaded (on Linux a loaded library outlives its file, but a restarted
    server would compile again). Nothing is marked where the folder cannot be written (a read-only cache:
    no process of this user prunes it either)."""
    from filelock import FileLock, Timeout

    if package in _held:
        return
    mark = FileLock(package.with_name(f"{package.stem}.{os.getpid()}-{_MARK_TOKEN}.held"), timeout=0)
    try:
        mark.acquire()
    except (Timeout, OSError):
        return
    _held[package] = mark
    _live_marks(package)  # the marks of the processes that loaded it before and are gone, removed


def _live_marks(package: Path) -> int:
    """How many processes have `package` loaded (`_hold`); the marks of processes gone are removed."""
    from filelock import FileLock, Timeout

    live = 0
    for mark in package.parent.glob(f"{glob.escape(package.stem)}.*.held"):
        try:
            with FileLock(mark, timeout=0):
                mark.unlink(missing_ok=True)
        except (Timeout, OSError):  # held (this process's own too), or not this user's to check: in use
            live += 1
    return live


def compile_towers(model: nn.Module, precision: str, calibration: Calibration | None = None) -> None:
    """Replace the text tower and the fixed-resolution vision tower of a two-tower `model` (on the CPU, its
    weights already in `precision`'s dtype) by `CompiledTower`s, in place; each compiles on its first call.
    Their float modules are first changed as their packages are made of (`_prepare_for_package`). For
    int8-static, each tower with inputs of its kind in `calibration` is calibrated on them; a tower without
    runs int8 with per-call scales. A NaFlex vision tower, whose inputs carry a patch mask and sizes, is not
    packaged: int8 quantises it eagerly (`use_eager_int8`, first, so that its attention takes the eager
    kernel), floats run it through `torch.compile` with torch's SDPA kernel (its sequences of up to a
    thousand patches)."""
    from ...core.auto import is_naflex

    naflex, int8 = is_naflex(model), precision in INT8_PRECISIONS
    cache_limit()  # a bad $SIGLIP_COMPILED_CACHE_GB stops the job now rather than at its first batch
    if precision == "int8-static" and calibration is None:
        raise UsageError(
            "precision 'int8-static' needs calibration inputs: --calibration with images (and .txt files of "
            "texts) like those to embed"
        )
    if naflex and int8:
        use_eager_int8(model.vision_model)
    _prepare_for_package(model.text_model if naflex else model, precision)

    def compiled(tower: nn.Module, inputs: torch.Tensor | None) -> CompiledTower:
        if precision != "int8-static" or inputs is None:
            return CompiledTower(tower, "int8" if int8 else precision)
        return CompiledTower(tower, precision, inputs)

    model.text_model = compiled(model.text_model, calibration and calibration.input_ids)
    if not naflex:
        model.vision_model = compiled(model.vision_model, calibration and calibration.pixel_values)
    elif not int8:
        model.vision_model.compile(dynamic=True)


def _prepare_for_package(model: nn.Module, precision: str) -> None:
    """The float modules of `model` (a two-tower model or a tower) changed, in place, as the packages of its
    towers in `precision` are made of: for int8 as eager int8 changes them (`int8.prepare_for_int8`), for
    bf16 the attention kernel of this CPU (`attention.use_bf16_mode_attention`), for fp32 the fused kernel in
    float32 where it runs (`attention.use_float32_package_attention`)."""
    if precision in INT8_PRECISIONS:
        prepare_for_int8(model, compiled=True)
    elif precision == "bf16":
        use_bf16_mode_attention(model, compiled=True)
    elif precision == "fp32":
        use_float32_package_attention(model)


def image_package_cached(model: nn.Module, precision: str) -> bool:
    """Whether the package `compile_towers` would load for the fixed-resolution vision tower of `model` (on
    the CPU, its weights in `precision`'s dtype, as its pixels will be) is in the cache already, so that
    compiling costs only its loading (about a second). Checked on a copy of the tower's modules sharing its
    weights (the tower itself stays as it is): the package's name covers the prepared tower's weights, as a
    loading tower's does. NaFlex vision towers have no package: False."""
    from ...core.auto import is_naflex

    tower, cache = model.vision_model, cache_folder.compiled_cache()
    # a cache with no package of this tower's class and precision is answered without naming the package
    # (hashing the weights)
    if is_naflex(model) or not any(cache.glob(_package_prefix(tower, precision) + "*.pt2")):
        return False
    shared = {id(tensor): tensor for tensor in (*tower.parameters(), *tower.buffers())}
    probe = copy.deepcopy(tower, memo=shared)
    _prepare_for_package(probe, precision)
    config = tower.config
    example = torch.empty(1, config.num_channels, config.image_size, config.image_size, dtype=model.dtype)
    return (cache / _package_path(probe, example, precision).name).exists()


class CompileChoice(NamedTuple):
    """Whether a job compiles its image tower (True, False, or `CACHED`: only if its package is in the cache
    already), and why (said in the job's output)."""

    compile: bool | str
    why: str


def compile_pays(
    config: PretrainedConfig, images: int, precision: str, device: torch.device
) -> CompileChoice:
    """Whether compiling the image tower of a model of `config` pays back in a job of `images` images run in
    `precision` on `device`: where the compiled package exists (the CPU, a fixed-resolution model, a packaged
    precision, torchao for int8, a C++ compiler) and runs faster than the eager tower (`eager_as_fast`), the
    job compiles when its linear work reaches `COMPILE_PAYS_FROM_FLOP` (on a CPU with AMX) or
    `COMPILE_PAYS_WITHOUT_AMX_FROM_FLOP` (without), scaled from the base image tower's measured break-even by
    the tower's work per image; a smaller job loads the package if an earlier job compiled it (`CACHED`):
    finding and loading it took no longer than eager int8's own set-up (0.5 s for a base image tower on a
    Zen 5, BENCHMARKS.md)."""
    from ...core.auto import is_naflex

    unasked = no_unasked_package(config, precision, device)
    if unasked:
        return CompileChoice(False, unasked)
    if is_naflex(config):
        return CompileChoice(False, "NaFlex image towers are not compiled ahead of time")
    if precision == "int8-static":
        return CompileChoice(True, "int8-static runs compiled ahead of time")
    work = COMPILE_PAYS_FROM_FLOP if has_amx(device) else COMPILE_PAYS_WITHOUT_AMX_FROM_FLOP[precision]
    pays_from = math.ceil(work / linear_flop(config.vision_config, _patches(config)))
    why = f"{images} images; compiling pays from ~{pays_from:,}"
    if images < pays_from:  # loading a package needs no compiler: none looked for (importing inductor: 1 s)
        missing = missing_for_packages(precision)
        return CompileChoice(False, f"{why}, but {missing}") if missing else CompileChoice(CACHED, why)
    missing = missing_for_compile(precision)
    if missing:
        return CompileChoice(False, f"compiling would pay from ~{pays_from:,}, but {missing}")
    return CompileChoice(True, why)


def no_unasked_package(config: PretrainedConfig, precision: str, device: torch.device) -> str | None:
    """Why a model of `config` run in `precision` on `device` gets no package without `--compile` (by
    `siglip embed`'s own choice, a cached package, a server's background compile), in words ending with the
    way to compile all the same; None: it may. Packages are for the CPU, in `PACKAGED_UNASKED`, where they
    run faster than the eager towers (`eager_as_fast`)."""
    if device.type != "cpu" or precision not in PACKAGED:
        return f"{precision} on {device.type} would compile in every process, or --compile"
    if precision not in PACKAGED_UNASKED:
        return f"{precision} computes transformers' products bit for bit, or --compile"
    as_fast = eager_as_fast(config, precision, device)
    return f"{as_fast}, or --compile" if as_fast else None


def eager_as_fast(config: PretrainedConfig, precision: str, device: torch.device) -> str | None:
    """Why the packages of a model of `config` in `precision` would run no faster than its eager towers on
    `device`, in words (None: they run faster): bf16 on a CPU with AMX, or int8 on a CPU without VNNI, for a
    model whose larger tower does `EAGER_AS_FAST_FROM_FLOP` or more linear work per item."""
    if precision == "bf16" and has_amx(device):
        kernels = "bf16 on a CPU with AMX: the eager towers (oneDNN's fused linears)"
    elif precision == "int8" and device.type == "cpu" and not cpu_units().vnni:
        kernels = "int8 on a CPU without VNNI: the eager towers"
    else:
        return None
    text, vision = config.text_config, config.vision_config
    flop = max(
        linear_flop(text, text.max_position_embeddings),
        linear_flop(vision, _patches(config)) if hasattr(vision, "image_size") else 0,
    )
    if flop < EAGER_AS_FAST_FROM_FLOP:
        return None
    return f"{kernels} run a model of {flop / 1e9:.1f} GFLOP an item as fast as its packages"


def _patches(config: PretrainedConfig) -> int:
    """The patches of a fixed-resolution vision tower's input."""
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def linear_flop(tower: PretrainedConfig, tokens: int) -> float:
    """The linear work of a tower of config `tower` on one item of `tokens` tokens: the multiply-adds of its
    layers' q, k, v and output projections and MLP, x2."""
    per_layer = 4 * tower.hidden_size**2 + 2 * tower.hidden_size * tower.intermediate_size
    return 2 * tokens * tower.num_hidden_layers * per_layer


def missing_for_compile(precision: str) -> str | None:
    """What this machine lacks to compile a package in `precision` (a word of `PACKAGED`), in words (None:
    nothing)."""
    missing = missing_for_packages(precision)
    if missing:
        return missing
    from torch._inductor.cpp_builder import get_cpp_compiler  # not at import: it loads torch._dynamo

    try:
        get_cpp_compiler()
    except Exception as error:  # inductor's own search (CXX, g++, clang++) found none that works
        return f"no C++ compiler was found ({error})"
    return None


def missing_for_packages(precision: str) -> str | None:
    """What this machine lacks to name, and so to load, a package in `precision`, in words (None: nothing):
    torchao for int8 and int8-static, asked as the package's name asks it (`int8.torchao_version`)."""
    if precision in INT8_PRECISIONS:
        try:
            torchao_version()
        except UsageError:
            return "torchao is not installed (pip install 'siglip[int8]')"
    return None


def cache_limit() -> float:
    """The size, in bytes (1 GB = 10^9), the compiled cache is kept within: `$SIGLIP_COMPILED_CACHE_GB`
    gigabytes (`inf`: no limit), by default `CACHE_GB`."""
    value = os.environ.get(CACHE_GB_ENV, "").strip()
    try:
        gigabytes = float(value) if value else CACHE_GB
    except ValueError:
        gigabytes = -1.0
    if not gigabytes >= 0:  # also NaN
        raise UsageError(f"{CACHE_GB_ENV} must be a number of gigabytes (or inf), got {value!r}")
    return gigabytes * 1e9


def prune_cache(folder: Path, keep: Path, limit: float) -> None:
    """Bring the packages in `folder` within `limit` bytes, after a compile: remove those loaded least
    recently first, each with its libraries and lock, but never `keep` (the package just compiled) nor one
    a process has loaded (`_hold`), is loading or compiling (its lock); the folder may stay over the limit by
    those. Files of no package, over an hour old and not locked by a compile, go first: what killed compiles
    left (partial files, locks) and libraries whose package was deleted. Only the cache's own files (by
    their names) are counted or removed. Every package's name covers the code and library versions that made
    it, so a cache kept across upgrades would fill with packages no version loads again."""
    now, files = time.time(), {}
    for path in folder.iterdir():
        match = _CACHE_FILE.fullmatch(path.name)
        with contextlib.suppress(OSError):  # removed by another process meanwhile
            if match and path.is_file():
                files[path] = (match, path.stat())
    packages = sorted((p for p, (m, _) in files.items() if m["package"]), key=lambda p: files[p][1].st_mtime)
    stems = {p.stem for p in packages}
    total = sum(stat.st_size for _, stat in files.values())
    for path, (match, stat) in files.items():
        stem = match["stem"] or match["partial_of"]
        if (
            stem not in stems
            and now - stat.st_mtime > 3600
            and _remove_unlocked(folder / f"{stem}.lock", [path])
        ):
            total -= stat.st_size
    removed = 0
    for package in packages:
        if total <= limit:
            break
        if package == keep:
            continue
        group = [path for path, (m, _) in files.items() if m["stem"] == package.stem and not m["lock"]]
        gone = _remove_unlocked(package.with_suffix(".lock"), group, package)
        if gone or not package.exists():  # removed here, or by a prune of another process meanwhile
            total -= sum(files[path][1].st_size for path in group)
        removed += gone
    if removed:
        logger.info(
            "removed %d compiled package(s) loaded least recently from %s, to keep it within %.1f GB (%s)",
            removed, folder, limit / 1e9, CACHE_GB_ENV,
        )  # fmt: skip


def _remove_unlocked(lock: Path, paths: list[Path], package: Path | None = None) -> bool:
    """Remove `paths` and the `lock` file unless a process holds the lock (compiling or loading a package)
    or has `package` loaded (`_hold`): whether they were removed. Removed while holding the lock, so that only
    a process opening the lock file in that instant can miss it (filelock 4 then takes a new one)."""
    from filelock import FileLock, Timeout

    try:
        with FileLock(lock, timeout=0):
            if package is not None and _live_marks(package):
                return False
            for path in (*paths, lock):
                path.unlink(missing_ok=True)
    except (Timeout, OSError):  # locked, or not this user's to lock or remove (a shared cache)
        return False
    return True


def _versions(precision: str) -> tuple[str, ...]:
    """The versions of the libraries that make `precision`'s package: siglip and torch, and torchao for
    int8 (`int8.torchao_version`, which says how to install it when it is missing)."""
    from ... import __version__

    if precision not in INT8_PRECISIONS:
        return __version__, torch.__version__
    return __version__, torch.__version__, torchao_version()


def _package_path(
    tower: nn.Module, x: torch.Tensor, precision: str, calibration: torch.Tensor | None = None
) -> Path:
    """Where the package of `tower` run on inputs shaped as `x` lives: named by a SHA-256 over its weights
    and everything the compiled code depends on, so that a change to any compiles anew: the precision, the
    classes of the tower and its modules, its config and attention implementation, the source of its
    modelling code and of the code that compiles it (`_sources`), the input's shape and dtype, the CPU (model
    and instruction flags: the kernels are built for this CPU), the threads the kernels are laid out for, the
    library versions, and an int8-static tower's `calibration` inputs."""
    config = getattr(tower, "config", None)
    context = (
        precision, [cls.__qualname__ for cls in _module_classes(tower)], repr(config),
        getattr(config, "attn_implementation", None),
        tuple(x.shape[1:]), str(x.dtype), _versions(precision), _cpu(), torch.get_num_threads(),
    )  # fmt: skip
    digest = hashlib.sha256(repr(context).encode())
    for source in _sources(tower, precision):
        digest.update(Path(source).read_bytes())
    tensors = list(tower.state_dict().items())
    if calibration is not None:
        tensors.append(("calibration", calibration))
    for name, tensor in tensors:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return cache_folder.compiled_cache() / f"{_package_prefix(tower, precision)}{digest.hexdigest()[:32]}.pt2"


def _package_prefix(tower: nn.Module, precision: str) -> str:
    """The start of the names of `tower`'s packages in `precision`: the precision and the tower's class."""
    return f"{precision}-{type(tower).__name__}-"


def _sources(tower: nn.Module, precision: str) -> list[str]:
    """The files of siglip's code a package of `tower` in `precision` is made from: the classes of the tower
    and of its modules, this module, the fused attention kernel (its C++, its op, its build) where the tower
    runs it, and for int8 the quantiser's settings (`int8.py`). A checkout whose code changed between two runs
    (siglip's version the same) then compiles anew rather than loading a package the old code made."""
    files = {
        inspect.getsourcefile(cls) or ""
        for module_class in _module_classes(tower)
        for cls in module_class.__mro__
        if cls.__module__.startswith("siglip")
    }
    files.add(__file__)
    if _uses_fused_attention(tower):
        kernel = fused_attention.KERNEL
        files.update(str(path) for path in (kernel.source, native.__file__, fused_attention.__file__))
    if precision in INT8_PRECISIONS:
        files.add(inspect.getsourcefile(pt2e_int8) or "")
    return sorted(files)


def _uses_fused_attention(tower: nn.Module) -> bool:
    """Whether `tower` runs siglip's fused attention kernel (a package of it calls the kernel's C shim)."""
    return any(isinstance(module, FusedAttention) for module in tower.modules())


def _module_classes(tower: nn.Module) -> list[type]:
    """The classes of `tower` and its modules, in a fixed order (a module whose class was swapped, such as
    `attention.Bf16Attention`, computes otherwise with the same weights)."""
    return sorted(
        {type(module) for module in tower.modules()}, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}"
    )


def _cpu() -> str:
    """The CPU as the generated kernels depend on it: its model and instruction flags (Linux), else what
    the platform and torch say of it, and the ISA caps set in the environment (`precision.isa_caps`)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().split("\n\n")[0].splitlines()
        cpu = [line for line in lines if line.startswith(("model name", "flags"))]
    except OSError:
        cpu = [f"{platform.machine()} {platform.processor()} {torch.backends.cpu.get_cpu_capability()}"]
    return "; ".join(cpu + list(isa_caps()))


def _load_or_compile(
    tower: nn.Module, x: torch.Tensor, precision: str, calibration: torch.Tensor | None = None
) -> tuple[object, Path]:
    """The compiled `tower` for inputs shaped as `x`, and its package's path: the package loaded from the
    cache, or compiled and saved there first. One process compiles a package at a time (a file lock: the
    others wait, then load it); it is written to a temporary name and renamed, so that no reader sees half a
    package. A package that fails to load is compiled again; a cache that cannot be written is replaced by a
    folder of this process only (`writable_cache()`); a package already in a cache this process may read but
    not write (a read-only image layer, another user's folder) is loaded from there, without the lock (a
    package is renamed into place whole). `calibration`: an int8-static tower's calibration inputs."""
    from filelock import FileLock

    limit = cache_limit()  # a bad value stops the job before its compile, not after
    cache, name = cache_folder.compiled_cache(), _package_path(tower, x, precision, calibration).name
    if (cache / name).exists() and cache_folder.write_error(cache) is not None:
        try:
            return _load_package(cache / name), cache / name
        except Exception as error:  # as a damaged package in a writable cache: compiled again, here elsewhere
            logger.warning("compiling for this process: %s failed to load (%s)", cache / name, error)
    path = cache_folder.writable_cache() / name
    lock = FileLock(path.with_suffix(".lock"))
    lock.acquire()
    try:
        if path.exists():
            try:
                return _load_package(path), path
            except Exception as error:  # a package from a foreign or damaged write: compile it again
                logger.warning("compiling again: %s failed to load (%s)", path, error)
        with staged_file(path) as partial:
            _compile_package(tower, x, precision, partial, calibration)
        loaded = _load_package(path)
        try:
            prune_cache(path.parent, path, limit)
        except OSError as error:  # the compile is done: a cache that cannot be pruned is only said
            logger.warning("could not prune %s: %s", path.parent, error)
        return loaded, path
    finally:
        lock.release()


def _compile_package(
    tower: nn.Module, x: torch.Tensor, precision: str, path: Path, calibration: torch.Tensor | None = None
) -> None:
    """`tower` exported with a dynamic batch size, quantised for int8 (int8-static: calibrated on
    `calibration`), and compiled by AOTInductor with freezing (weights packed for oneDNN as constants) into
    the package `path`."""
    logger.info(
        "compiling the %s %s once for this machine (25-60 s for a base model): %s",
        precision,
        type(tower).__name__,
        path,
    )
    from torch._inductor import aoti_compile_and_package

    example = x[:2] if len(x) > 1 else torch.cat([x, x])  # a batch of 1 would be specialised by export
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        program = torch.export.export(_Outputs(tower), (example,), dynamic_shapes=({0: batch},))
        if precision in INT8_PRECISIONS:
            quantized = pt2e_int8(program.module(), example, calibration)
            program = torch.export.export(quantized, (example,), dynamic_shapes=({0: batch},))
        configs = {"freezing": True}
        if _uses_fused_attention(tower):
            configs |= fused_attention.PACKAGE_CONFIG
        aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs)
    _drop_inductor_copy(path)


def _drop_inductor_copy(package: Path) -> None:
    """Remove the copy of `package`'s compiled model that AOTInductor leaves in inductor's cache (its library,
    about the size of the weights, and its sources: 181 MB for a base image tower in bf16, under /tmp by
    default), which torch never removes and nothing reads again: the package holds them. Only the files the
    package holds, by name, and the library's own folder: the folder they are in is named by the model's
    structure, and another process compiling a model of the same structure builds its own files there at
    the same time (removing the folder broke such a compile; two compiles of the same code are one package,
    compiled in turn under its lock)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    with zipfile.ZipFile(package) as archive:
        names = [
            Path(n).name for n in archive.namelist() if "/data/aotinductor/" in n and not n.endswith("/")
        ]
    for library in (name for name in names if name.endswith(".so")):
        for left in Path(cache_dir()).glob(f"*/{glob.escape(library)}"):
            for name in names:
                (left.parent / name).unlink(missing_ok=True)
            shutil.rmtree(left.parent / library.removesuffix(".wrapper.so"), ignore_errors=True)
