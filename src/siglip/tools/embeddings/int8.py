"""int8 inference on the CPU, two ways.

- Eager (`InferenceMode("int8")`, `use_eager_int8`): every linear layer dynamically quantised
  (`quantize_linear_layers`), a faster tanh-GELU for the MLPs (`use_fast_gelu`), and batches of more than
  `EAGER_ROWS_PER_CALL` tokens run by each encoder layer in groups of sequences. Ready at once (a base model's
  layers in 1-3 s).
- Compiled (`InferenceMode("int8", compile=True)`): each tower traced by `torch.export`, quantised by torchao's
  PT2E flow for x86 (`pt2e_int8`: int8 weights per output channel, activations quantised per call as in eager
  int8) and compiled ahead of time by inductor with freezing, which fuses activation quantisation, the int8
  product, dequantisation, bias, GELU and the residual add into oneDNN kernels. It needs the `int8` extra
  (torchao) and a C++ compiler; the package is kept in a cache (`siglip.tools.embeddings.compiled`), and
  called on groups of at most `PACKAGE_ROWS_PER_CALL` tokens' items. The base image tower then ran 1.2-1.5x
  eager int8 (BENCHMARKS.md). `int8-static` is the same flow with activation scales calibrated ahead on
  inputs the user names (`siglip.tools.embeddings.calibration`): each activation's quantisation then fuses
  into the operation before it, about 1.1x faster again.

Both start from the same float modules (`prepare_for_int8`): the MAP head's input projections as linear
layers, which are then quantised like the others, and the attention's own products in bf16 on CPUs with bf16
units (`siglip.tools.embeddings.attention`).
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...core.two_tower.modeling import (
    ACTIVATIONS,
    SiglipMLP,
    SiglipMultiheadAttentionPoolingHead,
)
from ...errors import UsageError
from .attention import Bf16Attention as Bf16Attention  # where whole-model pickles of earlier versions name it
from .attention import use_bf16_attention
from .groups import group_sequences
from .precision import cpu_units

# A batch of more tokens than this runs through each eager int8 encoder layer in groups of sequences
# (`groups.group_count`): the base image tower ran 1.3-1.4x faster in groups of 4 images (784 tokens) than at
# 8 or 16 images a call, and the text tower 1.3-1.4x faster in groups of 8-16 texts than at 32 (AMX Xeon,
# 2 threads); with its products held to AVX2, 1.11x at 32 images (groups of 2,048 or 4,096 tokens alike).
EAGER_ROWS_PER_CALL = 1024

# A compiled int8 tower's package is called on groups of items of at most this many tokens: its fused
# kernels keep activations in 8 bits between products, and the base image tower ran fastest in groups of 8
# images (1,568 tokens), 1.25-1.35x a call of 32 or 16; texts in groups of 8-16 1.07-1.15x a call of 32.
PACKAGE_ROWS_PER_CALL = 1600
CALIBRATION_BATCH = 16  # calibration inputs per forward of the observed float32 tower (`pt2e_int8`)


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


class ProjectedPoolingHead(SiglipMultiheadAttentionPoolingHead):
    """A MAP head whose attention's input projections are `nn.Linear` layers, `q_proj` (the probe) and
    `kv_proj` (the tokens' keys and values), which int8 quantises; `nn.MultiheadAttention` computes them from
    its packed `in_proj_weight`, which neither eager nor PT2E int8 quantises. `split_head_projections` makes
    one from a head (the same weights; the attention's `out_proj`, on one token an image, stays float)."""

    q_proj: nn.Linear
    kv_proj: nn.Linear

    def attend(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        batch, _, dim = x.shape
        heads = self.attention.num_heads
        q = self.q_proj(self.probe).expand(batch, -1, -1)
        k, v = self.kv_proj(x).chunk(2, dim=-1)
        q, k, v = (t.reshape(batch, -1, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
        pooled = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, heads, 1, dim / heads)
        return self.attention.out_proj(pooled.transpose(1, 2).reshape(batch, 1, dim))


def split_head_projections(model: nn.Module) -> None:
    """Make every plain MAP head of `model` a `ProjectedPoolingHead`, in place: its attention's packed input
    projection is copied into two `nn.Linear` layers (the packed one is kept, so that the attention module
    stays whole: a base model's 7 MB once more).

    In float32 the head's keys and values (a 768 x 1,536 product on each of 196 tokens) took 4.4% of an eager
    int8 base image tower's time at 8 images (AMX Xeon): more than their 1.4% of the tower's products."""
    for head in model.modules():
        if type(head) is not SiglipMultiheadAttentionPoolingHead:
            continue
        attention = head.attention
        weight, bias = attention.in_proj_weight.detach(), attention.in_proj_bias.detach()
        dim = weight.shape[1]
        head.q_proj, head.kv_proj = (
            _linear(weight[rows], bias[rows]) for rows in (slice(0, dim), slice(dim, None))
        )
        head.__class__ = ProjectedPoolingHead


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """An `nn.Linear` holding `weight` and `bias` (copies), made without initialising weights first."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], device="meta")
    layer.weight, layer.bias = nn.Parameter(weight.clone()), nn.Parameter(bias.clone())
    return layer


def prepare_for_int8(model: nn.Module, compiled: bool = False) -> None:
    """The float modules of `model` that int8 changes before quantising, in place, eager and compiled alike
    (`compiled`: for the towers a compiled mode packages): the MAP heads' input projections as linear layers
    (`split_head_projections`) and attention in bf16 on a CPU with bf16 units, by the kernel of
    `attention.use_bf16_attention`."""
    split_head_projections(model)
    use_bf16_attention(model, compiled)


def use_eager_int8(model: nn.Module) -> None:
    """Put a float32 `model` into eager int8, in place (CPU only): `prepare_for_int8`, its linear layers
    quantised, the fast GELU, and large batches in groups of `EAGER_ROWS_PER_CALL` tokens."""
    prepare_for_int8(model)
    quantize_linear_layers(model)
    use_fast_gelu(model)
    group_sequences(model, EAGER_ROWS_PER_CALL)


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


class _PT2E(NamedTuple):
    prepare: Callable
    convert: Callable
    x86: ModuleType  # torchao's X86InductorQuantizer and its default configs


_MISSING_TORCHAO = "--precision int8 --compile needs torchao: pip install 'siglip[int8]' (or drop --compile)"


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
        raise UsageError(_MISSING_TORCHAO) from error
    finally:
        for each, level in zip(quieted, levels, strict=True):
            each.setLevel(level)
    return _PT2E(prepare_pt2e, convert_pt2e, x86)


def torchao_version() -> str:
    """The installed torchao's version (part of a compiled int8 package's name), or a `UsageError` saying how
    to install it. Read from its metadata: importing torchao takes seconds, which loading a package compiled
    earlier does not need."""
    try:
        return importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError as error:
        raise UsageError(_MISSING_TORCHAO) from error


def pt2e_int8(graph: nn.Module, example: torch.Tensor, calibration: torch.Tensor | None = None) -> nn.Module:
    """An exported float32 tower `graph` quantised by torchao's x86 PT2E quantizer: int8 weights per output
    channel and, without `calibration`, dynamic activation scales (the arithmetic of eager int8, per call;
    one pass on `example` records the weights' ranges). With `calibration` (inputs of the tower, as
    `example`), static activation scales: each activation's range measured on them by torchao's default
    observers (a histogram per tensor, its range chosen to minimise the quantisation error), in batches of
    `CALIBRATION_BATCH`, which lets inductor fuse each quantisation into the operation before it
    (`int8-static`).

    Without VNNI, activations take 7 bits (0-127), as eager int8's do: oneDNN's int8 products there add each
    pair of uint8 x int8 products in 16 bits, which 8-bit activations overflow (image embeddings of a base
    tower at cosine 0.82 to fp32 with oneDNN held to AVX2, BENCHMARKS.md)."""
    pt2e = _pt2e()
    quantizer = pt2e.x86.X86InductorQuantizer()
    config = pt2e.x86.get_default_x86_inductor_quantization_config
    quantizer.set_global(config(is_dynamic=calibration is None, reduce_range=not cpu_units().vnni))
    prepared = pt2e.prepare(graph, quantizer)
    for batch in (example,) if calibration is None else calibration.split(CALIBRATION_BATCH):
        prepared(batch)
    return pt2e.convert(prepared)
