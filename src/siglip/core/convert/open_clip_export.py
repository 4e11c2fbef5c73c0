"""`to_open_clip`: a `SiglipModel` checkpoint folder out as an open_clip checkpoint folder
(`open_clip_config.json`, `open_clip_model.safetensors`, the tokenizer files)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..siglip.configuration import SiglipConfig
from ..siglip.modeling import SiglipModel
from ..siglip2.configuration import Siglip2Config
from . import open_clip, timm
from ._rules import ConversionError, Tensors
from .architecture import Architecture
from .loading import read_json
from .output import check_new, staged_output, tokenizer_files

OPEN_CLIP_OUTPUT = "open_clip_model.safetensors"
_TOKENIZER_HUB = {
    32000: "timm/ViT-B-16-SigLIP",
    250000: "timm/ViT-B-16-SigLIP-i18n-256",
    256000: "timm/ViT-B-16-SigLIP2",
}


def to_open_clip(src: str | os.PathLike, out: str | os.PathLike) -> Architecture:
    """Write the `SiglipModel` checkpoint folder `src` as an open_clip checkpoint folder `out`.

    `out` receives `open_clip_config.json`, `open_clip_model.safetensors` and `src`'s tokenizer files; load it
    with `open_clip.create_model_and_transforms("local-dir:OUT")`, or with the open_clip configuration's name
    and `pretrained="OUT/open_clip_model.safetensors"`. open_clip builds image towers from timm model names
    only, so the vision tower must have the architecture of a released timm SigLIP tower.
    """
    src_path, target = Path(src), Path(out)
    check_new(target)
    config_file = src_path / "config.json"
    if config_file.is_file() and read_json(config_file).get("model_type") == Siglip2Config.model_type:
        raise ConversionError(
            f"'{src_path}' is a SigLIP 2 NaFlex model (model_type 'siglip2'); open_clip has no NaFlex model "
            "(its SigLIP 2 configurations are fixed-resolution), so it cannot be written for open_clip."
        )
    config = SiglipConfig.from_pretrained(src_path)
    model = SiglipModel.from_pretrained(src_path, dtype="auto")
    vision = config.vision_config
    tower = timm.find_tower(vision)
    if tower is None or not vision.vision_use_head:
        raise ConversionError(
            f"'{src_path}': the vision tower (width {vision.hidden_size}, {vision.num_hidden_layers} layers, "
            f"{vision.num_attention_heads} heads, MLP {vision.intermediate_size}, patch {vision.patch_size}, "
            f"image {vision.image_size}) is no released timm SigLIP tower, and open_clip builds image towers "
            "from timm names only."
        )
    if vision.layer_norm_eps != 1e-6:
        raise ConversionError(
            f"'{src_path}': vision layer_norm_eps {vision.layer_norm_eps}; timm's towers use 1e-6."
        )
    converted = open_clip.siglip_to_open_clip(Tensors(model.state_dict(), str(src_path)), config)
    named = open_clip.find_arch(config)
    architecture = Architecture(
        "open_clip", named.name if named else f"custom (timm tower {tower.name})", config
    )
    if tower.exact_gelu and vision.hidden_act == "gelu_pytorch_tanh":
        architecture.notes.append(
            f"timm's {tower.name} computes the exact GELU where this model uses the tanh approximation: "
            "open_clip's image embeddings differ by that approximation (~1e-3)"
        )
    vocab = config.text_config.vocab_size
    model_cfg = open_clip.open_clip_config(config, tower, _TOKENIZER_HUB.get(vocab, src_path.name))
    tokenizer = tokenizer_files(src_path)
    with staged_output(target) as staging:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in converted.tensors.items()}, str(staging / OPEN_CLIP_OUTPUT))
        (staging / "open_clip_config.json").write_text(
            json.dumps(model_cfg, indent=2) + "\n", encoding="utf-8"
        )
        for file in tokenizer:
            shutil.copyfile(file, staging / file.name)
    return architecture
