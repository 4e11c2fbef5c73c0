"""bf16 inference on the CPU with the bias, the MLP's GELU and the residual adds inside oneDNN's products.

An eager bf16 linear layer on the CPU (`F.linear`, aten's `addmm`) first copies its bias into the output and
then accumulates the product onto it; the MLP's GELU then reads and writes the 3072-wide activations once more,
in a bf16 kernel slower than the product itself, and each residual add once more again. On the base image
tower at batch 32 (2 threads, a Xeon with AMX) the GELU took 19% of the tower's time, the bias copies 9% and
the adds 5%. oneDNN's fused linear (`torch.ops.mkldnn._linear_pointwise`, the kernel inductor calls for a
compiled linear) adds the bias, applies the GELU or adds the residual on the float32 accumulator before
rounding to bf16 (BENCHMARKS.md has the speed against transformers' bf16), with the same cosine to fp32.
A call takes a copy of the weight packed into oneDNN's own layout, which the plain weight is reordered into on
every call (at one text or one image the reorder is a third of the product's time): every call on a CPU
without AMX, a call of a few rows with AMX, where oneDNN runs larger calls faster on the plain weight.

Only for bf16 on an x86 CPU with bf16 units (AVX-512 BF16 or AMX), applied by `InferenceMode("bf16").apply`
(what `siglip embed`, `siglip serve` and `Embedder.from_pretrained` run); fp32 keeps aten's kernels and
transformers' numbers bit for bit. The layers keep their parameters and names, so the model saves as before;
where autograd needs a gradient, or once the model is moved to another dtype or device, they compute as
`nn.Linear` does (the fused kernel has no backward and runs bf16 on the CPU only).
"""

from __future__ import annotations

import platform
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...core.two_tower.modeling import ACTIVATIONS, SiglipEncoderLayer, SiglipMLP
from .groups import GroupedEncoderLayer
from .precision import cpu_bf16_units, cpu_units

# The MLP activations oneDNN applies inside the product: the activation, and its post-op and algorithm.
POST_OPS: dict[Callable, tuple[str, str]] = {
    ACTIVATIONS["gelu_pytorch_tanh"]: ("gelu", "tanh"),
    ACTIVATIONS["gelu"]: ("gelu", "none"),
}

# On a CPU with AMX, calls of at most this many rows (the batch's tokens) take the packed weight: 1.3-1.5x the
# plain weight's product at 64-197 rows (one text, one image of a base tower). From ~512 rows oneDNN picks
# another algorithm there for a packed 3072-wide input, slower than the plain weight's (BENCHMARKS.md): larger
# calls keep the plain one. With AVX-512 BF16 and no AMX (AMD Zen 5) the packed weight was the faster at every
# size measured, up to 6,304 rows (`packed_up_to_rows`).
PACKED_UP_TO_ROWS = 256

# An encoder layer's call of more rows than this runs in equal groups of whole sequences: at ~6,300 rows
# (32 images of a base tower) the MLP's 3072-wide activations no longer stay in the cache and the image tower
# ran 0.75-0.82x as fast per image as in two groups of 16 images on the AMX machine (BENCHMARKS.md); at 24
# images (4,728 rows) groups gained nothing, and 16 images in groups of 8 lost 6%.
ROWS_PER_CALL = 4096


