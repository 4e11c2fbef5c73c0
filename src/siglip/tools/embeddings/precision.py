"""The precision words of every tool, training and inference alike, and the one probe of the hardware.

| word            | weights  | matrix products                                       | inference | training |
|-----------------|----------|-------------------------------------------------------|-----------|----------|
| `fp32`          | float32  | float32: the reference numbers                        | yes       | yes      |
| `bf16`          | bfloat16 | bfloat16                                              | yes       | yes      |
| `bf16-autocast` | float32  | bfloat16 (`torch.autocast`)                           | yes       | yes      |
| `fp16`          | float16  | float16 (GPUs)                                        | yes       | no       |
| `int8`          | int8     | int8, per-call activation scales                      | CPU only  | no       |
| `int8-static`   | int8     | int8, activation scales calibrated ahead (compiled)   | CPU only  | no       |
| `auto`          | the word chosen for the device and the job, below                                         |

A word means the same weights and the same arithmetic in every command. `auto` picks, for inference:

| device                                                     | `auto` (inference) | `auto` (training) |
|------------------------------------------------------------|--------------------|-------------------|
| GPU with bf16 units (CUDA compute capability >= 8)         | `bf16`             | `bf16-autocast`   |
| other GPUs                                                 | `fp16`             | `fp32`            |
| CPU with AMX                                               | `bf16`             | `bf16-autocast`   |
| other x86 CPU with int8 kernels (AVX2; AVX-512 BF16 or not) | `int8`             | `bf16-autocast` with AVX-512 BF16, else `fp32` |
| any other CPU with AVX-512 BF16                            | `bf16`             | `bf16-autocast`   |
| any other CPU                                              | `fp32`             | `fp32`            |

Why: int8 is the fastest mode that keeps the issue-26 bounds (cosine >= 0.995 to fp32, zero-shot agreement
>= 99% on the bundled model) on x86 CPUs without AMX: on a 2-core AMD Zen 5 with AVX-512 VNNI and BF16,
eager int8 ran the base towers 5.6-6.7x transformers fp32 and 1.32-1.56x eager bf16 at batches 1-32
(BENCHMARKS.md), and 1.5-2.2x the fp32 towers (transformers' kernels) on AVX2 without VNNI (a Xeon, a Zen 4
and a Zen 5 held to AVX2), where bf16 is emulated (~7x slower than fp32). With AMX, eager bf16 runs on the
tiles and beats eager int8, nearer fp32: the embedding job ran 2.6-3.4x the transformers fp32 loop against
int8's 2.2x, cosine 0.99996 against 0.99941 (a 2-core Xeon with AMX, BENCHMARKS.md). Training keeps float32
weights for the optimizer (AdamW's small updates vanish in bfloat16 weights): `bf16` training must be asked
for; fp16 and int8 are not offered for it.
`int8-static` is never chosen by `auto`: its embeddings depend on the calibration inputs the user gives
(`siglip.tools.embeddings.calibration`).
`SIGLIP_BF16_UNITS=0` makes `auto` mean fp32 on every device (the test suite's pin), `1` says bf16 units
are there.

A CPU's units count where oneDNN (the kernels of bf16, int8 and AMX here) may use them: its ISA cap,
`ONEDNN_MAX_CPU_ISA` (or the older `MKLDNN_`/`DNNL_MAX_CPU_ISA`), hides the units above the level it names, as
on a CPU without them (`ONEDNN_MAX_CPU_ISA=AVX2` on a CPU with AMX: `auto` is int8 without VNNI, not bf16
emulated on AVX2).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from ...errors import UsageError

PRECISIONS = {
    "auto": "the fastest sound precision for the device (see siglip.tools.embeddings.precision)",
    "fp32": "float32 weights and arithmetic: the reference numbers",
    "bf16": "bfloat16 weights and arithmetic",
    "bf16-autocast": "float32 weights; matrix products in bfloat16 (torch.autocast)",
    "fp16": "float16 weights and arithmetic (GPUs)",
    "int8": "linear layers in int8 with per-call activation scales (CPU; oneDNN's int8 products, torchao PT2E with compile)",
    "int8-static": "linear layers in int8 with activation scales calibrated ahead on --calibration inputs (CPU; always compiled, torchao PT2E)",
}
TRAINING_PRECISIONS = ("auto", "fp32", "bf16", "bf16-autocast")
# the words that quantise to int8: on the CPU only, with float32 weights until `InferenceMode.apply` quantises
INT8_PRECISIONS = ("int8", "int8-static")
BF16_UNITS_VARIABLE = "SIGLIP_BF16_UNITS"


def _units_override() -> bool | None:
    """The `SIGLIP_BF16_UNITS` pin: True ("1"), False ("0"), or None (probe the hardware)."""
    override = os.environ.get(BF16_UNITS_VARIABLE, "").strip()
    return override == "1" if override in ("0", "1") else None


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware (else bf16 is emulated: slower than fp32).

    The one hardware probe for bf16 (`torch.cuda.is_bf16_supported()` says yes for GPUs that only emulate
    bf16). The environment variable `SIGLIP_BF16_UNITS=0` makes it answer no everywhere, so that `auto`
    gives fp32 reference numbers on any machine (the test suite sets it); `1` makes it answer yes.
    """
    override = _units_override()
    if override is not None:
        return override
    device = torch.device(device)
    if device.type == "cuda":  # Ampere (8.x) and newer; older GPUs only emulate bf16
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return cpu_bf16_units()
    return False


