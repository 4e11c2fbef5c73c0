"""big_vision two-tower checkpoints (`.npz`, the release format of SigLIP and SigLIP 2) to `SiglipModel`.

Parameter names follow big_vision's Flax modules (`models/proj/image_text/two_towers.py`, `models/vit.py`,
`models/proj/image_text/text_transformer.py`), flattened with `/`, optionally under `params/`:

- `t`, `b` (1,): log-temperature and bias (`b` only when the model was trained with one).
- `img/embedding/kernel` (P, P, C, D) conv (HWIO), `img/pos_embedding` (1, N, D),
  `img/Transformer/encoderblock_{i}/...` (or `encoderblock/...` stacked on a leading layer axis: `scan=True`),
  `img/Transformer/encoder_norm`, `img/MAPHead_0/{probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}`.
- `txt/Embed_0/embedding` (V, D), `txt/pos_embedding` (1, L, D), `txt/Encoder_0/encoderblock_{i}/...`,
  `txt/Encoder_0/encoder_norm`, `txt/head` (absent for the i18n So400m: an identity).

A block holds `LayerNorm_0`, `MultiHeadDotProductAttention_0/{query,key,value}` (kernel (D, H, d), bias (H, d)),
`out` (kernel (H, d, D)), `LayerNorm_1`, `MlpBlock_0/Dense_{0,1}` (kernel (in, out)). Heads come from the
attention kernels' shape, so every width converts.

SigLIP 2 NaFlex checkpoints (`models/proj/image_text/naflex_vit.py`) differ in the image embedding only, and
convert to a `Siglip2Model`: `img/embedding/kernel` is a Dense (P*P*3, D) over patches flattened as (patch row,
patch column, channel), the order `Siglip2ImageProcessor` produces, and `img/pos_embedding` is the learned grid
itself, (G, G, D) indexed (row, column), which the model resizes to each image's patch grid. naflex_vit's
optional patch LayerNorms (`patchln_pre`, `patchln_post`; off in the released checkpoints) have no place in
a `Siglip2Model`: a checkpoint with them is refused, naming them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ..siglip.configuration import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from ..siglip2.configuration import Siglip2Config, Siglip2TextConfig, Siglip2VisionConfig
from ._rules import ConversionError, Converted, Tensors

# (width, depth, MLP width, heads) of big_vision's variants, for naming a checkpoint.
VARIANTS = {"B": (768, 12, 3072, 12), "L": (1024, 24, 4096, 16), "So400m": (1152, 27, 4304, 16),
            "g-opt": (1536, 40, 6144, 16)}  # fmt: skip
Reader = Callable[[str], torch.Tensor]  # a parameter name -> its tensor
FAMILIES = {32000: "SigLIP", 250000: "SigLIP i18n", 256000: "SigLIP 2"}


def strip_prefix(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """npz arrays as tensors, without the `params/` prefix big_vision's checkpoints may carry."""
    prefix = "params/" if all(key.startswith("params/") for key in arrays) else ""
    return {
        key[len(prefix) :]: torch.from_numpy(np.ascontiguousarray(value)) for key, value in arrays.items()
    }


def is_naflex(tensors: Tensors) -> bool:
    return "img/embedding/kernel" in tensors and len(tensors.shape("img/embedding/kernel")) == 2


def _blocks(tensors: Tensors, encoder: str) -> tuple[int, bool]:
    """(depth, scanned): `encoderblock_{i}` per layer, or one `encoderblock` stacked on a layer axis."""
    scanned_key = f"{encoder}/encoderblock/LayerNorm_0/scale"
    if scanned_key in tensors:
        return tensors.shape(scanned_key)[0], True
    depth = tensors.count(encoder + "/encoderblock_{}/LayerNorm_0/scale")
    if depth == 0:
        raise ConversionError(
            f"'{tensors.source}': tensor '{encoder}/encoderblock_0/LayerNorm_0/scale' is missing."
        )
    return depth, False


def _heads(tensors: Tensors, key: str) -> int:
    shape = tensors.shape(key)
    return shape[-2]


