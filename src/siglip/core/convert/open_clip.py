"""open_clip SigLIP checkpoints (`CustomTextCLIP` with a timm image tower) to and from `SiglipModel`.

open_clip's layout: `logit_scale` and `logit_bias` as scalars, the timm tower under `visual.trunk.`, and the
text tower under `text.`: `token_embedding`, `positional_embedding` (L, D), `transformer.resblocks.i` (`ln_1`,
`attn.in_proj_*` fused q/k/v, `attn.out_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`), `ln_final` and a
`text_projection` Linear with bias (absent for the i18n So400m model: `proj_type: none`, an identity).

Two steps of open_clip's computation differ from transformers' (and ours), which follows big_vision: the
SigLIP 1 text towers and the timm towers not built with `gelu_tanh` (see `timm.TANH_TOWERS`) use the exact
GELU where big_vision trained with its tanh approximation. A converted model keeps transformers' tanh GELU, so
its embeddings differ from open_clip's by the gap between the two GELUs (below ~1e-3 per activation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from ..siglip.configuration import SiglipConfig, SiglipTextConfig
from . import timm
from ._rules import (
    ConversionError,
    Converted,
    Rename,
    Rule,
    Tensors,
    apply,
    as_scalar,
    as_vector,
    encoder_layer_rules,
)

# The SigLIP configurations open_clip 3.3 lists (`open_clip.list_models()`); tests check this table against it.
NAMES = (
    "ViT-B-16-SigLIP", "ViT-B-16-SigLIP-256", "ViT-B-16-SigLIP-384", "ViT-B-16-SigLIP-512",
    "ViT-B-16-SigLIP-i18n-256", "ViT-L-16-SigLIP-256", "ViT-L-16-SigLIP-384", "ViT-SO400M-14-SigLIP",
    "ViT-SO400M-14-SigLIP-378", "ViT-SO400M-14-SigLIP-384", "ViT-SO400M-16-SigLIP-i18n-256",
    "ViT-B-16-SigLIP2", "ViT-B-16-SigLIP2-256", "ViT-B-16-SigLIP2-384", "ViT-B-16-SigLIP2-512",
    "ViT-B-32-SigLIP2-256", "ViT-L-16-SigLIP2-256", "ViT-L-16-SigLIP2-384", "ViT-L-16-SigLIP2-512",
    "ViT-SO400M-14-SigLIP2", "ViT-SO400M-14-SigLIP2-378", "ViT-SO400M-16-SigLIP2-256",
    "ViT-SO400M-16-SigLIP2-384", "ViT-SO400M-16-SigLIP2-512", "ViT-gopt-16-SigLIP2-256",
    "ViT-gopt-16-SigLIP2-384",
)  # fmt: skip
_NAME = re.compile(r"^ViT-(B|L|SO400M|gopt)-(\d+)-SigLIP(2?)(?:-(i18n))?(?:-(\d+))?$")
_VARIANT = {"B": "base", "L": "large", "SO400M": "so400m", "gopt": "giantopt"}
_TEXT_BLOCK = {"ln1": "ln_1", "qkv_weight": "attn.in_proj_weight", "qkv_bias": "attn.in_proj_bias",
               "out": "attn.out_proj", "ln2": "ln_2", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj"}  # fmt: skip
# Where each family's tokenizer files are published (open_clip's `hf_tokenizer_name`).
TOKENIZERS = {
    32000: "the c4_en SentencePiece `spiece.model` (hub: timm/ViT-B-16-SigLIP or google/siglip-base-patch16-224)",
    250000: "the mc4 SentencePiece `spiece.model` (hub: timm/ViT-B-16-SigLIP-i18n-256 or "
    "google/siglip-base-patch16-256-multilingual)",
    256000: "the Gemma tokenizer files (hub: timm/ViT-B-16-SigLIP2 or google/siglip2-base-patch16-224)",
}


@dataclass(frozen=True)
class OpenClipArch:
    """An open_clip SigLIP configuration, as its name gives it (mirrors open_clip's model_configs)."""

    name: str
    tower: timm.TimmTower
    text_variant: str
    context: int
    vocab: int
    embed_dim: int
    text_projection: bool
    exact_text_gelu: bool

    def config(self, vision_depth: int | None = None, text_depth: int | None = None) -> SiglipConfig:
        width, depth, mlp, heads = timm.VARIANTS[self.text_variant]
        text = SiglipTextConfig(
            vocab_size=self.vocab,
            hidden_size=width,
            intermediate_size=mlp,
            num_hidden_layers=depth if text_depth is None else text_depth,
            num_attention_heads=heads,
            max_position_embeddings=self.context,
            projection_size=self.embed_dim,
        )
        return SiglipConfig(
            text_config=text.to_dict(), vision_config=self.tower.vision_config(vision_depth).to_dict()
        )


def arch(name: str) -> OpenClipArch:
    """The architecture of an open_clip SigLIP configuration from its name."""
    match = _NAME.match(name)
    if match is None or name not in NAMES:
        raise ConversionError(
            f"'{name}' is not an open_clip SigLIP configuration; known: {', '.join(NAMES)}."
        )
    size, patch, v2, i18n, image = match.groups()
    variant = _VARIANT[size]
    tower = timm.tower(f"vit_{variant}_patch{patch}_siglip_{image or 224}")
    text_variant = "so400m" if variant == "giantopt" else variant
    return OpenClipArch(
        name=name,
        tower=tower,
        text_variant=text_variant,
        context=16 if name == "ViT-SO400M-14-SigLIP" else 64,
        vocab=256000 if v2 else 250000 if i18n else 32000,
        embed_dim=tower.width,
        text_projection=not (i18n and variant == "so400m"),
        exact_text_gelu=not v2,
    )


def find_arch(config: SiglipConfig) -> OpenClipArch | None:
    """The open_clip configuration with exactly this architecture, if one exists."""
    for name in NAMES:
        candidate = arch(name)
        if _shape(candidate.config()) == _shape(config):
            return candidate
    return None


def _shape(config: SiglipConfig) -> tuple:
    text = config.text_config
    return (timm.vision_shape(config.vision_config), text.vocab_size, text.hidden_size, text.intermediate_size,
            text.num_hidden_layers, text.num_attention_heads, text.max_position_embeddings, text.projection_size)  # fmt: skip


def config_from_open_clip(
    tensors: Tensors, model_cfg: dict[str, Any] | None = None, named: OpenClipArch | None = None
) -> SiglipConfig:
    """Our config from an open_clip SigLIP state dict's shapes; heads from `named`, `model_cfg` or the width."""
    tower_name = (model_cfg or {}).get("vision_cfg", {}).get("timm_model_name")
    vision_heads = named.tower.heads if named else timm.tower(tower_name).heads if tower_name else None
    vision = timm.vision_config_from_timm(tensors, "visual.trunk.", vision_heads)
    if not vision.vision_use_head:
        raise ConversionError(
            f"'{tensors.source}': tensor 'visual.trunk.attn_pool.latent' is missing: SigLIP's image tower "
            "pools with an attention (MAP) head."
        )
    vocab, width = tensors.shape("text.token_embedding.weight")
    text_cfg = (model_cfg or {}).get("text_cfg", {})
    heads = (
        timm.VARIANTS[named.text_variant][3]
        if named
        else text_cfg.get("heads")
        or timm.heads_for_width(width, tensors.source, "text.token_embedding.weight")
    )
    projection = "text.text_projection.weight"
    text = SiglipTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=tensors.shape("text.transformer.resblocks.0.mlp.c_fc.weight")[0],
        num_hidden_layers=tensors.count("text.transformer.resblocks.{}.ln_1.weight"),
        num_attention_heads=heads,
        max_position_embeddings=tensors.shape("text.positional_embedding")[0],
        layer_norm_eps=text_cfg.get("norm_kwargs", {}).get("eps", 1e-6),
        projection_size=tensors.shape(projection)[0] if projection in tensors else width,
    )
    return SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())


