"""int8 inference on the CPU, two ways.

- Eager (`InferenceMode("int8")`, `use_eager_int8`): on an x86 CPU, every linear layer an
  `Int8Linear` (`use_int8_linears`; each attention's queries, keys and values one layer): oneDNN's int8
  product on weights quantised per output channel, each call's input quantised per tensor by siglip's kernel
  (`quantized`, `kernels/quantize.cpp`, built on first use), the bias, the MLP's GELU and the residual adds
  inside the products, and large batches run by each encoder layer in groups of sequences
  (`int8_linear_rows_per_call`). The base towers ran 1.17-1.20x (images) and 1.08-1.21x (texts) faster than
  on torch's dynamically quantised linears at batches 1-32 with VNNI, nearer fp32, and 1.04-1.05x (images)
  and 0.97-1.02x (texts) on a CPU held to AVX2, where both take 7-bit activations (BENCHMARKS.md). Where the
  kernel cannot be built (no C++ compiler and no build in the cache) or the CPU is not x86, torch's
  dynamically quantised linears (`quantize_linear_layers`: weights per tensor) with a faster tanh-GELU
  (`use_fast_gelu`). Ready at once (a base model's layers in under a second).
- Compiled (`InferenceMode("int8", compile=True)`): each tower traced by `torch.export`, quantised by
  torchao's PT2E flow for x86 (`pt2e_int8`: int8 weights per output channel, activations quantised per call
  as in eager int8) and compiled ahead of time by inductor with freezing, which fuses activation
  quantisation, the int8 product, dequantisation, bias, GELU and the residual add into oneDNN kernels. It
  needs the `int8` extra (torchao) and a C++ compiler; the package is kept in a cache
  (`siglip.tools.embeddings.compiled`), and called on groups of at most `PACKAGE_ROWS_PER_CALL` tokens'
  items. `int8-static` is the same flow with activation scales calibrated ahead on inputs the user names
  (`siglip.tools.embeddings.calibration`): each activation's quantisation then fuses into the operation
  before it, about 1.1x faster again.

Both start from the same float modules (`prepare_for_int8`): the MAP head's input projections as linear
layers, which are then quantised like the others, and the attention's own products in bf16 on CPUs with bf16
units (`siglip.tools.embeddings.attention`).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import logging
import math
import os
import platform
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
    SiglipAttention,
    SiglipMLP,
    SiglipMultiheadAttentionPoolingHead,
)
from ...errors import UsageError
from .attention import Bf16Attention as Bf16Attention  # where whole-model pickles of earlier versions name it
from .attention import use_bf16_attention
from .groups import group_sequences
from .native import NativeKernel
from .onednn import POST_OPS, packed_copy, replace_linears, use_fused_layers
from .precision import cpu_units, int8_attention_dtype

logger = logging.getLogger("siglip")

# A batch of more tokens than this runs through each eager int8 encoder layer in groups of sequences
# (`groups.group_count`): the base image tower ran 1.3-1.4x faster in groups of 4 images (784 tokens) than at
# 8 or 16 images a call, and the text tower 1.3-1.4x faster in groups of 8-16 texts than at 32 (AMX Xeon,
# 2 threads); with its products held to AVX2, 1.11x at 32 images (groups of 2,048 or 4,096 tokens alike).
# `Int8Linear`s take `int8_linear_rows_per_call()`.
EAGER_ROWS_PER_CALL = 1024
# `Int8Linear`s on a CPU without AMX take calls of up to this many tokens: on a Zen 4 (2 threads, paired
# rounds) one call of 8 or 16 images ran the image tower 1.06-1.09x as fast as groups of 1,024 tokens, and
# 32 images in two groups of 16 1.06-1.08x; on a Zen 5 groups of 1,024 had run 1.00-1.03x groups of 2,048 or
# 4,096 (and 1.05-1.09x groups of 512). CPUs without VNNI take it too (the Zen 4 held to AVX2 was measured
# with it). Not measured with AMX, which keeps `EAGER_ROWS_PER_CALL`, nor on Intel CPUs with VNNI and no AMX.
INT8_LINEAR_ROWS_PER_CALL = 4096

# A compiled int8 tower's package is called on groups of items of at most this many tokens: its fused
# kernels keep activations in 8 bits between products, and the base image tower ran fastest in groups of 8
# images (1,568 tokens), 1.25-1.35x a call of 32 or 16; texts in groups of 8-16 1.07-1.15x a call of 32.
PACKAGE_ROWS_PER_CALL = 1600
CALIBRATION_BATCH = 16  # calibration inputs per forward of the observed float32 tower (`pt2e_int8`)
QUANTIZE_KERNEL = NativeKernel("quantize", ("-mavx2",), "int8 quantisation")  # `quantized`
INT8_LINEARS_VARIABLE = "SIGLIP_INT8_LINEARS"  # "0": eager int8 takes torch's dynamically quantised linears


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
    """Put a float32 `model` into eager int8, in place (CPU only): `prepare_for_int8`, then its linear layers
    as `Int8Linear`s in `FusedEncoderLayer`s (`use_int8_linears`) where `int8_linears_why_not` says nothing,
    else as torch's dynamically quantised linears (`quantize_linear_layers`) with the fast GELU; large batches
    in groups of sequences either way (`int8_linear_rows_per_call()`, `EAGER_ROWS_PER_CALL` tokens)."""
    prepare_for_int8(model)
    why = int8_linears_why_not()
    if why is None:
        use_int8_linears(model)
        return
    logger.info("eager int8 takes torch's dynamically quantised linear layers: %s", why)
    quantize_linear_layers(model)
    use_fast_gelu(model)
    group_sequences(model, EAGER_ROWS_PER_CALL)


def int8_linears_why_not() -> str | None:
    """Why eager int8 does not take `Int8Linear`s here, in words (None: it does): they need an x86 CPU with
    AVX2 that oneDNN may use (an ISA cap below it hides it), torch's oneDNN (the products) and the kernel
    built (a C++ compiler, or a build in the cache: `siglip.tools.embeddings.native`);
    `SIGLIP_INT8_LINEARS=0` turns them off. Without VNNI they take 7-bit activations, as torch's dynamically
    quantised linears do there: on a Zen 4 held to AVX2 the base image tower ran 1.04-1.05x as fast on them,
    texts 0.97-1.02x, at a cosine to fp32 up to 0.0002 lower (0.99957 at 32 images; BENCHMARKS.md)."""
    if os.environ.get(INT8_LINEARS_VARIABLE, "").strip() == "0":
        return f"{INT8_LINEARS_VARIABLE}=0"
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return "not an x86 CPU with torch's oneDNN"
    products = getattr(torch.ops.onednn, "qlinear_pointwise", None)
    if products is None or "binary" not in products.overloads():
        return f"torch {torch.__version__} has no oneDNN int8 product with a residual add"
    if why := _quantize_kernel()[1]:
        return why
    units = cpu_units()  # the kernel checked the CPU; a cap may hold oneDNN below it
    return None if units.avx2 else f"oneDNN's int8 products held below AVX2 ({units.cap})"


def use_int8_linears(model: nn.Module) -> None:
    """Make every `nn.Linear` of a float32 `model` an `Int8Linear`, each MLP's first one with the MLP's GELU,
    and every encoder layer a `FusedEncoderLayer` that adds its residuals inside the products and runs at most
    `int8_linear_rows_per_call()` tokens a call, in place (where `int8_linears_why_not` says nothing).

    Each attention's queries, keys and values become one `Int8Linear`, its `qkv_proj` (`fuse_projections`),
    which comes out in the dtype the attention computes in (`int8_attention_dtype`): in bf16, the same numbers
    without a conversion (the base image tower 1.03x faster on the Zen 5)."""
    fuse_projections(model)
    replace_linears(model, Int8Linear)
    use_fused_layers(model, int8_linear_rows_per_call())
    dtype = int8_attention_dtype()
    for attention in model.modules():
        if isinstance(attention, SiglipAttention):
            for name in ("qkv_proj", "q_proj", "k_proj", "v_proj"):  # the three where they were not fused
                if isinstance(layer := attention._modules.get(name), Int8Linear):
                    layer.out_dtype = dtype


def int8_linear_rows_per_call() -> int:
    """The most tokens an eager int8 encoder layer of `Int8Linear`s runs a call on this CPU (more run in
    groups of sequences): `EAGER_ROWS_PER_CALL` with AMX, `INT8_LINEAR_ROWS_PER_CALL` without."""
    return EAGER_ROWS_PER_CALL if cpu_units().amx else INT8_LINEAR_ROWS_PER_CALL


def fuse_projections(model: nn.Module) -> None:
    """Make the queries', keys' and values' layers of every `SiglipAttention` of `model` one `nn.Linear`, its
    `qkv_proj` (their weights stacked: copies; the three layers are removed), in place, where all three are
    plain `nn.Linear`s with a bias (layers wrapped by adapters, LoRA's, are left as they are). For inference
    only: such an attention is no checkpoint's. Each input is then quantised once, not three times, and
    multiplied in one product: with `Int8Linear`s the same numbers (the weights' scales are per output
    channel), 1.5-1.8x as fast at one text (64 rows) and 1.2-1.3x at one image (196), 1.0-1.1x from 1,024 rows
    (Zen 4, a base tower's 768 x 768 layers, BENCHMARKS.md)."""
    for attention in model.modules():
        if not isinstance(attention, SiglipAttention) or "qkv_proj" in attention._modules:
            continue
        layers = (attention.q_proj, attention.k_proj, attention.v_proj)
        if all(type(layer) is nn.Linear and layer.bias is not None for layer in layers):
            attention.qkv_proj = _linear(
                torch.cat([layer.weight.detach() for layer in layers]),
                torch.cat([layer.bias.detach() for layer in layers]),
            )
            del attention.q_proj, attention.k_proj, attention.v_proj


class Int8Linear(nn.Module):
    """`linear` in int8 through oneDNN's int8 product (`torch.ops.onednn.qlinear_pointwise`, what inductor
    calls for a compiled int8 linear): the weight int8 per output channel (symmetric: its largest magnitude
    to 127), each call's input quantised to uint8 with one scale and zero point (`quantized`, at most `qmax`:
    by default `activation_qmax()`, 7 bits on a CPU without VNNI),
    and the bias, `activation` (a key of `onednn.POST_OPS`, or None) and in `add_to` a residual applied to
    the float32 result inside the product. The scheme of `pt2e_int8`'s per-call scales, eager: the base
    towers ran 1.17-1.21x torch's dynamically quantised linears with the fast GELU (whose weights are int8
    per tensor) at 8-32 items, nearer fp32 (BENCHMARKS.md).

    Holds `weight` (int8), `weight_scale` and `bias` (float32) as buffers; the first call packs a copy of the
    weight into oneDNN's layout (a millisecond or two a layer), made again after the weight changed (not seen
    for a weight made under `torch.inference_mode`, which has no version counter: build such layers again),
    dropped when the layer is moved, copied or pickled. Inference only: no gradient flows through it. A model
    of them pickled whole and loaded on a CPU without VNNI takes 7-bit activations there; where the kernel
    cannot be built its first call raises: apply int8 to the float model on each machine instead."""

    _packed: tuple[torch.Tensor, int | None, torch.Tensor] | None = None  # `onednn.packed_copy`
    out_dtype: torch.dtype = torch.float32  # what `forward` returns (`add_to`: float32)
    # read by `save_pretrained`, which refuses a model holding one
    not_a_checkpoint = "an int8 inference layer: save the float model, and apply the int8 mode after loading"

    def __init__(
        self, linear: nn.Linear, activation: Callable | None = None, qmax: int | None = None
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.qmax = qmax or activation_qmax()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(1).div_(127).clamp_min_(torch.finfo(torch.float32).eps)
        self.register_buffer("weight", weight.div(scale[:, None]).round_().to(torch.int8))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.register_buffer("weight_zero_point", torch.zeros(self.out_features, dtype=torch.long), False)
        self.activation = activation
        self.post_op, self.algorithm = POST_OPS[activation] if activation else ("none", "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale, zero_point = quantized(x, self.qmax)
        out = torch.ops.onednn.qlinear_pointwise(
            q, scale, zero_point, *self._weights(), self.bias, 1.0, 0, self.out_dtype,
            self.post_op, [], self.algorithm,
        )  # fmt: skip
        return out.view(*x.shape[:-1], self.out_features)

    def add_to(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """`residual + self(x)`, the add inside the product (for a layer without an activation)."""
        q, scale, zero_point = quantized(x, self.qmax)
        # contiguous: given one image's patch embeddings (laid out by channel) as the first layer's residual,
        # every later call of that shape took ~140 ms instead of ~0.3 (the image tower 56x as long, Zen 5)
        other = residual.reshape(-1, self.out_features).contiguous()
        out = torch.ops.onednn.qlinear_pointwise.binary(
            q, scale, zero_point, *self._weights(), other, self.bias, 1.0, 0, torch.float32, 1.0, 0,
            "add", 1.0, self.post_op, [], self.algorithm,
        )  # fmt: skip
        return out.view(residual.shape)

    def _fused(self, *inputs: torch.Tensor) -> bool:
        """Always: an int8 layer has no other path (`FusedEncoderLayer` asks)."""
        return True

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The packed weight (packed on the first call, and again after the weight changed), its scales and
        zero points, as the product takes them."""
        self._packed = packed_copy(self._packed, self.weight, torch.ops.onednn.qlinear_prepack)
        return self._packed[2], self.weight_scale, self.weight_zero_point

    def _apply(self, fn: Callable, recurse: bool = True) -> Int8Linear:
        self._packed = None  # moved: packed again on the next call
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_packed": None}  # oneDNN's layout has no storage to copy

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.qmax = min(self.qmax, activation_qmax())  # unpickled on a CPU without VNNI: 7 bits there

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, post_op={self.post_op!r}"


def activation_qmax() -> int:
    """The largest quantised activation oneDNN's int8 products take on this CPU: 255, or 127 without VNNI,
    where they add each pair of uint8 x int8 products in 16 bits, which 8-bit activations overflow (as in
    `pt2e_int8`; held to AVX2, the bundled image tower's cosine to fp32 fell from 0.99972 to 0.99338)."""
    return 255 if cpu_units().vnni else 127


def quantized(x: torch.Tensor, qmax: int = 255) -> tuple[torch.Tensor, float, int]:
    """`x` (on the CPU; bf16 read as is, other dtypes as float32) quantised per tensor by siglip's kernel
    (`kernels/quantize.cpp`, on torch's threads), as a uint8 matrix of `x`'s last dimension, with its scale
    and zero point: `lo`, `hi` the range of `x` widened to hold 0, `scale = max((hi - lo) / qmax, 2^-23)` in
    float32, `zero_point = clamp(round(-lo / scale), 0, qmax)` and `q = clamp(round(x * (1 / scale)) +
    zero_point, 0, qmax)`, rounding half to even. `qmax`: 255, or 127 for int8 products without VNNI. Raises a
    `ValueError` for a NaN or an infinity in `x` (or a range beyond float32's)."""
    library, why = _quantize_kernel()
    if library is None:
        raise RuntimeError(why)
    if x.device.type != "cpu" or x.dim() == 0:
        raise ValueError(
            f"quantized: x must be a CPU tensor of one dimension or more, got {x.shape} on {x.device}"
        )
    x = (x if x.dtype == torch.bfloat16 else x.float()).contiguous()
    kernel = library.siglip_quantize_u8_bf16 if x.dtype == torch.bfloat16 else library.siglip_quantize_u8
    out = torch.empty(math.prod(x.shape[:-1]), x.shape[-1], dtype=torch.uint8)
    scale, zero_point = ctypes.c_float(), ctypes.c_int32()
    if kernel(x.data_ptr(), x.numel(), out.data_ptr(), qmax, torch.get_num_threads(), scale, zero_point):
        if qmax not in (127, 255):
            raise ValueError(f"quantized: qmax must be 127 or 255, got {qmax}")
        raise ValueError(
            f"int8: a linear layer's input of shape {tuple(x.shape)} holds a NaN or an infinity (or values "
            "too far apart for float32)"
        )
    return out, scale.value, zero_point.value


@functools.cache
def _quantize_kernel() -> tuple[ctypes.CDLL | None, str | None]:
    """The quantisation kernel's library, built if need be, or None and why it could not be (asked once a
    process): never on a CPU without AVX2, whose code it is compiled to."""
    if not torch.cpu._is_avx2_supported():
        return None, "the CPU has no AVX2"
    library, why = QUANTIZE_KERNEL.load()
    if library is None:
        return None, why
    pointer = ctypes.c_void_p
    for kernel in (library.siglip_quantize_u8, library.siglip_quantize_u8_bf16):
        kernel.argtypes = [
            pointer, ctypes.c_int64, pointer, ctypes.c_int, ctypes.c_int,
            ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int32),
        ]  # fmt: skip
        kernel.restype = ctypes.c_int
    return library, None


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
    quantizer.set_global(config(is_dynamic=calibration is None, reduce_range=activation_qmax() < 255))
    prepared = pt2e.prepare(graph, quantizer)
    for batch in (example,) if calibration is None else calibration.split(CALIBRATION_BATCH):
        prepared(batch)
    return pt2e.convert(prepared)