# What each level of oneDNN's ISA cap lets it use, of the units the choices here depend on. A level is a set
# of features, not a rank: AVX512_CORE leaves out AVX2_VNNI's AVX-VNNI, AVX512_CORE_VNNI has AVX-512's VNNI only.
_AVX512_BF16 = frozenset({"avx2", "avx512_vnni", "bf16"})
_AVX10 = _AVX512_BF16 | {"avx_vnni"}
_AMX = _AVX10 | {"amx"}
_ONEDNN_LEVELS = {
    "SSE41": frozenset(), "AVX": frozenset(), "AVX2": frozenset({"avx2"}), "AVX512_CORE": frozenset({"avx2"}),
    "AVX2_VNNI": frozenset({"avx2", "avx_vnni"}), "AVX2_VNNI_2": frozenset({"avx2", "avx_vnni"}),
    "AVX512_CORE_VNNI": frozenset({"avx2", "avx512_vnni"}), "AVX512_CORE_BF16": _AVX512_BF16,
    "AVX512_CORE_FP16": _AVX10, "AVX10_1_512": _AVX10, "AVX10_2": _AVX10, "AVX10_2_512": _AVX10,
    "AVX512_CORE_AMX": _AMX, "AVX10_1_512_AMX": _AMX, "AVX512_CORE_AMX_FP16": _AMX,
    "AVX10_1_512_AMX_FP16": _AMX, "AVX10_2_AMX_2": _AMX, "AVX10_2_512_AMX_2": _AMX,
}  # fmt: skip
# oneDNN takes its cap from the first of these that is set and not empty (ideep copies the MKLDNN_ name onto
# the DNNL_ one); the value is matched whole, in any case
ONEDNN_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "MKLDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# every variable that holds one of torch's kernel libraries below the CPU's instructions (fbgemm: int8 where
# oneDNN is missing; MKL: fp32 products; ATen: its own vectorised kernels): what code compiled for this
# machine depends on besides its flags
ISA_CAPS = (
    *ONEDNN_CAP_VARIABLES,
    "FBGEMM_ENABLE_INSTRUCTIONS",
    "MKL_ENABLE_INSTRUCTIONS",
    "ATEN_CPU_CAPABILITY",
)


@dataclass(frozen=True)
class CpuUnits:
    """The units of this CPU that oneDNN (torch's bf16, int8 and AMX kernels) may use: the hardware's, less
    those its ISA cap in the environment hides (`cap`: the variable that hid one, as `NAME=value`)."""

    avx2: bool
    vnni: bool  # int8 dot products without 16-bit pair sums: AVX-512 VNNI or AVX-VNNI
    bf16: bool  # bf16 dot products: AVX-512 BF16 or AMX
    amx: bool
    cap: str | None = None


def cpu_units() -> CpuUnits:
    """The one probe of this CPU's units, read again at each call (oneDNN reads its cap once, before its first
    product: set it before the process starts)."""
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    hardware = {
        "avx2": torch.cpu._is_avx2_supported(),
        "avx512_vnni": torch.cpu._is_vnni_supported(),
        "avx_vnni": bool(capabilities.get("avx_vnni", False)),
        "bf16": torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported(),
        "amx": torch.cpu._is_amx_tile_supported(),
    }
    variable = next((name for name in ONEDNN_CAP_VARIABLES if os.environ.get(name)), None)
    # None: no cap (no variable, or DEFAULT, ALL and the names oneDNN ignores)
    allowed = _ONEDNN_LEVELS.get(os.environ[variable].upper()) if variable else None
    usable = {unit: present and (allowed is None or unit in allowed) for unit, present in hardware.items()}
    return CpuUnits(
        avx2=usable["avx2"],
        vnni=usable["avx512_vnni"] or usable["avx_vnni"],
        bf16=usable["bf16"],
        amx=usable["amx"],
        cap=f"{variable}={os.environ[variable]}" if usable != hardware else None,
    )


