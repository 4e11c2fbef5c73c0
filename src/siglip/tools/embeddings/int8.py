"""int8 inference on the CPU, two ways.

- Eager (`InferenceMode("int8")`): every linear layer dynamically quantised (`quantize_linear_layers`) and a
  faster tanh-GELU for the MLPs (`use_fast_gelu`). Ready at once (a base model's layers in 1-3 s).
- Compiled (`InferenceMode("int8", compile=True)`): each tower traced by `torch.export`, quantised by torchao's
  PT2E flow for x86 (`X86InductorQuantizer`, int8 weights per output channel, activations quantised per batch as
  in eager int8) and compiled ahead of time by inductor (AOTInductor) with freezing, which fuses activation
  quantisation, the int8 product, dequantisation, bias, GELU and the residual add into oneDNN kernels
  (`Int8CompiledTower`). It needs the `int8` extra (torchao) and a C++ compiler. The compiled tower is kept as
  a package in `compiled_cache()`, keyed by its weights, input shape, CPU and library versions: the first
  call on a machine takes 1-2 minutes for a base tower on 2 cores, later processes load it in about a second.
  The base image tower then ran 1.4x eager int8 (BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
import platform
import tempfile
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...core.outputs import BaseModelOutputWithPooling
from ...core.two_tower.modeling import ACTIVATIONS, SiglipMLP
from ...errors import UsageError

logger = logging.getLogger("siglip")


def fast_gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh-approximated GELU, `0.5 x (1 + tanh(u))` with `u = sqrt(2/pi) (x + 0.044715 x^3)`, computed as the
    equal `x * sigmoid(2u)` in place on a fresh buffer.

    On the CPU, aten's tanh kernel makes the activation ~13% of an int8 base image tower's time; this form
    takes ~25% less, and differs from aten by float32 rounding only (at most 2e-6). Inside autograd it defers to aten (whose backward is fused).
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return F.gelu(x, approximate="tanh")
    two_c = 2 * math.sqrt(2 / math.pi)
    out = x * x
    out.mul_(two_c * 0.044715).add_(two_c).mul_(x).sigmoid_()
    return out.mul_(x)


def use_fast_gelu(model: nn.Module) -> None:
    """Give the MLPs of `model` that use tanh-GELU `fast_gelu_tanh`, in place. Not for the fp32 mode, whose
    numbers stay bit-identical to transformers: only for modes that are approximate anyway."""
    for module in model.modules():
        if isinstance(module, SiglipMLP) and module.activation is ACTIVATIONS["gelu_pytorch_tanh"]:
            module.activation = fast_gelu_tanh


def quantize_linear_layers(model: nn.Module) -> nn.Module:
    """Replace the `nn.Linear` layers of `model` by int8 dynamically quantised ones, in place (CPU only).

    The layers are what torch's `quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)` makes (weights int8
    per tensor, symmetric; subclasses such as `nn.MultiheadAttention`'s output projection stay float), built
    with one weight packing each instead of torch's two, on `torch.get_num_threads()` threads: packing
    dominates the cost (24 ms per 3072x768 weight for oneDNN on one core).

    Weights are packed for oneDNN where torch has it: its int8 products ran the base image tower 6% faster
    than the default x86/fbgemm packing on an AVX2 CPU, with the same accuracy. Each layer computes with the
    library its weights were packed for, whatever `torch.backends.quantized.engine` says later.
    """
    engines = torch.backends.quantized.supported_engines
    engine = torch.backends.quantized.engine
    with warnings.catch_warnings():
        # torch marks its eager quantisation API deprecated in favour of torchao, which needs torch.compile
        # to be fast on the CPU; the eager int8 kernels are what runs fast here without compiling.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated", category=UserWarning)
        try:
            torch.backends.quantized.engine = "onednn" if "onednn" in engines else engine
            todo = [
                (parent, name, child)
                for parent in model.modules()
                for name, child in parent.named_children()
                if type(child) is nn.Linear
            ]
            # packing releases the GIL: on threads, a base model's layers were ready 4-5x sooner (2 cores)
            with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
                layers = list(pool.map(_int8_linear, [child for _, _, child in todo]))
            for (parent, name, _), layer in zip(todo, layers, strict=True):
                setattr(parent, name, layer)
            return model
        finally:
            torch.backends.quantized.engine = engine


def _int8_linear(linear: nn.Linear) -> nn.Module:
    """torch's dynamically quantised linear of `linear`, as `Linear.from_float` makes it with the default
    dynamic qconfig, but packed once: it is created 1x1 (a cheap placeholder packing) and given its weight."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization.observer import default_weight_observer

    observer = default_weight_observer()
    observer(linear.weight)
    scale, zero_point = observer.calculate_qparams()
    weight = torch.quantize_per_tensor(
        linear.weight.detach().float(), float(scale), int(zero_point), torch.qint8
    )
    layer = DynamicLinear(1, 1, dtype=torch.qint8)
    layer.in_features, layer.out_features = linear.in_features, linear.out_features
    layer.set_weight_bias(weight, None if linear.bias is None else linear.bias.detach())
    return layer


