"""int8 inference on the CPU: every linear layer dynamically quantised (`quantize_linear_layers`), and a
faster tanh-GELU for the MLPs (`use_fast_gelu`). `InferenceMode("int8").apply(model)` does both."""

from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn

from ...core.two_tower.modeling import ACTIVATIONS, SiglipMLP


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
