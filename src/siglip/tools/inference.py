"""Inference modes: reduced precision, int8 quantisation, torch.compile, and ONNX export of both towers.

    from siglip import SiglipModel
    from siglip.tools.inference import InferenceMode

    mode = InferenceMode("int8").resolve("cpu")   # or "bf16", "bf16-autocast", "fp16", "fp32", "auto"
    model = mode.apply(SiglipModel.from_pretrained("google/siglip-base-patch16-224"))
    with mode.autocast(model.device):
        image_features = model.get_image_features(pixel_values)

What each costs against fp32 (embedding cosine, zero-shot agreement) and gains in speed is measured by
`benchmarks/bench_models.py` and listed in BENCHMARKS.md. `"auto"` picks bf16 on hardware with bf16 matrix
units (Ampere and newer GPUs, CPUs with AMX or AVX-512 BF16), fp16 on older GPUs and fp32 on other CPUs,
where bf16 is emulated and slower than fp32. int8 is never chosen automatically: it trades accuracy for speed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core.hub import staged_directory
from ..core.siglip.modeling import ACTIVATIONS, SiglipMLP, SiglipModel
from ..errors import UsageError
from .deps import require
from .precision import as_precision, check_precision, resolve_precision


@dataclass(frozen=True)
class InferenceMode:
    """How a model runs for inference: `precision` (a key of PRECISIONS) and whether towers are compiled.

    `compile=True` runs both towers through `torch.compile` with dynamic batch sizes: the first batch takes
    20-45 s to compile for a base model on a 2-core CPU (less when PyTorch's cache is warm), then its image
    tower runs 2-11% faster there (BENCHMARKS.md). A batch of one image or text compiles once more (torch specialises size 1).
    Worth it for large collections, not for a handful of images.
    """

    precision: str = "auto"
    compile: bool = False

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

    def apply(self, model: SiglipModel) -> SiglipModel:
        """Put a (float32) model into this mode, in place, and return it in eval mode.

        The mode must be resolved (no "auto"). int8 replaces every `nn.Linear` of the encoders and heads by
        torch's dynamically quantised linear (weights int8 per tensor, activations quantised per batch); the
        model can then no longer be saved as a checkpoint of the original format.
        """
        model = model.eval().to(self.dtype)
        if self.precision == "int8":
            quantize_linear_layers(model)
            use_fast_gelu(model)
        if self.compile:
            for tower in (model.text_model, model.vision_model):
                tower.compile(dynamic=True)
        return model


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
        from torch.ao.quantization import quantize_dynamic

        try:
            torch.backends.quantized.engine = "onednn" if "onednn" in engines else engine
            return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
        finally:
            torch.backends.quantized.engine = engine


# --- ONNX export --------------------------------------------------------------------------------------------
# tower -> (file, input, output, the SiglipModel method the graph computes)
ONNX_TOWERS = {
    "vision": ("vision_model.onnx", "pixel_values", "image_embeds", "get_image_features"),
    "text": ("text_model.onnx", "input_ids", "text_embeds", "get_text_features"),
}


class _TowerFeatures(nn.Module):
    """One tower's features as a module of one input: what the exporter traces."""

    def __init__(self, model: SiglipModel, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(inputs)


def _example_inputs(model: SiglipModel, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Random pixels in [-1, 1] and token ids of the model's sizes, per tower."""
    vision, text = model.config.vision_config, model.config.text_config
    generator = torch.Generator().manual_seed(seed)
    size = (batch, vision.num_channels, vision.image_size, vision.image_size)
    return {
        "vision": torch.rand(size, generator=generator) * 2 - 1,
        "text": torch.randint(text.vocab_size, (batch, text.max_position_embeddings), generator=generator),
    }


def export_onnx(model: SiglipModel, directory: str | os.PathLike, opset: int = 17) -> dict[str, Path]:
    """Export both towers of a float model to ONNX, with a dynamic batch axis.

    Writes `vision_model.onnx` (input `pixel_values` (B, 3, S, S) float32 with S the model's image size ->
    `image_embeds` (B, D), the unnormalised `get_image_features`) and `text_model.onnx` (`input_ids` (B, L)
    int64 with L the model's text length, so pad to `max_length` -> `text_embeds` (B, D)). Only the batch
    axis is dynamic. Both files appear only when both are written; the model is not changed. Needs the
    `onnx` and `onnxscript` packages (`siglip[onnx]`). Returns {"vision": path, "text": path}.
    """
    if opset < 17:
        raise UsageError(f"opset must be at least 17 (LayerNormalization), got {opset}")
    if not hasattr(model.config.vision_config, "image_size"):
        raise UsageError(
            "ONNX export covers fixed-resolution models; a SigLIP 2 NaFlex model resizes its position grid to "
            "each image's own patch grid, which the exporter cannot trace as a graph of dynamic shape"
        )
    require("onnxscript", "onnx", "ONNX export")
    model = _float32_copy(model)
    batch = torch.export.Dim("batch", min=1)
    examples = _example_inputs(model, batch=2, seed=0)
    files = tuple(f"{filename}*" for filename, *_ in ONNX_TOWERS.values())
    with staged_directory(directory, replaces=files) as staging:
        for tower, (filename, input_name, output_name, method) in ONNX_TOWERS.items():
            with _quiet_exporter():
                program = torch.onnx.export(
                    _TowerFeatures(model, method),
                    (examples[tower],),
                    dynamo=True,
                    opset_version=opset,
                    input_names=[input_name],
                    output_names=[output_name],
                    dynamic_shapes=({0: batch},),
                    verbose=False,
                )
            program.save(str(staging / filename))  # > 2 GB: weights go to a `<file>.data` beside it
    return {tower: Path(directory) / filename for tower, (filename, *_) in ONNX_TOWERS.items()}


def _float32_copy(model: SiglipModel) -> SiglipModel:
    """The model in eval mode and float32: itself if it already is, else a copy (the caller's is left alone)."""
    if model.dtype != torch.float32 or model.training:
        model = copy.deepcopy(model).float().eval()
    return model


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's notes on its own internals (warnings, log records up to WARNING, prints)."""
    level = logging.root.manager.disable
    logging.disable(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(level)


@dataclass
class OnnxCheck:
    """How far the ONNX towers (run by onnxruntime) are from PyTorch on the same inputs."""

    max_abs_diff: dict[str, float]  # per tower, largest elementwise difference of the features
    min_cosine: dict[str, float]  # per tower, lowest cosine between the two feature vectors of an input


def check_onnx(model: SiglipModel, paths: dict[str, Path], batch: int = 3, seed: int = 0) -> OnnxCheck:
    """Run both exported towers with onnxruntime on random inputs (a batch size unlike the export's) and
    compare with the float32 PyTorch model. Needs `onnxruntime`."""
    ort = require("onnxruntime", "onnx", "checking an ONNX export")
    model = _float32_copy(model)
    diffs, cosines = {}, {}
    for tower, example in _example_inputs(model, batch, seed).items():
        _, input_name, _, method = ONNX_TOWERS[tower]
        session = ort.InferenceSession(str(paths[tower]), providers=["CPUExecutionProvider"])
        ours = torch.from_numpy(session.run(None, {input_name: example.numpy()})[0])
        with torch.inference_mode():
            expected = getattr(model, method)(example)
        diffs[tower] = (ours - expected).abs().max().item()
        cosines[tower] = F.cosine_similarity(ours, expected).min().item()
    return OnnxCheck(diffs, cosines)