class FusedLinear(nn.Linear):
    """`linear`'s parameters (shared, not copied) in one oneDNN call that adds the bias and applies
    `activation` (a key of `POST_OPS`, or None) on the float32 accumulator. With an activation it is no
    longer linear: a tool that wraps `nn.Linear` layers (LoRA adapters) must be applied before
    `use_fused_linears`, not after.

    The first call of at most `packed_rows` rows (`packed_up_to_rows`: any number without AMX) packs a copy of
    the weight into oneDNN's blocked layout and keeps it for such calls (memory: the weight's size once
    more); the copy is made again after the weight changes as autograd's version counter sees it (an
    optimiser step, `load_state_dict`, any in-place op) or becomes another tensor (a new parameter, `.data
    =`), is dropped when the layer is moved or cast (`.to()`), and is not pickled or deep-copied. Writes the
    counter does not see (through `.data`, the storage, or memory shared with numpy) must be followed by
    `drop_packed_weights`. Weights made under `torch.inference_mode` (no version counter) are not packed."""

    _packed: tuple[torch.Tensor, int | None, torch.Tensor] | None = None  # `packed_copy`; class-level for
    # layers pickled whole by a version without it
    packed_rows: int | None = PACKED_UP_TO_ROWS  # the most rows a call may have to take the packed weight

    def __init__(self, linear: nn.Linear, activation: Callable | None = None) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.activation = activation
        self.post_op, self.algorithm = POST_OPS[activation] if activation else ("none", "")
        self.packed_rows = packed_up_to_rows()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fused(x):
            out = F.linear(x, self.weight, self.bias)
            return self.activation(out) if self.activation else out
        weight = self._weight_for(x)
        return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, self.post_op, [], self.algorithm)

    def add_to(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """`residual + self(x)`, the add inside the product (for a layer without an activation)."""
        if not self._fused(x, residual):
            return residual + self(x)
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self._weight_for(x), self.bias, "add")

    def _weight_for(self, x: torch.Tensor) -> torch.Tensor:
        """The plain weight for a call of more than `packed_rows` rows; else its packed copy, packed again if the
        weight changed since (another parameter, or the same one written in place)."""
        weight = self.weight
        rows = self.packed_rows
        if (rows is not None and x.numel() > rows * self.in_features) or weight.is_inference():
            return weight
        self._packed = packed_copy(self._packed, weight, torch.ops.mkldnn._reorder_linear_weight)
        return self._packed[2]

    def _apply(self, fn: Callable, recurse: bool = True) -> FusedLinear:
        self._packed = None  # moved or cast (`.to()`, `.float()`): the copy would only hold memory
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_packed": None}  # oneDNN's layout has no storage to copy

    def _fused(self, *inputs: torch.Tensor) -> bool:
        """Whether this call takes the fused kernel: bf16 weights on the CPU (a model moved to another dtype or
        device computes as `nn.Linear`), and no gradient wanted (the kernel has no backward)."""
        if self.weight.dtype is not torch.bfloat16 or not self.weight.is_cpu:
            return False
        if not torch.is_grad_enabled():  # inference mode and no_grad: the usual case, checked first
            return True
        return not any(t is not None and t.requires_grad for t in (*inputs, self.weight, self.bias))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, post_op={self.post_op!r}"


