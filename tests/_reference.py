"""Helpers that build transformers reference models (the test oracle) and compare outputs with ours."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

# Released architecture shapes with their real widths, heads, MLP sizes, patch sizes and text lengths; the depth
# is cut (2 layers) to keep CI fast, and so are the 250,000- and 256,000-piece vocabularies (i18n, giant-opt) to
# 32,000: the size of the embedding table exercises no code of its own here, and the full tables are loaded and
# compared by the converter tests (test_convert.py, big_vision's g-opt with 256,000 pieces).
DEPTH = 2
_BASE = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=DEPTH)
_LARGE = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=DEPTH)
_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=DEPTH)
_GIANT = dict(hidden_size=1536, intermediate_size=6144, num_attention_heads=16, num_hidden_layers=DEPTH)

SHAPES: dict[str, dict] = {
    "base16-224": dict(text_config=dict(_BASE), vision_config=dict(_BASE, image_size=224, patch_size=16)),
    "base16-384": dict(text_config=dict(_BASE), vision_config=dict(_BASE, image_size=384, patch_size=16)),
    "large16-256": dict(text_config=dict(_LARGE), vision_config=dict(_LARGE, image_size=256, patch_size=16)),
    "so400m14-224": dict(
        text_config=dict(_SO400M, max_position_embeddings=16),
        vision_config=dict(_SO400M, image_size=224, patch_size=14),
    ),
    "i18n-base16-256": dict(
        text_config=dict(_BASE, vocab_size=32000), vision_config=dict(_BASE, image_size=256, patch_size=16)
    ),
    "giant-opt16-256": dict(
        text_config=dict(_SO400M, vocab_size=32000, projection_size=1536),
        vision_config=dict(_GIANT, image_size=256, patch_size=16),
    ),
    "no-vision-head": dict(
        text_config=dict(_BASE),
        vision_config=dict(_BASE, image_size=224, patch_size=16, vision_use_head=False),
    ),
}

TINY = dict(
    text_config=dict(
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=128,
        max_position_embeddings=16,
    ),
    vision_config=dict(
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=32,
        patch_size=8,
    ),
)


def quiet_transformers() -> None:
    """transformers warns that SigLIP's unused CLIP bos/eos ids are outside small test vocabularies."""
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def reference_model(cls_name: str, config: dict, *, seed: int = 0, attn: str = "sdpa", **config_kwargs):
    """A transformers model with every parameter randomised (LayerNorms and logit parameters included).

    transformers initialises LayerNorm to (1, 0) and the logit parameters to 0, which would hide mistakes
    in how we use them; perturbing every tensor makes each one matter for the comparison.
    """
    import transformers

    quiet_transformers()
    torch.manual_seed(seed)
    config_cls = (
        transformers.SiglipConfig
        if cls_name in ("SiglipModel", "SiglipForImageClassification")
        else getattr(transformers, cls_name.replace("Model", "Config"))
    )
    if config_cls is transformers.SiglipConfig:
        cfg = config_cls(**copy.deepcopy(config), **config_kwargs)
    else:
        key = "text_config" if "Text" in cls_name else "vision_config"
        cfg = config_cls(**copy.deepcopy(config[key]), **config_kwargs)
    model = getattr(transformers, cls_name)(cfg)
    model.set_attn_implementation(attn)
    return perturbed(model).eval()


def perturbed(model):
    """`model` with every parameter moved off its init (LayerNorms and logit scale/bias included), so that each
    one matters in a comparison."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        if hasattr(model, "logit_scale"):
            model.logit_scale.fill_(2.3)
            model.logit_bias.fill_(-4.0)
    return model


def save_reference(model, directory: Path) -> Path:
    model.save_pretrained(directory)
    return directory


def inputs_for(config: dict, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    text, vision = config["text_config"], config["vision_config"]
    length = text.get("max_position_embeddings", 64)
    size = vision.get("image_size", 224)
    return dict(
        input_ids=torch.randint(0, text.get("vocab_size", 32000), (batch, length), generator=generator),
        pixel_values=torch.rand(batch, 3, size, size, generator=generator) * 2 - 1,
    )


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, name: str, rel: float = 1e-5) -> float:
    """Assert |ours - theirs| <= rel * max|theirs|; returns the max abs difference (for reports)."""
    assert ours.shape == theirs.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
    diff = (ours.float() - theirs.float()).abs().max().item()
    scale = theirs.float().abs().max().item()
    assert diff <= rel * max(scale, 1e-12), f"{name}: max |diff| {diff:.3g} > {rel} x max |ref| {scale:.3g}"
    return diff