class _Outputs(nn.Module):
    """A tower's tensors as a tuple (`torch.export` traces tensors, not output dataclasses)."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.tower(x)
        return tuple(t for t in (out.last_hidden_state, out.pooler_output) if t is not None)


class Int8CompiledTower(nn.Module):
    """A fixed-resolution vision tower or a text tower in PT2E int8, compiled ahead of time on its first call.

    Called as the tower it replaces with its main input only (pixels, or token ids padded to the model's
    length); it returns `last_hidden_state` and `pooler_output`. Only the batch size may change between calls
    (the first call's other dimensions are fixed in the package). The first call loads the tower's package
    from `compiled_cache()`, or exports, quantises and compiles it there (1-2 minutes for a base tower on 2
    cores; inductor's kernel cache does not cover frozen graphs, hence a package of our own).
    """

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower
        self._compiled: object | None = None
        self._input: tuple[tuple[int, ...], torch.dtype] | None = None  # (shape past the batch, dtype)
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> BaseModelOutputWithPooling:
        if any(a is not None and a is not False for a in (*args, *kwargs.values())):
            raise UsageError(
                "the compiled int8 mode runs a tower on its pixels or token ids only (no attention mask, "
                "attentions, hidden states or interpolated positions); use --precision int8 without --compile"
            )
        if not len(x):
            raise UsageError("the compiled int8 tower was given an empty batch")
        x = x.contiguous()  # the package reads its input as laid out at compile time, unchecked
        # export cannot trace under inference_mode (which the embedders use): no_grad is enough
        with torch.inference_mode(False), torch.no_grad():
            with self._lock:
                if self._compiled is None:
                    self._compiled, self._input = (
                        _load_or_compile(self.tower, x),
                        (tuple(x.shape[1:]), x.dtype),
                    )
            shape, dtype = self._input
            if (tuple(x.shape[1:]), x.dtype) != (shape, dtype):
                dims = ", ".join(map(str, shape))
                raise UsageError(
                    f"the compiled int8 tower was compiled for {dtype} inputs of shape (batch, {dims}); got "
                    f"{x.dtype} {tuple(x.shape)}"
                )
            outputs = self._compiled(x)
        return BaseModelOutputWithPooling(outputs[0], outputs[1] if len(outputs) > 1 else None)


def compiled_cache() -> Path:
    """The folder of compiled int8 towers: `$SIGLIP_COMPILED_CACHE`, else `siglip/compiled` in
    `$XDG_CACHE_HOME` (default `~/.cache`). A package is about the size of the tower's int8 weights (100 MB
    for a base image tower); delete the folder to reclaim the space."""
    if os.environ.get("SIGLIP_COMPILED_CACHE"):
        return Path(os.environ["SIGLIP_COMPILED_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "siglip" / "compiled"


def _package_path(tower: nn.Module, x: torch.Tensor, torchao_version: str) -> Path:
    """Where the package of `tower` run on inputs shaped as `x` lives: named by a SHA-256 over its weights
    and everything the compiled code depends on, so that a change to any compiles anew: the tower's config
    and attention implementation, the source of its modelling code, the input's shape and dtype, the CPU
    (model and instruction flags: the kernels are built for this CPU), the threads the kernels are laid out
    for, and the versions of siglip, torch and torchao."""
    from ... import __version__

    sources = sorted(
        {
            inspect.getsourcefile(cls) or ""
            for cls in type(tower).__mro__
            if cls.__module__.startswith("siglip")
        }
    )
    config = getattr(tower, "config", None)
    context = (
        type(tower).__name__, repr(config), getattr(config, "attn_implementation", None), tuple(x.shape[1:]),
        str(x.dtype), __version__, torch.__version__, torchao_version, _cpu(), torch.get_num_threads(),
    )  # fmt: skip
    digest = hashlib.sha256(repr(context).encode())
    for source in sources:
        digest.update(Path(source).read_bytes())
    for name, tensor in tower.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return compiled_cache() / f"int8-{type(tower).__name__}-{digest.hexdigest()[:32]}.pt2"


def _cpu() -> str:
    """The CPU as the generated kernels depend on it: its model and instruction flags (Linux), else what
    the platform and torch say of it."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().split("\n\n")[0].splitlines()
        return "; ".join(line for line in lines if line.startswith(("model name", "flags")))
    except OSError:
        return f"{platform.machine()} {platform.processor()} {torch.backends.cpu.get_cpu_capability()}"


def _load_or_compile(tower: nn.Module, x: torch.Tensor) -> object:
    """The compiled `tower` for inputs shaped as `x`: its package loaded from the cache, or compiled and
    saved there first. One process compiles a package at a time (a file lock: the others wait, then load
    it); it is written to a temporary name and renamed, so that no reader sees half a package. A package
    that fails to load is compiled again; a cache that cannot be written compiles into a temporary folder
    for this process only (removed once loaded)."""
    from filelock import FileLock
    from torch._inductor import aoti_load_package  # not at import: it loads torch._dynamo

    pt2e = _pt2e()
    path = _package_path(tower, x, pt2e.torchao_version)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path.with_suffix(".lock"))
        lock.acquire()
    except OSError as error:
        logger.warning("%s is not writable (%s): compiling for this process only", path.parent, error)
        with tempfile.TemporaryDirectory(prefix="siglip-int8-") as folder:
            _pt2e_int8_package(pt2e, tower, x, Path(folder) / path.name)
            return aoti_load_package(str(Path(folder) / path.name))
    try:
        if path.exists():
            try:
                return aoti_load_package(str(path))
            except Exception as error:  # a package from a foreign or damaged write: compile it again
                logger.warning("compiling again: %s failed to load (%s)", path, error)
        handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".pt2")
        os.close(handle)
        try:
            _pt2e_int8_package(pt2e, tower, x, Path(partial))
            os.replace(partial, path)
        finally:
            Path(partial).unlink(missing_ok=True)
        return aoti_load_package(str(path))
    finally:
        lock.release()