def rules(config: SiglipConfig, text_projection: bool = True, logit_bias: bool = True) -> list[Rule]:
    """open_clip <-> siglip; without `text_projection` (open_clip's `proj_type: none`) the head is not mapped,
    without `logit_bias` (a model built with `init_logit_bias=None`) the bias is not."""
    table: list[Rule] = [Rename("logit_scale", "logit_scale", as_vector, as_scalar)]
    if logit_bias:
        table.append(Rename("logit_bias", "logit_bias", as_vector, as_scalar))
    table += [
        Rename("text.token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
        Rename("text.positional_embedding", "text_model.embeddings.position_embedding.weight"),
        Rename("text.ln_final.weight", "text_model.final_layer_norm.weight"),
        Rename("text.ln_final.bias", "text_model.final_layer_norm.bias"),
    ]
    if text_projection:
        table += [
            Rename(f"text.text_projection.{leaf}", f"text_model.head.{leaf}") for leaf in ("weight", "bias")
        ]
    for i in range(config.text_config.num_hidden_layers):
        table += encoder_layer_rules(
            f"text.transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}.", _TEXT_BLOCK
        )
    return table + timm.vision_rules(config.vision_config, "visual.trunk.", "vision_model.")


def open_clip_to_siglip(tensors: Tensors, config: SiglipConfig) -> Converted:
    """An open_clip SigLIP state dict -> a `SiglipModel` state dict."""
    result = Converted()
    projection = "text.text_projection.weight" in tensors
    bias = "logit_bias" in tensors
    apply(rules(config, projection, bias), tensors, result)
    if not bias:  # a sigmoid model trained without bias: zero computes the same logits
        result.put("logit_bias", torch.zeros(1, dtype=result.tensors["logit_scale"].dtype), "(absent: 0)")
        result.notes.append("the source has no logit_bias: written as 0, which gives the same logits")
    if not projection:  # open_clip's `proj_type: none`: the text head is the identity, written as such
        dtype = result.tensors["text_model.final_layer_norm.weight"].dtype
        width = config.text_config.hidden_size
        result.put("text_model.head.weight", torch.eye(width, dtype=dtype), "(absent: identity)")
        result.put("text_model.head.bias", torch.zeros(width, dtype=dtype), "(absent: identity)")
        result.notes.append("the source has no text projection (proj_type none): written as the identity")
    tensors.check_all_used()
    return result


def siglip_to_open_clip(tensors: Tensors, config: SiglipConfig) -> Converted:
    """A `SiglipModel` state dict -> an open_clip state dict (always with a text projection Linear + bias)."""
    result = Converted()
    apply(rules(config), tensors, result, reverse=True)
    tensors.check_all_used()
    return result


def open_clip_config(config: SiglipConfig, tower: timm.TimmTower, tokenizer_name: str) -> dict[str, Any]:
    """`open_clip_config.json` for our model: open_clip builds the image tower from the timm name."""
    text = config.text_config
    ratio = text.intermediate_size / text.hidden_size
    if int(text.hidden_size * ratio) != text.intermediate_size:  # open_clip computes int(width * mlp_ratio)
        ratio = (text.intermediate_size + 0.5) / text.hidden_size
    text_cfg: dict[str, Any] = {
        "context_length": text.max_position_embeddings,
        "vocab_size": text.vocab_size,
        "hf_tokenizer_name": tokenizer_name,
        "tokenizer_kwargs": {"clean": "canonicalize"},
        "width": text.hidden_size,
        "heads": text.num_attention_heads,
        "layers": text.num_hidden_layers,
        "mlp_ratio": ratio,
        "no_causal_mask": True,
        "proj_bias": True,
        "pool_type": "last",
        "norm_kwargs": {"eps": text.layer_norm_eps},
    }
    if text.hidden_act == "gelu_pytorch_tanh":
        text_cfg["act_kwargs"] = {"approximate": "tanh"}
    vision = config.vision_config
    return {
        "model_cfg": {
            "embed_dim": text.projection_size,
            "init_logit_bias": -10,
            "custom_text": True,
            "vision_cfg": {
                "image_size": vision.image_size,
                "timm_model_name": tower.name,
                "timm_model_pretrained": False,
                "timm_pool": "map",
                "timm_proj": "none",
            },
            "text_cfg": text_cfg,
        },
        "preprocess_cfg": {
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "interpolation": "bicubic",
            "resize_mode": "squash",
        },
    }
