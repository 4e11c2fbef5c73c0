"""timm SigLIP image towers (`vit_*_siglip_*`, and the `visual.trunk.` of open_clip's SigLIP models).

timm's `VisionTransformer` without class token: `patch_embed.proj` (a Conv2d), `pos_embed` (1, N, D), `blocks.i`
with a fused `attn.qkv`, `norm`, and for MAP towers `attn_pool` (`AttentionPoolLatent`: `latent` probe, `q`,
fused `kv`, `proj`, `norm`, `mlp`). `_gap` towers (PaliGemma's) average the normed tokens instead: they become
a `SiglipVisionModel` with `vision_use_head=False`, whose `last_hidden_state.mean(1)` is timm's pooled output.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..siglip.configuration import SiglipVisionConfig
from ._rules import (
    ConversionError,
    Converted,
    Fuse,
    Rename,
    Rule,
    Tensors,
    apply,
    encoder_layer_rules,
    squeeze0,
    unsqueeze0,
)

# big_vision's `decode_variant` widths: (width, depth, MLP width, heads). timm and open_clip use the same.
VARIANTS = {
    "base": (768, 12, 3072, 12),
    "large": (1024, 24, 4096, 16),
    "so400m": (1152, 27, 4304, 16),
    "giantopt": (1536, 40, 6144, 16),
}
HEADS_BY_WIDTH = {width: heads for width, _, _, heads in VARIANTS.values()}
# timm towers built with `act_layer='gelu_tanh'` (those added for SigLIP 2); the others use the exact GELU.
TANH_TOWERS = frozenset(
    f"vit_{tower}_siglip_{pool}{res}"
    for tower, sizes in (("base_patch32", (256,)), ("large_patch16", (512,)), ("so400m_patch16", (256, 384, 512)),
                         ("giantopt_patch16", (256, 384)))
    for res in sizes
    for pool in ("", "gap_")
)  # fmt: skip
# The released towers (timm 1.0.31): variant, patch and image size of each, MAP head (`_gap`: none).
TOWERS = (
    [f"vit_base_patch16_siglip_{r}" for r in (224, 256, 384, 512)]
    + ["vit_base_patch32_siglip_256"]
    + [f"vit_large_patch16_siglip_{r}" for r in (256, 384, 512)]
    + [f"vit_so400m_patch14_siglip_{r}" for r in (224, 378, 384)]
    + [f"vit_so400m_patch16_siglip_{r}" for r in (256, 384, 512)]
    + [f"vit_giantopt_patch16_siglip_{r}" for r in (256, 384)]
    + [f"vit_base_patch16_siglip_gap_{r}" for r in (224, 256, 384, 512)]
    + ["vit_base_patch32_siglip_gap_256"]
    + [f"vit_large_patch16_siglip_gap_{r}" for r in (256, 384, 512)]
    + [f"vit_so400m_patch14_siglip_gap_{r}" for r in (224, 378, 384, 448, 896)]
    + [f"vit_so400m_patch16_siglip_gap_{r}" for r in (256, 384, 512)]
    + [f"vit_giantopt_patch16_siglip_gap_{r}" for r in (256, 384)]
)
_NAME = re.compile(r"^vit_(base|large|so400m|giantopt)_patch(\d+)_siglip_(gap_)?(\d+)$")
_BLOCK = {"ln1": "norm1", "qkv_weight": "attn.qkv.weight", "qkv_bias": "attn.qkv.bias", "out": "attn.proj",
          "ln2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}  # fmt: skip


@dataclass(frozen=True)
class TimmTower:
    """A timm SigLIP tower's architecture, as its name gives it."""

    name: str
    width: int
    depth: int
    mlp: int
    heads: int
    patch: int
    image: int
    map_head: bool

    @property
    def exact_gelu(self) -> bool:
        return self.name not in TANH_TOWERS

    def vision_config(self, depth: int | None = None) -> SiglipVisionConfig:
        return SiglipVisionConfig(
            hidden_size=self.width,
            intermediate_size=self.mlp,
            num_hidden_layers=self.depth if depth is None else depth,
            num_attention_heads=self.heads,
            image_size=self.image,
            patch_size=self.patch,
            vision_use_head=self.map_head,
        )


def tower(name: str) -> TimmTower:
    """The architecture of a timm SigLIP tower from its name (a pretrained tag such as `.webli` is ignored)."""
    base = name.split(".", 1)[0]
    match = _NAME.match(base)
    if match is None or base not in TOWERS:
        raise ConversionError(f"'{name}' is not a timm SigLIP image tower; known: {', '.join(TOWERS)}.")
    variant, patch, gap, image = match.groups()
    width, depth, mlp, heads = VARIANTS[variant]
    return TimmTower(base, width, depth, mlp, heads, int(patch), int(image), map_head=not gap)


def find_tower(config: SiglipVisionConfig) -> TimmTower | None:
    """The timm tower with exactly this architecture, if one exists."""
    for name in TOWERS:
        candidate = tower(name)
        if vision_shape(candidate.vision_config()) == vision_shape(config):
            return candidate
    return None


