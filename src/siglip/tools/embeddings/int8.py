"""int8 inference on the CPU, two ways.

- Eager (`InferenceMode("int8")`): every linear layer dynamically quantised (`quantize_linear_layers`) and a
  faster tanh-GELU for the MLPs (`use_fast_gelu`). Ready at once (a base model's layers in 1-3 s).
- Compiled (`InferenceMode("int8", compile=True)`): each tower traced by `torch.export`, quantised by torchao's
  PT2E flow for x86 (`X86InductorQuantizer`, int8 weights per output channel, activations quantised per batch as
  in eager int8) and compiled by inductor with freezing, which fuses activation quantisation, the int8
  product, dequantisation, bias, GELU and the residual add into oneDNN kernels (`Int8CompiledTower`). It needs
  the `int8` extra (torchao) and a first call per tower and process of 30-60 s for a base model on 2 cores;
  then the base image tower and text tower ran 1.1-1.2x faster than eager int8 (BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn

from ...core.outputs import BaseModelOutputWithPooling
from ...core.two_tower.modeling import ACTIVATIONS, SiglipMLP
from ...errors import UsageError


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
    """A fixed-resolution vision tower or a text tower in PT2E int8, compiled by inductor on its first call.

    Called as the tower it replaces with its main input only (pixels, or token ids padded to the model's
    length); it returns `last_hidden_state` and `pooler_output`. Only the batch size may change between calls
    (the first call's other dimensions are fixed in the graph). The first call exports, quantises and compiles
    (inductor caches its generated kernels on disk, which a later process reuses; its graph cache does not
    apply to frozen graphs, so every process pays the rest, ~30 s for a base tower on 2 cores).
    """

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower
        self._compiled: object | None = None
        self._shape: tuple[int, ...] = ()
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> BaseModelOutputWithPooling:
        if any(a is not None and a is not False for a in (*args, *kwargs.values())):
            raise UsageError(
                "the compiled int8 mode runs a tower on its pixels or token ids only (no attention mask, "
                "attentions, hidden states or interpolated positions); use --precision int8 without --compile"
            )
        if self._shape and tuple(x.shape[1:]) != self._shape:
            dims = ", ".join(map(str, self._shape))
            raise UsageError(
                f"the compiled int8 tower was compiled for inputs of shape (batch, {dims}); got {tuple(x.shape)}"
            )
        from torch._inductor import config as inductor_config  # not at import: it loads torch._dynamo

        # inductor's freezing cannot trace under inference_mode (which the embedders use): no_grad is enough.
        # Freezing (the int8 weights packed for oneDNN as constants) is asked for around every call, where a
        # recompile (a new batch size) may happen: torch.compile's per-model `options` do not reach it.
        with torch.inference_mode(False), torch.no_grad(), inductor_config.patch(freezing=True):
            with self._lock:
                if self._compiled is None:
                    self._compiled, self._shape = _pt2e_int8(self.tower, x), tuple(x.shape[1:])
            outputs = self._compiled(x)
        return BaseModelOutputWithPooling(outputs[0], outputs[1] if len(outputs) > 1 else None)


def _pt2e_int8(tower: nn.Module, x: torch.Tensor) -> object:
    """`tower` (float32) exported with a dynamic batch size, quantised by torchao's x86 PT2E quantizer
    (dynamic activation scales: no calibration data, the arithmetic of eager int8) and compiled with freezing."""
    # torchao's import logs a warning per CUDA kernel library a CPU build cannot load, and torch one per enum
    # torchao registers: noise for a CPU job, so both loggers are quieted while it loads
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError as error:
        raise UsageError(
            "--precision int8 --compile needs torchao: pip install 'siglip[int8]' (or drop --compile)"
        ) from error
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    example = x[:2] if len(x) > 1 else torch.cat([x, x])  # a batch of 1 would be specialised by export
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        graph = torch.export.export(_Outputs(tower), (example,), dynamic_shapes=({0: batch},)).module()
        quantizer = x86.X86InductorQuantizer()
        quantizer.set_global(x86.get_default_x86_inductor_quantization_config(is_dynamic=True))
        prepared = prepare_pt2e(graph, quantizer)
        prepared(example)  # dynamic scales: one pass only records the weights' ranges
        quantized = convert_pt2e(prepared)
        compiled = torch.compile(quantized, dynamic=True)
    return compiled


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
