"""The attention's own products (queries by keys, weights by values) of the fast CPU modes, in bf16: which
kernel runs them on which CPU, for eager int8 and bf16 and for the towers a compiled mode packages.

| CPU                  | int8, eager            | int8, compiled       | bf16, eager                  | bf16, compiled       |
|----------------------|------------------------|----------------------|------------------------------|----------------------|
| AMX                  | `Bf16Attention`        | `Bf16Attention`      | torch's SDPA kernel, bf16    | torch's SDPA, bf16   |
| AVX-512 BF16, no AMX | `GroupedBf16Attention` | `GraphBf16Attention` | `GroupedAttention`           | `GraphBf16Attention` |
| no bf16 units        | float32 SDPA           | float32 SDPA         | torch's SDPA (bf16 emulated) | torch's SDPA         |

On a CPU with AVX-512 BF16 and no AMX, each of those three classes comes in a `Fused...` form whose calls
without a mask take siglip's fused kernel (`siglip.tools.embeddings.fused_attention`) where it could be built
(the kernel's `why_not`), and the class's own kernel otherwise; the fp32 `--compile` package's towers take it
in float32 (`FusedFloat32Attention`).

Why: in int8 the attention's products stay in floating point, and in float32 they took ~20% of a compiled
base image tower's time on a Xeon with AMX (perf). There torch's SDPA kernel runs bf16 products on the tiles:
the compiled image tower ran 1.13x and the eager one 1.07x faster at 8 images, texts (64 positions) as fast
either way, the embeddings' cosine to fp32 unchanged at the fourth decimal. Without AMX that kernel's small
products ran at 120-140 GFLOP/s in bf16 and float32 alike on a 2-core AMD Zen 5 (AVX-512 BF16), where
oneDNN's batched bf16 products reach 580-820 and the linear layers 850: the attention took 21% of the eager
bf16 image tower's time, and SDPA in bf16 gained int8 nothing (0.97-1.05x). Eager, `grouped_products` runs it
as two batched products and a float32 softmax over groups of sequences of at most a million scores (4 MB in
float32; BENCHMARKS.md has the speed); a longer sequence (a base tower at 384 pixels) keeps SDPA, whose tiles
stay small. A package cannot group (the groups would depend on the batch size, which the package leaves
free): `GraphBf16Attention` writes the same arithmetic as graph operations over the whole batch, which
inductor compiles, fusing the softmax with the conversions around it; on the Zen 5 the compiled base towers
ran 1.19-1.25x (int8) and 1.11-1.12x (bf16) faster on images than with SDPA, 1.06-1.10x on texts.
`SIGLIP_BF16_UNITS=0` keeps int8's attention in float32 (`precision.int8_attention_dtype`).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ...core.two_tower.modeling import SiglipAttention
from . import fused_attention
from .precision import cpu_units, int8_attention_dtype

logger = logging.getLogger("siglip")

# A group of sequences in `grouped_products` holds at most this many scores (heads x queries x keys): 2
# base-tower images (196 tokens) or 21 texts (64). On the Zen 5 (2 MB of L2 per core, 32 MB of L3), groups
# of 0.9-1.8 million scores ran 2.3-2.7x torch's SDPA kernel on images, 0.1-0.4 million 2.7-3.3x on texts;
# 3.7 million (8 images) ran 0.6-0.8x. A sequence with more scores than this alone (a base tower at 384 or
# 512 pixels, so400m at 384: 4-13 million) takes the SDPA kernel, whose tiles stay small: grouped, it ran
# 0.57-0.89x.
SCORES_PER_GROUP = 1 << 20


class Bf16Attention(SiglipAttention):
    """A `SiglipAttention` whose SDPA kernel computes in bf16: queries, keys, values and the additive mask are
    rounded to bf16 (the mask's masked positions to bf16's lowest value, so that a sequence with no key left
    averages them all as in float32) and the heads' outputs returned in the queries' dtype. Only the SDPA
    path (`attn_implementation` "sdpa", no attention maps asked for) goes through it. `use_bf16_attention`
    makes one by swapping the class of an attention module (the same projections and parameters)."""

    def scaled_dot_product(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float,
    ) -> torch.Tensor:
        q16, k16, v16 = (t.to(torch.bfloat16) for t in (q, k, v))
        mask = None
        if attention_mask is not None:  # float32's lowest (`key_padding_mask`) would round to -inf in bf16
            mask = attention_mask.clamp_min(torch.finfo(torch.bfloat16).min).to(torch.bfloat16)
        return super().scaled_dot_product(q16, k16, v16, mask, dropout).to(q.dtype)


def grouped_products(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """SDPA's heads' outputs for (batch, heads, length, head size) inputs, in bf16, computed in groups of
    whole sequences of at most `SCORES_PER_GROUP` scores (one sequence at least): the queries by keys as one
    batched bf16 product (float32 sums rounded to bf16, as transformers' eager bf16 attention rounds its
    scores), scaled, masked (a finite additive 4-D mask, broadcast as SDPA broadcasts it) and softmaxed in
    float32, and the weights, rounded to bf16, by the values as another, written into the output."""
    batch, heads, queries, _ = q.shape
    keys, dim = v.shape[2], v.shape[3]
    per_group = max(1, SCORES_PER_GROUP // (heads * queries * keys))
    out = torch.empty(batch, heads, queries, dim, dtype=torch.bfloat16, device=q.device)
    for start in range(0, batch, per_group):
        end = min(batch, start + per_group)
        q16, k16, v16 = (t[start:end].to(torch.bfloat16).flatten(0, 1) for t in (q, k, v))
        scores = torch.bmm(q16, k16.transpose(1, 2)).float().mul_(scale)
        if attention_mask is not None:  # (batch or 1, heads or 1, queries or 1, keys)
            mask = attention_mask[start:end] if attention_mask.shape[0] == batch else attention_mask
            scores = scores.view(end - start, heads, queries, keys).add_(mask).view(-1, queries, keys)
        weights = torch.softmax(scores, dim=-1).to(torch.bfloat16)
        torch.bmm(weights, v16, out=out[start:end].view(-1, queries, dim))
    return out


class GroupedAttention(SiglipAttention):
    """A `SiglipAttention` (eager bf16's, without AMX) whose bf16 inputs on the CPU are computed by
    `grouped_products`, the output in the inputs' dtype; other inputs (the model moved to float32 or another
    device), dropout, calls that want a gradient, long sequences and other masks (`_groups`) take the kernel
    of the class below it (torch's SDPA, as `SiglipAttention` runs it)."""

    grouped_dtypes: tuple[torch.dtype, ...] = (torch.bfloat16,)  # the inputs' dtypes it groups

    def scaled_dot_product(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float,
    ) -> torch.Tensor:
        if self._groups(q, k, v, attention_mask, dropout):
            return grouped_products(q, k, v, attention_mask, self.scale).to(q.dtype)
        return super().scaled_dot_product(q, k, v, attention_mask, dropout)

    def _groups(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float
    ) -> bool:
        """Whether a call takes `grouped_products`: inputs of `grouped_dtypes` on the CPU, no dropout or
        gradient wanted (it has neither), a 4-D mask or none, and sequences of at most `SCORES_PER_GROUP`
        scores each, none empty."""
        if q.dtype not in self.grouped_dtypes or not q.is_cpu or dropout:
            return False
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            return False
        scores = q.shape[1] * q.shape[2] * k.shape[2]
        return (mask is None or mask.dim() == 4) and 0 < scores <= SCORES_PER_GROUP


class GroupedBf16Attention(GroupedAttention, Bf16Attention):
    """A `GroupedAttention` for eager int8 (without AMX): it groups float32 inputs too (`grouped_products`
    rounds them to bf16) and returns their dtype; the calls it does not group take `Bf16Attention`'s kernel."""

    grouped_dtypes = (torch.float32, torch.bfloat16)


class GraphBf16Attention(SiglipAttention):
    """A `SiglipAttention` for the towers a compiled mode packages on a CPU with AVX-512 BF16 and no AMX: the
    arithmetic of `grouped_products` (bf16 products, the scores rounded to bf16, a float32 softmax, the
    weights rounded to bf16) over the whole batch, as operations inductor compiles and fuses, in place of
    torch's SDPA kernel. The mask, if any, is additive and finite (a sequence left no key by -inf would give
    NaN, as in `grouped_products`). Returns the queries' dtype; dropout takes the class below."""

    def scaled_dot_product(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float,
    ) -> torch.Tensor:
        if dropout:
            return super().scaled_dot_product(q, k, v, attention_mask, dropout)
        q16, k16, v16 = (t.to(torch.bfloat16) for t in (q, k, v))
        scores = torch.matmul(q16, k16.transpose(-1, -2)).float() * self.scale
        if attention_mask is not None:  # added in float32: a finite mask stays finite
            scores = scores + attention_mask
        weights = torch.softmax(scores, dim=-1).to(torch.bfloat16)
        return torch.matmul(weights, v16).to(q.dtype)


class FusedAttention(SiglipAttention):
    """The mixin of the `Fused...` classes: calls it fuses (`_fuses`) compute in `compute_dtype` by
    `fused_attention.fused`, returned in the inputs' dtype; the others take the class after it in the method
    order (the kernel it fuses)."""

    fused_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)
    compute_dtype = torch.bfloat16

    def scaled_dot_product(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float,
    ) -> torch.Tensor:
        if self._fuses(q, k, v, attention_mask, dropout):
            return fused_attention.fused(q, k, v, self.scale, self.compute_dtype).to(q.dtype)
        return super().scaled_dot_product(q, k, v, attention_mask, dropout)

    def _fuses(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float
    ) -> bool:
        """Whether a call takes the kernel: `fused_dtypes` inputs it takes (`fused_attention.takes`), no mask,
        no dropout."""
        return (
            mask is None and not dropout and q.dtype in self.fused_dtypes and fused_attention.takes(q, k, v)
        )