def vision_shape(config: SiglipVisionConfig) -> tuple:
    """What makes two vision towers the same architecture."""
    return (config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.num_attention_heads,
            config.num_channels, config.image_size, config.patch_size, config.vision_use_head)  # fmt: skip


def heads_for_width(width: int, source: str, tensor: str) -> int:
    """Attention heads are not in the weights' shapes: the released SigLIP widths fix them."""
    if width not in HEADS_BY_WIDTH:
        raise ConversionError(
            f"'{source}': tensor '{tensor}' has width {width}, not one of the SigLIP widths "
            f"{sorted(HEADS_BY_WIDTH)}: the number of attention heads is unknown; pass --arch NAME."
        )
    return HEADS_BY_WIDTH[width]


def vision_config_from_timm(
    tensors: Tensors, prefix: str = "", heads: int | None = None
) -> SiglipVisionConfig:
    """Read a timm SigLIP tower's architecture from its tensors' shapes (`heads` when the name gives them)."""
    if f"{prefix}cls_token" in tensors:
        raise ConversionError(
            f"'{tensors.source}': tensor '{prefix}cls_token' is a class token: a CLIP-style ViT, not a SigLIP "
            "tower (SigLIP pools with an attention head or an average, never a class token)."
        )
    patch_key, pos_key = f"{prefix}patch_embed.proj.weight", f"{prefix}pos_embed"
    width, channels, patch, patch_w = tensors.shape(patch_key)
    positions = tensors.shape(pos_key)
    side = math.isqrt(positions[1]) if len(positions) == 3 else 0
    if patch != patch_w or len(positions) != 3 or side * side != positions[1]:
        raise ConversionError(
            f"'{tensors.source}': tensors '{patch_key}' {(width, channels, patch, patch_w)} and '{pos_key}' "
            f"{positions} are not a square grid of square patches."
        )
    return SiglipVisionConfig(
        hidden_size=width,
        intermediate_size=tensors.shape(f"{prefix}blocks.0.mlp.fc1.weight")[0],
        num_hidden_layers=tensors.count(prefix + "blocks.{}.norm1.weight"),
        num_attention_heads=heads or heads_for_width(width, tensors.source, patch_key),
        num_channels=channels,
        image_size=side * patch,
        patch_size=patch,
        vision_use_head=f"{prefix}attn_pool.latent" in tensors,
    )


def vision_rules(config: SiglipVisionConfig, src: str, dst: str) -> list[Rule]:
    """timm tower at prefix `src` <-> our vision tower at prefix `dst` (e.g. `vision_model.`)."""
    rules: list[Rule] = [
        Rename(f"{src}patch_embed.proj.weight", f"{dst}embeddings.patch_embedding.weight"),
        Rename(f"{src}patch_embed.proj.bias", f"{dst}embeddings.patch_embedding.bias"),
        Rename(f"{src}pos_embed", f"{dst}embeddings.position_embedding.weight", squeeze0, unsqueeze0),
        Rename(f"{src}norm.weight", f"{dst}post_layernorm.weight"),
        Rename(f"{src}norm.bias", f"{dst}post_layernorm.bias"),
    ]
    for i in range(config.num_hidden_layers):
        rules += encoder_layer_rules(f"{src}blocks.{i}.", f"{dst}encoder.layers.{i}.", _BLOCK)
    if config.vision_use_head:
        pool, head = f"{src}attn_pool.", f"{dst}head."
        rules.append(Rename(f"{pool}latent", f"{head}probe"))
        for leaf in ("weight", "bias"):
            rules.append(
                Fuse(
                    ((f"{pool}q.{leaf}", 1), (f"{pool}kv.{leaf}", 2)),
                    ((f"{head}attention.in_proj_{leaf}", 3),),
                )
            )
            for theirs, ours in (("proj", "attention.out_proj"), ("norm", "layernorm"), ("mlp.fc1", "mlp.fc1"),
                                 ("mlp.fc2", "mlp.fc2")):  # fmt: skip
                rules.append(Rename(f"{pool}{theirs}.{leaf}", f"{head}{ours}.{leaf}"))
    return rules


def drop_classifier(tensors: Tensors, prefix: str, result: Converted) -> None:
    """A timm classifier (`head`, with `fc_norm`) sits on top of the pooled features: no SiglipVisionModel part."""
    for key in (
        f"{prefix}head.weight",
        f"{prefix}head.bias",
        f"{prefix}fc_norm.weight",
        f"{prefix}fc_norm.bias",
    ):
        if key in tensors:
            tensors.drop(key, "timm classifier on the pooled features; SiglipVisionModel has none", result)


def timm_to_siglip(tensors: Tensors, config: SiglipVisionConfig) -> Converted:
    """A timm tower's state dict -> a `SiglipVisionModel` state dict (keys `vision_model.*`)."""
    result = Converted()
    drop_classifier(tensors, "", result)
    apply(vision_rules(config, "", "vision_model."), tensors, result)
    tensors.check_all_used()
    return result
