"""What a source checkpoint is: its architecture (family, name, our config for it) and its tensors in our
layout, every one checked for its shape against the model the config builds."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..siglip.configuration import SiglipConfig, SiglipVisionConfig
from ..siglip.modeling import SiglipModel, SiglipVisionModel
from ..siglip2.configuration import Siglip2Config
from ..siglip2.modeling import Siglip2Model
from . import big_vision, open_clip, timm
from ._rules import ConversionError, Converted, check_shapes
from .sources import Source, read_source

Config = SiglipConfig | Siglip2Config | SiglipVisionConfig
MODEL_CLASSES = {
    SiglipConfig: SiglipModel,
    Siglip2Config: Siglip2Model,
    SiglipVisionConfig: SiglipVisionModel,
}


@dataclass
class Architecture:
    """What a source checkpoint is: its family, its name there (or its dimensions), and our config for it."""

    family: str
    name: str
    config: Config
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.family} {self.name}"


def detect(src: str | os.PathLike, arch: str | None = None) -> Architecture:
    """The architecture of the checkpoint at `src` (as `convert` would convert it), without writing anything."""
    source = read_source(Path(src), arch)
    return convert_source(source, arch)[0]


def convert_source(source: Source, arch: str | None) -> tuple[Architecture, Converted]:
    """The architecture of `source` (or the one `arch` names) and its tensors renamed to our layout."""
    tensors = source.tensors
    named_clip = open_clip.arch(arch) if arch and arch.startswith("ViT-") else None
    named_tower = timm.tower(arch) if arch and arch.startswith("vit_") else None
    if source.family == "open_clip":
        if named_tower:
            raise ConversionError(
                f"--arch {arch} is a timm tower, but '{source.path}' is an open_clip checkpoint."
            )
        config = (
            named_clip.config() if named_clip else open_clip.config_from_open_clip(tensors, source.model_cfg)
        )
        converted = open_clip.open_clip_to_siglip(tensors, config)
        named = named_clip or open_clip.find_arch(config)
        architecture = Architecture("open_clip", named.name if named else _describe(config), config)
        exact_text = named.exact_text_gelu if named else _exact_text_gelu(source.model_cfg)
        tower_name = (source.model_cfg or {}).get("vision_cfg", {}).get("timm_model_name")
        tower = (
            named.tower
            if named
            else timm.tower(tower_name)
            if tower_name
            else timm.find_tower(config.vision_config)
        )
        architecture.notes += _gelu_notes(exact_text, tower.exact_gelu if tower else None)
    elif source.family == "timm":
        if named_clip:
            raise ConversionError(
                f"--arch {arch} is an open_clip configuration, but '{source.path}' is a timm tower."
            )
        given = named_tower or (timm.tower(source.timm_name) if source.timm_name else None)
        config = given.vision_config() if given else timm.vision_config_from_timm(tensors)
        converted = timm.timm_to_siglip(tensors, config)
        tower = given or timm.find_tower(config)
        architecture = Architecture("timm", tower.name if tower else _describe_vision(config), config)
        architecture.notes += _gelu_notes(None, tower.exact_gelu if tower else None)
        if not config.vision_use_head:
            architecture.notes.append(
                "a `_gap` tower has no attention-pooling head: timm's pooled output is "
                "`last_hidden_state.mean(1)` of the SiglipVisionModel (whose pooler_output is None)"
            )
    else:
        if named_clip or named_tower:
            raise ConversionError(
                f"--arch {arch} names an open_clip/timm model, but '{source.path}' is big_vision."
            )
        config = big_vision.config_from_big_vision(tensors)
        converted = big_vision.big_vision_to_siglip(tensors, config)
        architecture = Architecture("big_vision", big_vision.name(config), config)
    architecture.notes += converted.notes
    architecture.notes += [f"dropped '{key}': {why}" for key, why in converted.dropped.items()]
    with torch.device("meta"):
        expected = {k: v.shape for k, v in MODEL_CLASSES[type(config)](config).state_dict().items()}
    check_shapes(converted, expected, str(source.path))
    return architecture, converted


def _gelu_notes(exact_text: bool | None, exact_vision: bool | None) -> list[str]:
    towers = [name for name, exact in (("text", exact_text), ("image", exact_vision)) if exact]
    if not towers:
        return []
    return [
        f"the source's {' and '.join(towers)} tower(s) compute the exact GELU; siglip (like transformers and "
        "big_vision) uses the tanh approximation: embeddings differ by that approximation (~1e-3)"
    ]


def _exact_text_gelu(model_cfg: dict[str, Any] | None) -> bool | None:
    if model_cfg is None:
        return None
    act = model_cfg.get("text_cfg", {}).get("act_kwargs", {})
    return act.get("approximate") != "tanh"


def _describe_vision(config: SiglipVisionConfig) -> str:
    return (f"custom tower (width {config.hidden_size}, {config.num_hidden_layers} layers, patch "
            f"{config.patch_size}, image {config.image_size})")  # fmt: skip


def _describe(config: SiglipConfig) -> str:
    text = config.text_config
    return (f"custom model ({_describe_vision(config.vision_config)}; text width {text.hidden_size}, "
            f"{text.num_hidden_layers} layers, vocabulary {text.vocab_size}, {text.max_position_embeddings} tokens)")  # fmt: skip