class FusedEncoderLayer(GroupedEncoderLayer):
    """A `SiglipEncoderLayer` whose attention output projection and second MLP layer add the residual inside
    their products, and which runs a batch of more than `rows_per_call` tokens in groups of sequences.
    `use_fused_layers` makes one by swapping the class of a layer whose `out_proj` and `fc2` are
    `FusedLinear`s or int8's `Int8Linear`s: the same modules and parameters. Its forward calls the attention's
    `attend` and the MLP's layers itself, so forward hooks on `self_attn`, `mlp`, `out_proj` and `fc2` do not
    fire."""

    rows_per_call = ROWS_PER_CALL

    def _groups_pay(self, x: torch.Tensor) -> bool:
        return self.mlp.fc2._fused(x)  # not on the plain layers' path

    def _one_call(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None, output_attentions: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn, mlp = self.self_attn, self.mlp
        out, weights = attn.attend(self.layer_norm1(x), attention_mask, output_attentions)
        x = attn.out_proj.add_to(out, x)
        x = mlp.fc2.add_to(mlp.activation(mlp.fc1(self.layer_norm2(x))), x)
        return x, weights


def packed_copy(
    packed: tuple[torch.Tensor, int | None, torch.Tensor] | None,
    weight: torch.Tensor,
    pack: Callable[[torch.Tensor, None], torch.Tensor],
) -> tuple[torch.Tensor, int | None, torch.Tensor]:
    """`packed` (source, version, copy in oneDNN's layout) if it was made from `weight` as it is now, else a
    new one made by `pack(weight, None)`: `weight` is another tensor (a new parameter, `.data =`, a
    `load_state_dict` that replaced it; the source is held, so its address is not reused) or the same one
    written in place (autograd's version counter; none for a tensor made under `torch.inference_mode`)."""
    version = None if weight.is_inference() else weight._version
    if packed is None or packed[0].data_ptr() != weight.data_ptr() or packed[1] != version:
        source = weight.detach()
        packed = (source, version, pack(source, None))
    return packed


def packed_up_to_rows() -> int | None:
    """The most rows (tokens) a `FusedLinear`'s call may have to take its packed weight on this CPU:
    `PACKED_UP_TO_ROWS` with AMX, any number (None) without. On a 2-core AMD Zen 5 (AVX-512 BF16, no AMX),
    packed weights in every call ran the base towers 1.05-1.06x (images) and 1.11x (texts) faster than
    packing only calls of at most 256 rows, at 8 and 32 items (BENCHMARKS.md)."""
    return PACKED_UP_TO_ROWS if cpu_units().amx else None


def fused_linears_available(device: torch.device | str) -> bool:
    """Whether `device` is an x86 CPU with bf16 units (AVX-512 BF16 or AMX) and torch's oneDNN (the fused
    linear's kernel). Other CPUs keep aten's kernels: oneDNN emulates bf16 on plain AVX-512, and ARM's
    oneDNN has bf16 products too, but neither was measured."""
    return (
        torch.device(device).type == "cpu"
        and platform.machine().lower() in ("x86_64", "amd64")
        and torch.backends.mkldnn.is_available()
        and cpu_bf16_units()
    )


def use_fused_linears(model: nn.Module) -> None:
    """Make every `nn.Linear` of a bf16 `model` on the CPU a `FusedLinear`, in place, each MLP's first one
    with the MLP's GELU (which the MLP then skips), and every encoder layer a `FusedEncoderLayer`; nothing
    where `fused_linears_available` says no or the weights are not bf16 (fp32 keeps transformers' numbers).
    Subclasses of `nn.Linear` (`nn.MultiheadAttention`'s output projection) are left as they are."""
    weight = next(model.parameters())
    if weight.dtype != torch.bfloat16 or not fused_linears_available(weight.device):
        return
    replace_linears(model, FusedLinear)
    use_fused_layers(model, ROWS_PER_CALL)


def replace_linears(model: nn.Module, make: Callable[[nn.Linear, Callable | None], nn.Module]) -> None:
    """Replace every `nn.Linear` of `model` by `make(linear, activation)`, in place: each MLP's first layer
    with the MLP's activation where oneDNN applies it inside the product (a key of `POST_OPS`; the MLP then
    skips it), the others with None. Subclasses of `nn.Linear` are left as they are."""
    for parent in list(model.modules()):
        if isinstance(parent, SiglipMLP) and parent.activation in POST_OPS and type(parent.fc1) is nn.Linear:
            parent.fc1 = make(parent.fc1, parent.activation)
            parent.activation = _identity
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, make(child, None))


def use_fused_layers(model: nn.Module, rows_per_call: int) -> None:
    """Make every plain `SiglipEncoderLayer` of `model` whose attention output projection and second MLP
    layer add the residual inside their products (`add_to`: `FusedLinear`, int8's `Int8Linear`) a
    `FusedEncoderLayer` running at most `rows_per_call` tokens a call, in place."""
    for layer in model.modules():
        if type(layer) is SiglipEncoderLayer and all(
            hasattr(linear, "add_to") for linear in (layer.self_attn.out_proj, layer.mlp.fc2)
        ):
            layer.__class__ = FusedEncoderLayer
            layer.rows_per_call = rows_per_call


def drop_packed_weights(model: nn.Module) -> None:
    """Forget the packed weight copies of `model`'s `FusedLinear`s (the next call that takes one packs again):
    after writing weights where autograd's version counter does not see it (`.data`, the storage, memory
    shared with numpy), which would otherwise leave those calls on the old values."""
    for layer in model.modules():
        if isinstance(layer, FusedLinear):
            layer._packed = None


def _identity(x: torch.Tensor) -> torch.Tensor:
    """The activation of an MLP whose first layer applies it."""
    return x