class FusedGroupedAttention(FusedAttention, GroupedAttention):
    """eager bf16's `GroupedAttention`, fused: bf16 inputs only (a model moved to float32 computes in it)."""

    fused_dtypes = (torch.bfloat16,)


class FusedGroupedBf16Attention(FusedAttention, GroupedBf16Attention):
    """eager int8's `GroupedBf16Attention`, fused."""


class FusedGraphBf16Attention(FusedAttention, GraphBf16Attention):
    """The compiled modes' `GraphBf16Attention`, fused: a package calls the kernel's C shim."""


class FusedFloat32Attention(FusedAttention):
    """The fp32 `--compile` package's attention: while `torch.export` traces the tower, float32 inputs by the
    fused kernel in float32 (within ~1e-6 of torch's SDPA kernel, which it runs 1.9x as fast on a Zen 5);
    otherwise torch's SDPA, so that the tower run eagerly (a compiled fp32 tower given a mask or interpolated
    positions) keeps transformers' numbers bit for bit."""

    fused_dtypes = (torch.float32,)
    compute_dtype = torch.float32

    def _fuses(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float
    ) -> bool:
        return torch.compiler.is_exporting() and super()._fuses(q, k, v, mask, dropout)


FUSED_FORMS = {  # each kernel class of the module doc's table and its fused form
    GroupedAttention: FusedGroupedAttention,
    GroupedBf16Attention: FusedGroupedBf16Attention,
    GraphBf16Attention: FusedGraphBf16Attention,
}