def config_from_big_vision(tensors: Tensors) -> SiglipConfig | Siglip2Config:
    """Our config from the shapes of a big_vision checkpoint: SigLIP (FixRes) or, with a Dense patch
    embedding, SigLIP 2 NaFlex."""
    depth, scanned = _blocks(tensors, "img/Transformer")
    block = "img/Transformer/encoderblock" + ("" if scanned else "_0")
    tower = dict(
        hidden_size=tensors.shape("img/embedding/bias")[0],
        intermediate_size=tensors.shape(f"{block}/MlpBlock_0/Dense_0/bias")[-1],
        num_hidden_layers=depth,
        num_attention_heads=_heads(tensors, f"{block}/MultiHeadDotProductAttention_0/query/bias"),
    )
    if is_naflex(tensors):
        vision = Siglip2VisionConfig(**tower, **_naflex_grid(tensors))
        return Siglip2Config(
            text_config=_text_config(tensors, Siglip2TextConfig), vision_config=vision.to_dict()
        )
    kernel, positions = tensors.shape("img/embedding/kernel"), tensors.shape("img/pos_embedding")
    side = math.isqrt(positions[1]) if len(positions) == 3 else 0
    if len(kernel) != 4 or kernel[0] != kernel[1] or side == 0 or side * side != positions[1]:
        raise ConversionError(
            f"'{tensors.source}': tensors 'img/embedding/kernel' {kernel} and 'img/pos_embedding' {positions} "
            "are not a conv over square patches (P, P, C, D) and a square grid of positions (1, N, D)."
        )
    patch, channels = kernel[0], kernel[2]
    vision = SiglipVisionConfig(**tower, num_channels=channels, image_size=side * patch, patch_size=patch)
    return SiglipConfig(text_config=_text_config(tensors, SiglipTextConfig), vision_config=vision.to_dict())