def isa_caps() -> tuple[str, ...]:
    """The variables of `ISA_CAPS` set in the environment, as `NAME=value`."""
    return tuple(f"{name}={os.environ[name]}" for name in ISA_CAPS if os.environ.get(name))


def cpu_bf16_units() -> bool:
    """Whether this CPU has bf16 matrix units (AMX or AVX-512 BF16) its kernels may use, whatever
    `SIGLIP_BF16_UNITS` says: the probe under `native_bf16`, for a choice of kernels rather than of precision
    (`onednn`)."""
    return cpu_units().bf16


def fast_int8(device: torch.device | str) -> bool:
    """Whether `device` is a CPU whose int8 products beat fp32: x86 with AVX2 or better (torch's fbgemm and
    oneDNN kernels; VNNI makes them faster still). No under `SIGLIP_BF16_UNITS=0`, like `native_bf16`."""
    if _units_override() is False or torch.device(device).type != "cpu":
        return False
    return cpu_units().avx2 and "onednn" in torch.backends.quantized.supported_engines


def has_amx(device: torch.device | str) -> bool:
    """Whether `device` is a CPU with AMX tiles its kernels may use (no under `SIGLIP_BF16_UNITS`, which pins
    the units either way). Eager bf16 runs its products on them: faster than eager int8 there (`auto` prefers
    it), and as fast as a compiled bf16 tower for all but the smallest models (`compiled.eager_as_fast`)."""
    device = torch.device(device)
    return device.type == "cpu" and _units_override() is None and cpu_units().amx


def int8_attention_dtype() -> torch.dtype:
    """The dtype int8's attention products (queries by keys, weights by values) may run in on this CPU: bf16
    where it has bf16 units, AMX or AVX-512 BF16 (`siglip.tools.embeddings.attention` chooses the kernel, and
    keeps float32 where bf16 gained nothing), float32 elsewhere and under `SIGLIP_BF16_UNITS=0` (reference
    numbers)."""
    return torch.bfloat16 if _units_override() is not False and cpu_units().bf16 else torch.float32


def auto_precision(device: torch.device | str, training: bool = False, int8: bool = True) -> tuple[str, str]:
    """The word `auto` means on `device` (see the module doc), and why, in words for the user (naming the ISA
    cap that hid a CPU's units); without `int8`, for a model that has no int8 mode (an image classifier),
    the float word of the same table."""
    device = torch.device(device)
    amx = has_amx(device)
    units = cpu_units() if device.type == "cpu" else None
    cap = f" ({units.cap})" if units is not None and units.cap and _units_override() is None else ""
    if int8 and not training and not amx and fast_int8(device):
        vnni = "with" if units.vnni else "without"
        return "int8", f"auto: the fastest sound mode on a CPU without AMX, int8 kernels {vnni} VNNI{cap}"
    if native_bf16(device):
        return ("bf16-autocast" if training else "bf16"), f"auto: {'AMX' if amx else 'bf16 units'}{cap}"
    if device.type == "cuda":
        return ("fp32", "auto: no bf16 units") if training else ("fp16", "auto: a GPU without bf16 units")
    return "fp32", "auto: no bf16 units" + ("" if training else " or int8 kernels") + cap


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
    "int8-static": Precision("int8-static", torch.float32),
}


def precision_of_dtype(dtype: torch.dtype) -> str:
    """The word for weights of `dtype` run as they are (no autocast, no quantisation): the inverse of the
    weights column of the table above."""
    for word, precision in _RESOLVED.items():
        if precision.weights == dtype and precision.autocast is None and word not in INT8_PRECISIONS:
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
        word, _ = auto_precision(device, training)
    if word in INT8_PRECISIONS and device.type != "cpu":
        raise UsageError(
            f"precision {word!r} runs on the CPU only, not on {device}; use bf16 or fp16 there, or --device cpu"
        )
    return _RESOLVED[word]