def use_bf16_attention(model: nn.Module, compiled: bool = False) -> None:
    """Where int8's attention runs in bf16 (`precision.int8_attention_dtype`: a CPU with bf16 units), make every
    plain `SiglipAttention` of `model` the class of this CPU's kernel (the module doc's table; `compiled`: for
    the towers a compiled mode packages), in place; elsewhere leave it as it is."""
    if int8_attention_dtype() != torch.bfloat16:
        return
    if cpu_units().amx:
        _swap(model, Bf16Attention)
    else:
        _swap(model, GraphBf16Attention if compiled else GroupedBf16Attention)


def use_bf16_mode_attention(model: nn.Module, compiled: bool = False) -> None:
    """For the bf16 mode on a CPU with AVX-512 BF16 and no AMX, make every plain `SiglipAttention` of `model`
    (its weights bf16 on the CPU) a `GroupedAttention`, or a `GraphBf16Attention` for the towers a compiled
    mode packages (`compiled`), in place (their fused forms where the kernel runs); elsewhere (AMX, whose SDPA
    kernel runs on the tiles, or no bf16 units) leave it as it is."""
    units, weight = cpu_units(), next(model.parameters())
    if units.bf16 and not units.amx and weight.dtype == torch.bfloat16 and weight.is_cpu:
        _swap(model, GraphBf16Attention if compiled else GroupedAttention)


def use_float32_package_attention(model: nn.Module) -> None:
    """For the towers an fp32 `--compile` package is made of, make every plain `SiglipAttention` of `model` a
    `FusedFloat32Attention` where the fused kernel runs (`fused_attention.why_not`), in place."""
    if fused_attention.why_not() is None:
        _swap(model, FusedFloat32Attention)


def _swap(model: nn.Module, attention: type[SiglipAttention]) -> None:
    """Make every plain `SiglipAttention` of `model` an `attention`, or its fused form where the fused kernel
    runs (`fused_attention.why_not`)."""
    if attention in FUSED_FORMS and any(type(m) is SiglipAttention for m in model.modules()):
        why = fused_attention.why_not()
        if why is None:
            attention = FUSED_FORMS[attention]
        else:
            logger.debug("attention by %s: %s", attention.__name__, why)
    for module in model.modules():
        if type(module) is SiglipAttention:
            module.__class__ = attention