def _naflex_grid(tensors: Tensors) -> dict[str, int]:
    """`patch_size` and `num_patches` of a NaFlex image embedding: a Dense over RGB patches of P x P pixels
    (NaFlex inputs are always RGB) and a square (G, G, D) position grid."""
    features = tensors.shape("img/embedding/kernel")[0]
    grid = tensors.shape("img/pos_embedding")
    patch = math.isqrt(features // 3)
    if 3 * patch * patch != features or len(grid) != 3 or grid[0] != grid[1]:
        raise ConversionError(
            f"'{tensors.source}': tensors 'img/embedding/kernel' {tensors.shape('img/embedding/kernel')} and "
            f"'img/pos_embedding' {grid} are not a NaFlex embedding of RGB patches (P*P*3, D) with a square "
            "position grid (G, G, D)."
        )
    return {"patch_size": patch, "num_patches": grid[0] * grid[1]}


def _text_config(tensors: Tensors, config_class: type[SiglipTextConfig]) -> dict[str, Any]:
    """The text tower's config (as a dict, for the two-tower config) from its shapes."""
    depth, scanned = _blocks(tensors, "txt/Encoder_0")
    block = "txt/Encoder_0/encoderblock" + ("" if scanned else "_0")
    vocab, width = tensors.shape("txt/Embed_0/embedding")
    return config_class(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=tensors.shape(f"{block}/MlpBlock_0/Dense_0/bias")[-1],
        num_hidden_layers=depth,
        num_attention_heads=_heads(tensors, f"{block}/MultiHeadDotProductAttention_0/query/bias"),
        max_position_embeddings=tensors.shape("txt/pos_embedding")[1],
        projection_size=tensors.shape("txt/head/bias")[0] if "txt/head/bias" in tensors else width,
    ).to_dict()


def name(config: SiglipConfig | Siglip2Config) -> str:
    """A checkpoint's name in big_vision's terms, e.g. "SigLIP 2 So400m/14 384" (or its dimensions)."""
    vision = config.vision_config
    shape = (
        vision.hidden_size,
        vision.num_hidden_layers,
        vision.intermediate_size,
        vision.num_attention_heads,
    )
    variant = next((v for v, dims in VARIANTS.items() if dims == shape), None)
    if variant is None:
        variant = f"width {vision.hidden_size} depth {vision.num_hidden_layers}"
    if isinstance(config, Siglip2Config):
        grid = math.isqrt(vision.num_patches)
        return f"SigLIP 2 NaFlex {variant}/{vision.patch_size} ({grid}x{grid} position grid)"
    family = FAMILIES.get(config.text_config.vocab_size, "SigLIP")
    return f"{family} {variant}/{vision.patch_size} {vision.image_size}"


class _Layers:
    """Reads one encoder's blocks, per-layer or scanned, each leaf as a tensor of the layer asked for."""

    def __init__(self, tensors: Tensors, encoder: str, depth: int, scanned: bool) -> None:
        self.tensors, self.encoder, self.scanned = tensors, encoder, scanned
        self.stacked: dict[str, torch.Tensor] = {}
        self.depth = depth

    def get(self, layer: int, leaf: str) -> torch.Tensor:
        if not self.scanned:
            return self.tensors.take(f"{self.encoder}/encoderblock_{layer}/{leaf}")
        key = f"{self.encoder}/encoderblock/{leaf}"
        if key not in self.stacked:
            self.stacked[key] = self.tensors.take(key)
            if self.stacked[key].shape[0] != self.depth:
                raise ConversionError(
                    f"'{self.tensors.source}': tensor '{key}' {tuple(self.stacked[key].shape)} does not stack "
                    f"{self.depth} layers."
                )
        return self.stacked[key][layer].clone()  # a slice of the stack would share its storage


def _dense(kernel: torch.Tensor) -> torch.Tensor:
    return kernel.T.contiguous()


def _attention(get: Reader, prefix: str) -> dict[str, torch.Tensor]:
    """Flax MultiHeadDotProductAttention -> q/k/v/out Linear weights and biases (ours)."""
    out: dict[str, torch.Tensor] = {}
    for theirs, ours in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        kernel = get(f"{prefix}/{theirs}/kernel")  # (D, H, d)
        out[f"{ours}.weight"] = kernel.reshape(kernel.shape[0], -1).T.contiguous()
        out[f"{ours}.bias"] = get(f"{prefix}/{theirs}/bias").reshape(-1)
    kernel = get(f"{prefix}/out/kernel")  # (H, d, D)
    out["out_proj.weight"] = kernel.reshape(-1, kernel.shape[-1]).T.contiguous()
    out["out_proj.bias"] = get(f"{prefix}/out/bias")
    return out


def _norm(get: Reader, prefix: str, ours: str) -> dict[str, torch.Tensor]:
    return {f"{ours}.weight": get(f"{prefix}/scale"), f"{ours}.bias": get(f"{prefix}/bias")}


def _mlp(get: Reader, prefix: str, ours: str) -> dict[str, torch.Tensor]:
    return {
        f"{ours}.fc1.weight": _dense(get(f"{prefix}/Dense_0/kernel")),
        f"{ours}.fc1.bias": get(f"{prefix}/Dense_0/bias"),
        f"{ours}.fc2.weight": _dense(get(f"{prefix}/Dense_1/kernel")),
        f"{ours}.fc2.bias": get(f"{prefix}/Dense_1/bias"),
    }


def _encoder(tensors: Tensors, encoder: str, dst: str, final_norm: str, result: Converted) -> None:
    """An encoder's blocks and final LayerNorm (named `final_norm` in our tower) into `result`."""
    depth, scanned = _blocks(tensors, encoder)
    layers = _Layers(tensors, encoder, depth, scanned)
    for i in range(depth):

        def get(leaf: str, i: int = i) -> torch.Tensor:
            return layers.get(i, leaf)

        block = {
            **_norm(get, "LayerNorm_0", "layer_norm1"),
            **{f"self_attn.{k}": v for k, v in _attention(get, "MultiHeadDotProductAttention_0").items()},
            **_norm(get, "LayerNorm_1", "layer_norm2"),
            **_mlp(get, "MlpBlock_0", "mlp"),
        }
        for key, tensor in block.items():
            result.put(
                f"{dst}encoder.layers.{i}.{key}",
                tensor,
                f"{encoder}/encoderblock{'' if scanned else f'_{i}'}",
            )
    _put_all(
        result, _norm(tensors.take, f"{encoder}/encoder_norm", final_norm), dst, f"{encoder}/encoder_norm"
    )


def _put_all(result: Converted, tensors: dict[str, torch.Tensor], dst: str, origin: str) -> None:
    for key, tensor in tensors.items():
        result.put(dst + key, tensor, origin)


def big_vision_to_siglip(tensors: Tensors, config: SiglipConfig | Siglip2Config) -> Converted:
    """A big_vision parameter tree (flattened, no `params/`) -> a `SiglipModel` state dict, or a `Siglip2Model`
    one for a NaFlex checkpoint (`config` a `Siglip2Config`)."""
    result = Converted()
    take = tensors.take
    result.put("logit_scale", take("t").reshape(1), "t")
    if "b" in tensors:
        result.put("logit_bias", take("b").reshape(1), "b")
    else:  # trained without a bias: zero computes the same logits
        result.put("logit_bias", torch.zeros(1, dtype=result.tensors["logit_scale"].dtype), "(absent: 0)")
        result.notes.append(
            "the checkpoint has no bias `b`: logit_bias written as 0, which gives the same logits"
        )

    # Image tower.
    vis = "vision_model."
    kernel, positions = take("img/embedding/kernel"), take("img/pos_embedding")
    if isinstance(config, Siglip2Config):  # a Dense over (row, column, channel) patches; the (G, G, D) grid
        kernel, positions = _dense(kernel), positions.flatten(0, 1)  # row-major, as the model reshapes it
    else:  # a conv kernel (HWIO); the positions (1, N, D)
        kernel, positions = kernel.permute(3, 2, 0, 1).contiguous(), positions[0]
    result.put(f"{vis}embeddings.patch_embedding.weight", kernel, "img/embedding/kernel")
    result.put(f"{vis}embeddings.patch_embedding.bias", take("img/embedding/bias"), "img/embedding/bias")
    result.put(f"{vis}embeddings.position_embedding.weight", positions, "img/pos_embedding")
    _encoder(tensors, "img/Transformer", vis, "post_layernorm", result)
    head = "img/MAPHead_0"
    result.put(f"{vis}head.probe", take(f"{head}/probe"), f"{head}/probe")
    attention = _attention(take, f"{head}/MultiHeadDotProductAttention_0")
    for leaf in ("weight", "bias"):
        fused = torch.cat([attention[f"{p}_proj.{leaf}"] for p in "qkv"])
        result.put(f"{vis}head.attention.in_proj_{leaf}", fused, f"{head}/MultiHeadDotProductAttention_0")
        result.put(f"{vis}head.attention.out_proj.{leaf}", attention[f"out_proj.{leaf}"], f"{head}/.../out")
    _put_all(result, _norm(take, f"{head}/LayerNorm_0", "layernorm"), f"{vis}head.", head)
    _put_all(result, _mlp(take, f"{head}/MlpBlock_0", "mlp"), f"{vis}head.", head)

    # Text tower.
    txt = "text_model."
    result.put(
        f"{txt}embeddings.token_embedding.weight", take("txt/Embed_0/embedding"), "txt/Embed_0/embedding"
    )
    positions = take("txt/pos_embedding")[0]
    if "txt/Encoder_0/pos_embedding" in tensors:  # older checkpoints split it in two; big_vision sums them
        positions = positions + take("txt/Encoder_0/pos_embedding")[0]
        result.notes.append(
            "'txt/Encoder_0/pos_embedding' summed into the text position embedding, as big_vision does"
        )
    result.put(f"{txt}embeddings.position_embedding.weight", positions, "txt/pos_embedding")
    _encoder(tensors, "txt/Encoder_0", txt, "final_layer_norm", result)
    if "txt/head/kernel" in tensors:
        result.put(f"{txt}head.weight", _dense(take("txt/head/kernel")), "txt/head/kernel")
        result.put(f"{txt}head.bias", take("txt/head/bias"), "txt/head/bias")
    else:  # the i18n So400m has no text head: the identity
        width = config.text_config.hidden_size
        dtype = result.tensors["logit_scale"].dtype
        result.put(f"{txt}head.weight", torch.eye(width, dtype=dtype), "(absent: identity)")
        result.put(f"{txt}head.bias", torch.zeros(width, dtype=dtype), "(absent: identity)")
        result.notes.append("the checkpoint has no text head 'txt/head': written as the identity")
    tensors.check_all_used()
    return result
