"""ONNX export of both towers (`export_onnx`), and the check of an export against PyTorch with onnxruntime
(`check_onnx`). Fixed-resolution and NaFlex models alike; needs `siglip[onnx]`."""

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

from ...core.auto import TwoTowerModel, is_naflex
from ...core.staging import staged_directory
from ...errors import UsageError
from ..deps import require


@dataclass(frozen=True)
class OnnxTower:
    """One exported tower: its file, the graph's inputs and output, and the model method the graph computes."""

    filename: str
    inputs: tuple[str, ...]
    output: str
    method: str


TEXT_TOWER = OnnxTower("text_model.onnx", ("input_ids",), "text_embeds", "get_text_features")
FIXRES_TOWER = OnnxTower("vision_model.onnx", ("pixel_values",), "image_embeds", "get_image_features")
# NaFlex: the image processor's three outputs. The position grid is resized to each image's spatial_shapes
# inside the graph, by the model's own code (a matrix product with weights computed from the shapes).
NAFLEX_TOWER = replace(FIXRES_TOWER, inputs=("pixel_values", "pixel_attention_mask", "spatial_shapes"))


def _onnx_towers(model: TwoTowerModel) -> dict[str, OnnxTower]:
    """The towers `export_onnx` writes for `model`, by name ("vision", "text")."""
    return {"vision": NAFLEX_TOWER if is_naflex(model) else FIXRES_TOWER, "text": TEXT_TOWER}


class _TowerFeatures(nn.Module):
    """One tower's features as a module of its inputs: what the exporter traces."""

    def __init__(self, model: TwoTowerModel, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(*inputs)


def _example_inputs(
    model: TwoTowerModel, batch: int, seed: int, patches: int | None = None
) -> dict[str, tuple[torch.Tensor, ...]]:
    """Random pixels in [-1, 1] and token ids of the model's sizes, per tower.

    NaFlex images get `patches` patches (default: the position grid's size), their patch grids cycling
    through 1x1, 1xN, Nx1, square and near-square, zero-padded as `Siglip2ImageProcessor` pads them, with
    its dtypes (int32 mask, int64 shapes).
    """
    vision, text = model.config.vision_config, model.config.text_config
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(text.vocab_size, (batch, text.max_position_embeddings), generator=generator)
    if not is_naflex(model):
        size = (batch, vision.num_channels, vision.image_size, vision.image_size)
        return {"vision": (torch.rand(size, generator=generator) * 2 - 1,), "text": (ids,)}
    patches = patches or vision.num_patches
    side, narrow = math.isqrt(patches), max(math.isqrt(patches) - 1, 1)
    grids = [(1, 1), (1, patches), (patches, 1), (side, side), (narrow, patches // narrow)]
    shapes = torch.tensor([grids[i % len(grids)] for i in range(batch)])
    mask = (torch.arange(patches) < shapes.prod(-1, keepdim=True)).int()
    size = (batch, patches, vision.num_channels * vision.patch_size**2)
    pixels = (torch.rand(size, generator=generator) * 2 - 1) * mask[..., None]
    return {"vision": (pixels, mask, shapes), "text": (ids,)}


def _dynamic_shapes(tower: OnnxTower) -> tuple[dict[int, torch.export.Dim], ...]:
    """The batch axis of every input; for NaFlex, the patch axis of the patches and their mask as well, so
    that the graph runs at any `max_num_patches`, not only the one it was traced with."""
    batch, patches = torch.export.Dim("batch", min=1), torch.export.Dim("patches", min=1)
    with_patches = {"pixel_values", "pixel_attention_mask"} if tower is NAFLEX_TOWER else set()
    return tuple({0: batch, 1: patches} if name in with_patches else {0: batch} for name in tower.inputs)


def export_onnx(model: TwoTowerModel, directory: str | os.PathLike, opset: int = 17) -> dict[str, Path]:
    """Export both towers of a float model to ONNX, with a dynamic batch axis.

    Writes `vision_model.onnx` and `text_model.onnx`. Fixed-resolution image tower: `pixel_values`
    (B, 3, S, S) float32 with S the model's image size -> `image_embeds` (B, D), the unnormalised
    `get_image_features`. NaFlex image tower: `Siglip2ImageProcessor`'s outputs, `pixel_values` (B, N, 3*p*p)
    float32, `pixel_attention_mask` (B, N) int32 and `spatial_shapes` (B, 2) int64, with N dynamic too (any
    `max_num_patches`) -> `image_embeds` (B, D). Text tower: `input_ids` (B, L) int64 with L the model's
    text length, so pad to `max_length` -> `text_embeds` (B, D). Both files appear only when both are
    written; the model is not changed. Needs the `onnx` and `onnxscript` packages (`siglip[onnx]`).
    Returns {"vision": path, "text": path}.
    """
    if opset < 17:
        raise UsageError(f"opset must be at least 17 (LayerNormalization), got {opset}")
    require("onnxscript", "onnx", "ONNX export")
    model = _float32_copy(model)
    towers = _onnx_towers(model)
    examples = _example_inputs(model, batch=2, seed=0)
    with staged_directory(directory, replaces=tuple(f"{t.filename}*" for t in towers.values())) as staging:
        for name, tower in towers.items():
            with _quiet_exporter():
                program = torch.onnx.export(
                    _TowerFeatures(model, tower.method),
                    examples[name],
                    dynamo=True,
                    opset_version=opset,
                    input_names=list(tower.inputs),
                    output_names=[tower.output],
                    dynamic_shapes=(_dynamic_shapes(tower),),  # one entry: the `*inputs` of forward
                    verbose=False,
                )
            program.save(str(staging / tower.filename))  # > 2 GB: weights go to a `<file>.data` beside it
    return {name: Path(directory) / tower.filename for name, tower in towers.items()}


def _float32_copy(model: TwoTowerModel) -> TwoTowerModel:
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


def check_onnx(model: TwoTowerModel, paths: dict[str, Path], batch: int = 3, seed: int = 0) -> OnnxCheck:
    """Run both exported towers with onnxruntime on random inputs (a batch size unlike the export's; for
    NaFlex, twice the export's patches and mixed aspect ratios) and compare with the float32 PyTorch model.
    Needs `onnxruntime`."""
    ort = require("onnxruntime", "onnx", "checking an ONNX export")
    model = _float32_copy(model)
    patches = 2 * model.config.vision_config.num_patches if is_naflex(model) else None
    diffs, cosines = {}, {}
    for name, tower in _onnx_towers(model).items():
        example = _example_inputs(model, batch, seed, patches)[name]
        session = ort.InferenceSession(str(paths[name]), providers=["CPUExecutionProvider"])
        feed = {input_name: tensor.numpy() for input_name, tensor in zip(tower.inputs, example, strict=True)}
        ours = torch.from_numpy(session.run(None, feed)[0])
        with torch.inference_mode():
            expected = getattr(model, tower.method)(*example)
        diffs[name] = (ours - expected).abs().max().item()
        cosines[name] = F.cosine_similarity(ours, expected).min().item()
    return OnnxCheck(diffs, cosines)