class _PT2E(NamedTuple):
    prepare: Callable
    convert: Callable
    x86: ModuleType  # torchao's X86InductorQuantizer and its default configs
    torchao_version: str


def _pt2e() -> _PT2E:
    """torchao's PT2E pieces, or a `UsageError` saying how to install them."""
    # torchao's import logs a warning per CUDA kernel library a CPU build cannot load, and torch one per enum
    # torchao registers: noise for a CPU job, so both loggers are quieted while it loads
    quieted = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [each.level for each in quieted]
    try:
        for each in quieted:
            each.setLevel(logging.ERROR)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError as error:
        raise UsageError(
            "--precision int8 --compile needs torchao: pip install 'siglip[int8]' (or drop --compile)"
        ) from error
    finally:
        for each, level in zip(quieted, levels, strict=True):
            each.setLevel(level)
    import torchao

    return _PT2E(prepare_pt2e, convert_pt2e, x86, torchao.__version__)


def _pt2e_int8_package(pt2e: _PT2E, tower: nn.Module, x: torch.Tensor, path: Path) -> None:
    """`tower` (float32) exported with a dynamic batch size, quantised by torchao's x86 PT2E quantizer
    (dynamic activation scales: no calibration data, the arithmetic of eager int8), and compiled by
    AOTInductor with freezing (the int8 weights packed for oneDNN as constants) into the package `path`."""
    logger.info(
        "compiling the int8 %s once for this machine (1-2 minutes for a base model): %s",
        type(tower).__name__,
        path,
    )
    from torch._inductor import aoti_compile_and_package

    example = x[:2] if len(x) > 1 else torch.cat([x, x])  # a batch of 1 would be specialised by export
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        graph = torch.export.export(_Outputs(tower), (example,), dynamic_shapes=({0: batch},)).module()
        quantizer = pt2e.x86.X86InductorQuantizer()
        quantizer.set_global(pt2e.x86.get_default_x86_inductor_quantization_config(is_dynamic=True))
        prepared = pt2e.prepare(graph, quantizer)
        prepared(example)  # dynamic scales: one pass only records the weights' ranges
        quantized = pt2e.convert(prepared)
        program = torch.export.export(quantized, (example,), dynamic_shapes=({0: batch},))
        aoti_compile_and_package(program, package_path=str(path), inductor_configs={"freezing": True})


def compile_int8_towers(model: nn.Module) -> None:
    """Replace the text tower and the fixed-resolution vision tower of a float32 two-tower `model` by
    `Int8CompiledTower`s, in place (each compiles on its first call). A NaFlex vision tower, whose inputs
    carry a patch mask and sizes, is quantised eagerly instead (`quantize_linear_layers`)."""
    from ...core.auto import is_naflex

    model.text_model = Int8CompiledTower(model.text_model)
    if is_naflex(model):
        quantize_linear_layers(model.vision_model)
        use_fast_gelu(model.vision_model)
    else:
        model.vision_model = Int8CompiledTower(model.vision_model)
