"""Inference modes: a precision (reduced float, or int8 quantisation from `siglip.tools.embeddings.int8`) and
torch.compile, applied to a loaded model. ONNX export is `siglip.tools.embeddings.onnx_export`.

    from siglip import SiglipModel
    from siglip.tools.embeddings.inference import InferenceMode

    mode = InferenceMode("int8").resolve("cpu")   # or "bf16", "bf16-autocast", "fp16", "fp32", "auto"
    model = mode.apply(SiglipModel.from_pretrained("google/siglip-base-patch16-224"))
    with mode.autocast(model.device):
        image_features = model.get_image_features(pixel_values)

What each costs against fp32 (embedding cosine, zero-shot agreement) and gains in speed is measured by
`benchmarks/bench_models.py` and listed in BENCHMARKS.md. `"auto"` picks bf16 on Ampere and newer GPUs and
CPUs with AMX, fp16 on older GPUs, int8 on other x86 CPUs (AVX2 and newer) and fp32 elsewhere: the table in
`siglip.tools.embeddings.precision`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

import torch

from ...core.auto import TwoTowerModel
from ...core.cpu import prepare_cpu_compute
from ...errors import UsageError
from .attention import use_bf16_mode_attention
from .calibration import Calibration
from .compiled import (
    PACKAGED,
    PACKAGED_UNASKED,
    compile_towers,
    image_package_cached,
    missing_for_compile,
)
from .int8 import use_eager_int8
from .onednn import use_fused_linears
from .precision import as_precision, check_precision, resolve_precision


@dataclass(frozen=True)
class InferenceMode:
    """How a model runs for inference: `precision` (a key of PRECISIONS) and whether towers are compiled.

    `compile=True` on the CPU in fp32, bf16, fp16 or int8 compiles each tower ahead of time with its weights
    frozen into the graph (`siglip.tools.embeddings.compiled.CompiledTower`; int8 through torchao's PT2E, the
    `int8` extra): the first call on a machine compiles for 25-60 s per base tower on 2 cores and keeps a
    package in `compiled_cache()`, which later processes load in about a second. The base image tower then
    ran 1.2x eager bf16 (0.6-1.1x at batches 8-32 on a CPU with AMX, whose eager bf16 fuses its linears:
    `onednn`), 1.2-1.5x eager int8 (2 threads; BENCHMARKS.md), and in fp32 2.1-3.2x the eager towers on a
    Zen 5 (oneDNN's products on packed weights, where transformers' go to MKL: within ~4e-6 of them, where the
    eager fp32 tower is transformers' bit for bit). Such a tower takes its pixels or token ids only (no
    attention mask, no interpolated positions; given those, an fp32 one runs its eager tower). Otherwise
    (bf16-autocast, or another device) both towers go through `torch.compile` with dynamic batch sizes: the
    first batch of each process compiles for 20-60 s (less when inductor's on-disk cache is warm). A batch of
    one image or text compiles once more (torch specialises size 1).

    `compile="cached"` (`compiled.CACHED`, what `siglip embed` chooses for jobs too small to pay a compile
    back) compiles as `True` where the fixed-resolution image tower's package is in the cache already (a
    text tower's package compiles on its first call), and runs eager otherwise; fp32 stays eager (its
    package only when asked).

    "int8-static" is always compiled ahead of time (`compile` is not read): each tower's activation scales
    are calibrated on the inputs of its kind in `calibration` (`siglip.tools.embeddings.calibration`), which
    it needs; a tower with none there runs compiled int8 with per-call scales.
    """

    precision: str = "auto"
    compile: bool | str = False
    calibration: Calibration | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_precision(self.precision)

    def resolve(self, device: torch.device | str) -> InferenceMode:
        """This mode with "auto" replaced by the precision chosen for `device`; refuses int8 off the CPU."""
        return replace(self, precision=resolve_precision(self.precision, device).name)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (and of the input pixels) in this mode."""
        return as_precision(self.precision).weights

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """The context to run the model in: bf16 autocast for "bf16-autocast", nothing otherwise."""
        return as_precision(self.precision).context(device)

    def apply(self, model: TwoTowerModel) -> TwoTowerModel:
        """Put a (float32) model into this mode, in place, and return it in eval mode.

        The mode must be resolved (no "auto"). int8 replaces every `nn.Linear` of the encoders and heads (the
        MAP head's packed input projection split into two first) by an `int8.Int8Linear` (weights int8 per
        output channel, activations quantised per call, the bias, GELU and residual adds inside oneDNN's
        int8 products; torch's dynamically quantised linear where its kernel cannot be built:
        `int8.use_eager_int8`), runs the attention's own products in bf16 on a CPU with bf16 units
        (`int8.prepare_for_int8`), and a large batch runs each encoder layer in groups of sequences
        (`int8.int8_linear_rows_per_call`); the model can then no longer be saved as a checkpoint of the
        original format. bf16 on an x86 CPU with bf16 units makes them
        `onednn.FusedLinear`s (the same parameters; the bias, the MLP's GELU and the residual adds inside
        oneDNN's products), and without AMX runs the attention in groups of sequences
        (`attention.GroupedAttention`). On the CPU, freed memory stays in the process's heap for the next
        batch from then on (`core.heap`; where the C library is glibc), and torch runs no more threads than
        the process may use cores (a container's CPU quota): `core.cpu.prepare_cpu_compute`.
        """
        model = model.eval().to(self.dtype)
        if model.device.type == "cpu":
            prepare_cpu_compute()  # each batch's activations reuse the last one's memory
        if self.precision == "int8-static":  # the CPU only (`resolve`)
            missing = missing_for_compile(self.precision)
            if missing:
                raise UsageError(f"precision 'int8-static' is compiled ahead of time, but {missing}")
            compile_towers(model, self.precision, self.calibration)
            return model
        packaged = self.compile and self.precision in PACKAGED and model.device.type == "cpu"
        if packaged and (
            self.compile is True  # fp32 only when asked: its eager towers are transformers' own bit for bit
            or (self.precision in PACKAGED_UNASKED and image_package_cached(model, self.precision))
        ):
            compile_towers(model, self.precision)  # ahead of time, with freezing, kept as packages
            return model
        if self.precision == "int8":
            use_eager_int8(model)
        if self.precision == "bf16":  # on a CPU with bf16 units: bias, GELU and residual adds in the products
            use_fused_linears(model)
            use_bf16_mode_attention(model)
        if self.compile is True:  # no package: another device, or bf16-autocast
            for tower in (model.text_model, model.vision_model):
                tower.compile(dynamic=True)
        return model
