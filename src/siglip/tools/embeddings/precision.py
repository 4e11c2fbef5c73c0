"""The precision words of every tool, training and inference alike, and the one probe of the hardware.

| word            | weights  | matrix products                    | inference | training |
|-----------------|----------|------------------------------------|-----------|----------|
| `fp32`          | float32  | float32: the reference numbers     | yes       | yes      |
| `bf16`          | bfloat16 | bfloat16                           | yes       | yes      |
| `bf16-autocast` | float32  | bfloat16 (`torch.autocast`)        | yes       | yes      |
| `fp16`          | float16  | float16 (GPUs)                     | yes       | no       |
| `int8`          | int8     | int8, per-batch activation scales  | CPU only  | no       |
| `auto`          | the word chosen for the device and the job, below                        |

A word means the same weights and the same arithmetic in every command. `auto` picks, for hardware with bf16
matrix units (CUDA compute capability 8 and newer; CPUs with AMX or AVX-512 BF16): `bf16` for inference and
`bf16-autocast` for training (which keeps float32 weights for the optimizer: AdamW's small updates vanish in
bfloat16 weights); for other GPUs: `fp16` for inference and `fp32` for training (float16 training would need
loss scaling); for other CPUs: `fp32`, since bf16 is emulated there and ~7x slower than fp32. `bf16` training
(bfloat16 weights throughout) must be asked for. fp16 and int8 are not offered for training.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from ...errors import UsageError

PRECISIONS = {
    "auto": "the fastest precision the device runs natively (see siglip.tools.embeddings.precision)",
    "fp32": "float32 weights and arithmetic: the reference numbers",
    "bf16": "bfloat16 weights and arithmetic",
    "bf16-autocast": "float32 weights; matrix products in bfloat16 (torch.autocast)",
    "fp16": "float16 weights and arithmetic (GPUs)",
    "int8": "linear layers in int8 with per-batch activation scales (CPU; torch dynamic quantisation)",
}
TRAINING_PRECISIONS = ("auto", "fp32", "bf16", "bf16-autocast")
BF16_UNITS_VARIABLE = "SIGLIP_BF16_UNITS"


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware (else bf16 is emulated: slower than fp32).

    The one hardware probe (`torch.cuda.is_bf16_supported()` says yes for GPUs that only emulate bf16). The
    environment variable `SIGLIP_BF16_UNITS=0` makes it answer no everywhere, so that `auto` gives fp32
    reference numbers on any machine (the test suite sets it); `1` makes it answer yes.
    """
    override = os.environ.get(BF16_UNITS_VARIABLE, "").strip()
    if override in ("0", "1"):
        return override == "1"
    device = torch.device(device)
    if device.type == "cuda":  # Ampere (8.x) and newer; older GPUs only emulate bf16
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return False


@dataclass(frozen=True)
class Precision:
    """A resolved precision word: the dtype of the weights and of `torch.autocast` (None: no autocast)."""

    name: str
    weights: torch.dtype
    autocast: torch.dtype | None = None

    def context(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """The context the model runs in: `torch.autocast` for the autocast words, nothing otherwise."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=self.autocast)


_RESOLVED = {
    "fp32": Precision("fp32", torch.float32),
    "bf16": Precision("bf16", torch.bfloat16),
    "bf16-autocast": Precision("bf16-autocast", torch.float32, torch.bfloat16),
    "fp16": Precision("fp16", torch.float16),
    "int8": Precision("int8", torch.float32),  # float weights until `InferenceMode.apply` quantises them
}


def precision_of_dtype(dtype: torch.dtype) -> str:
    """The word for weights of `dtype` run as they are (no autocast, no quantisation): the inverse of the
    weights column of the table above."""
    for word, precision in _RESOLVED.items():
        if precision.weights == dtype and precision.autocast is None and word != "int8":
            return word
    raise UsageError(
        f"no precision word has {dtype} weights; siglip runs float32, bfloat16 or float16 weights"
    )


def as_precision(word: str) -> Precision:
    """The weights and autocast dtypes of a word other than "auto" (which needs a device: `resolve_precision`)."""
    if word == "auto":
        raise UsageError("precision 'auto' depends on the device: resolve the mode for a device first")
    return _RESOLVED[check_precision(word)]


def check_precision(word: str, training: bool = False) -> str:
    """`word` when it is a precision word the job accepts, else a `UsageError` listing those it does."""
    accepted = TRAINING_PRECISIONS if training else tuple(PRECISIONS)
    if word not in accepted:
        job = "training" if training else "inference"
        raise UsageError(f"precision must be one of {', '.join(accepted)} for {job}; got {word!r}")
    return word


def resolve_precision(word: str, device: torch.device | str, training: bool = False) -> Precision:
    """The precision a word means on `device` for inference or for `training` (see the module doc)."""
    check_precision(word, training)
    device = torch.device(device)
    if word == "auto":
        if native_bf16(device):
            word = "bf16-autocast" if training else "bf16"
        else:
            word = "fp16" if device.type == "cuda" and not training else "fp32"
    if word == "int8" and device.type != "cpu":
        raise UsageError(
            f"precision 'int8' runs on the CPU only, not on {device}; use bf16 or fp16 there, or --device cpu"
        )
    return _RESOLVED[word]
