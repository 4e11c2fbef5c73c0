"""SigLIP 2 NaFlex models: numerical parity with transformers' Siglip2 classes, checkpoint round trips both ways,
and clear errors for inputs and checkpoints of the wrong kind.

Parity runs the released NaFlex widths (base, so400m) at max_num_patches 256, 576 and 1024 (base at 256 and
1024, so400m at 576) with the depth cut (2 layers for base-256, 1 elsewhere, for CI time), on one batch that mixes extreme aspect ratios. The forward pass is
bit-identical to transformers (the same operations in the same order: the text tower, encoder, attention and
pooling head are SigLIP's shared modules, the position resize is the same float32 matrix product); gradients
are compared within 1e-5 of each tensor's largest magnitude (they came out bit-identical too, but our loss,
`sigmoid_loss`, orders its arithmetic differently from transformers' inline loss, so the last bit may move).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import siglip
from _reference import assert_close, quiet_transformers
from siglip import (
    CheckpointError,
    Siglip2Config,
    Siglip2ForImageClassification,
    Siglip2ImageProcessor,
    Siglip2Model,
    Siglip2TextModel,
    Siglip2VisionModel,
    SiglipModel,
)
from siglip.core.siglip2.modeling import Siglip2VisionEmbeddings
from siglip.core.two_tower.modeling import SiglipTextTransformer

GRAD_REL = 1e-5
_BASE = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12)
_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16)
# Released NaFlex widths; the text tower is SigLIP's (tested at the released widths in test_modeling_parity.py),
# so a small vocabulary keeps memory and time low here.
WIDTHS = {"base": _BASE, "so400m": _SO400M}
CASES = [  # each width and each patch budget at least once (every pairing took a minute more of CI)
    ("base", 256, 2, 1000),
    ("base", 1024, 1, 1000),
    ("so400m", 576, 1, 1000),
]
TINY = dict(
    text_config=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                     vocab_size=100, max_position_embeddings=16),
    vision_config=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                       patch_size=4, num_patches=16),
)  # fmt: skip
# The mixed batch of the issue: a pixel, two 1 x 4000 strips, a non-square photo size and a square one.
MIXED_SIZES = [(1, 1), (1, 4000), (4000, 1), (333, 517), (224, 224)]


def _naflex_config(width: str, depth: int, vocab: int) -> dict:
    layer = dict(WIDTHS[width], num_hidden_layers=depth)
    return dict(text_config=dict(layer, vocab_size=vocab), vision_config=dict(layer, num_patches=256))


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every tensor (LayerNorms and logit parameters start at constants that would hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    return model


def _reference(cls_name: str, config: dict, seed: int = 0, **kwargs) -> torch.nn.Module:
    quiet_transformers()
    torch.manual_seed(seed)
    if cls_name in ("Siglip2Model", "Siglip2ForImageClassification"):
        cfg = transformers.Siglip2Config(**copy.deepcopy(config), **kwargs)
    else:
        key = "text_config" if "Text" in cls_name else "vision_config"
        cfg = getattr(transformers, cls_name.replace("Model", "Config"))(**config[key], **kwargs)
    return _randomised(getattr(transformers, cls_name)(cfg), seed).eval()


def _mixed_images(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for size in MIXED_SIZES]


def _exact(ours: torch.Tensor, theirs: torch.Tensor, name: str) -> float:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, name
    diff = (ours - theirs).abs().max().item()
    assert torch.equal(ours, theirs), f"{name}: not bit-identical, max |diff| {diff:.3g}"
    return diff


def _towers(ours, theirs, prefix: str) -> None:
    _exact(ours.last_hidden_state, theirs.last_hidden_state, f"{prefix}.last_hidden_state")
    _exact(ours.pooler_output, theirs.pooler_output, f"{prefix}.pooler_output")
    assert len(ours.hidden_states) == len(theirs.hidden_states)
    for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states, strict=True)):
        _exact(a, b, f"{prefix}.hidden_states[{i}]")


@pytest.mark.parametrize(("width", "max_num_patches", "depth", "vocab"), CASES, ids=lambda v: str(v))
def test_siglip2_model_matches_transformers(width, max_num_patches, depth, vocab, tmp_path):
    config = _naflex_config(width, depth, vocab)
    theirs = _reference("Siglip2Model", config)
    theirs.save_pretrained(tmp_path)
    ours = Siglip2Model.from_pretrained(tmp_path)
    images = Siglip2ImageProcessor()(_mixed_images(), max_num_patches=max_num_patches, return_tensors="pt")
    assert images.spatial_shapes[1, 0] == 1 and images.spatial_shapes[2, 1] == 1  # the strips: one patch wide
    assert images.pixel_attention_mask.sum(1).lt(max_num_patches).any()  # some rows padded
    ids = torch.randint(0, vocab, (len(MIXED_SIZES), 64), generator=torch.Generator().manual_seed(1))
    inputs = dict(input_ids=ids, **images)

    ref = theirs(**inputs, return_loss=True, output_hidden_states=True)
    out = ours(**inputs, return_loss=True, output_hidden_states=True)
    for name in ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds", "loss"):
        _exact(getattr(out, name), getattr(ref, name), name)
    _towers(out.text_model_output, ref.text_model_output, "text")
    _towers(out.vision_model_output, ref.vision_model_output, "vision")

    ref.loss.backward()
    out.loss.backward()
    their_grads = dict(theirs.named_parameters())
    worst = max(
        assert_close(param.grad, their_grads[name].grad, f"grad {name}", GRAD_REL)
        for name, param in ours.named_parameters()
    )

    theirs.set_attn_implementation("eager")  # transformers returns attention maps on its eager path only
    with torch.no_grad():
        ref = theirs(**inputs, output_attentions=True)
        out = ours(**inputs, output_attentions=True)
    for tower in ("text_model_output", "vision_model_output"):
        maps = zip(getattr(out, tower).attentions, getattr(ref, tower).attentions, strict=True)
        for i, (a, b) in enumerate(maps):
            _exact(a, b, f"{tower}.attentions[{i}]")
    _exact(out.logits_per_image, ref.logits_per_image, "eager logits")
    print(f"\nparity {width}-{max_num_patches}: forward bit-identical, gradients max |diff| {worst:.2e}")


@pytest.fixture(scope="module")
def tiny_images():
    processor = Siglip2ImageProcessor(patch_size=4, max_num_patches=16)
    return processor([*_mixed_images()[:4], Image.new("RGB", (13, 7))], return_tensors="pt")


@pytest.mark.parametrize(
    "cls_name", ["Siglip2Model", "Siglip2VisionModel", "Siglip2TextModel", "Siglip2ForImageClassification"]
)
def test_round_trips_both_ways(cls_name, tiny_images, tmp_path):
    theirs = (
        _reference(cls_name, TINY, num_labels=3)
        if "Classification" in cls_name
        else _reference(cls_name, TINY)
    )
    ours_cls = getattr(siglip, cls_name)
    theirs.save_pretrained(tmp_path / "theirs")
    ours = ours_cls.from_pretrained(tmp_path / "theirs")
    ours.save_pretrained(tmp_path / "ours")
    again = getattr(transformers, cls_name).from_pretrained(tmp_path / "ours").eval()
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == [cls_name]

    ids = torch.randint(0, 100, (5, 16), generator=torch.Generator().manual_seed(0))
    if cls_name == "Siglip2TextModel":
        inputs = dict(input_ids=ids)
    elif cls_name == "Siglip2Model":
        inputs = dict(input_ids=ids, **tiny_images)
    else:
        inputs = dict(tiny_images)
    with torch.no_grad():
        expected = theirs(**inputs)
        for model in (ours, again):
            got = model(**inputs)
            for key in expected.keys():  # noqa: SIM118 (ModelOutput.keys lists the fields that are set)
                value = expected[key]
                if isinstance(value, torch.Tensor):
                    _exact(got[key], value, f"{type(model).__module__}.{cls_name}.{key}")
    # The same tensor names; our tower models keep transformers 4.x's `vision_model.` / `text_model.` prefix,
    # which transformers 5 reads (checked above) and writes without.
    prefix = {"Siglip2VisionModel": "vision_model.", "Siglip2TextModel": "text_model."}.get(cls_name, "")
    their_keys = {k if k.startswith(prefix) else prefix + k for k in theirs.state_dict()}
    assert set(ours.state_dict()) == their_keys


def test_feature_getters_embedding_contract_and_classifier_loss(tiny_images, tmp_path):
    theirs = _reference("Siglip2Model", TINY)
    theirs.save_pretrained(tmp_path)
    ours = Siglip2Model.from_pretrained(tmp_path)
    ids = torch.randint(0, 100, (5, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image = ours.get_image_features(**tiny_images)
        text = ours.get_text_features(ids)
        assert isinstance(image, torch.Tensor) and isinstance(text, torch.Tensor)
        _exact(image, theirs.get_image_features(**tiny_images).pooler_output, "image features")
        _exact(text, theirs.get_text_features(ids).pooler_output, "text features")
        ref = theirs.get_image_features(**tiny_images, output_hidden_states=True)
        mine = ours.get_image_features(**tiny_images, output_hidden_states=True)
        assert mine.pooler_output is mine  # the 4.x tensor reads as the 5.x output too
        _exact(mine.last_hidden_state, ref.last_hidden_state, "image last_hidden_state")
        assert len(mine.hidden_states) == len(ref.hidden_states)
        for a, b in zip(mine.hidden_states, ref.hidden_states, strict=True):
            _exact(a, b, "image hidden_states")
        embeds = ours.encode_images(**tiny_images)
        assert embeds.dtype == torch.float32 and torch.allclose(embeds.norm(dim=-1), torch.ones(5))
        _exact(embeds, siglip.core.two_tower.modeling.l2_normalize(image), "encode_images")
        raw = ours.encode_texts(ids, normalize=False)
        _exact(raw, text, "encode_texts(normalize=False)")
        # a bf16 model still gives float32 unit vectors
        half = ours.to(torch.bfloat16).encode_images(**tiny_images)
        assert half.dtype == torch.float32 and torch.allclose(half.norm(dim=-1), torch.ones(5))

    classifier = _reference("Siglip2ForImageClassification", TINY, num_labels=3)
    classifier.save_pretrained(tmp_path / "cls")
    ours_cls = Siglip2ForImageClassification.from_pretrained(tmp_path / "cls")
    labels = torch.tensor([0, 2, 1, 1, 0])
    ref, out = classifier(**tiny_images, labels=labels), ours_cls(**tiny_images, labels=labels)
    _exact(out.logits, ref.logits, "classifier logits (masked mean)")
    _exact(out.loss, ref.loss, "classifier loss")
    # the masked mean is not the plain mean: padding patches would change the logits
    plain = ours_cls(tiny_images.pixel_values, None, tiny_images.spatial_shapes).logits
    assert not torch.allclose(plain, out.logits)


def test_a_single_image_gives_the_row_it_gets_in_a_padded_batch(tiny_images, tmp_path):
    model = _randomised(Siglip2Model(Siglip2Config(**TINY))).eval()
    processor = Siglip2ImageProcessor(patch_size=4, max_num_patches=16)
    images = _mixed_images()
    with torch.no_grad():
        batch = model.encode_images(**processor(images, return_tensors="pt"))
        for i, image in enumerate(images):
            alone = processor(image, return_tensors="pt")
            assert torch.equal(alone.pixel_values[0], processor(images, return_tensors="pt").pixel_values[i])
            torch.testing.assert_close(model.encode_images(**alone)[0], batch[i], rtol=0, atol=2e-6)


def test_position_grid_resize_is_torch_antialiased_bilinear():
    """The closed-form resize equals F.interpolate(bilinear, antialias=True) per image, padding = position 0."""
    config = Siglip2Config(**TINY).vision_config
    embeddings = Siglip2VisionEmbeddings(config)
    shapes = torch.tensor([[1, 1], [2, 8], [4, 4], [7, 2], [1, 16]])
    resized = embeddings.resized_positions(shapes, 16)
    grid = embeddings.position_embedding.weight.reshape(4, 4, -1).permute(2, 0, 1)[None]
    for (h, w), row in zip(shapes.tolist(), resized, strict=True):
        ref = torch.nn.functional.interpolate(grid, size=(h, w), mode="bilinear", antialias=True)
        ref = ref[0].permute(1, 2, 0).reshape(h * w, -1)
        torch.testing.assert_close(row[: h * w], ref, rtol=0, atol=1e-6)
        assert torch.equal(row[h * w :], row[:1].expand(16 - h * w, -1))


# --- bad input -------------------------------------------------------------------------------------------------
def test_a_naflex_checkpoint_loaded_as_siglip_names_the_file_and_the_class(tmp_path):
    Siglip2Model(Siglip2Config(**TINY)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"config\.json.*'siglip2'.*siglip\.Siglip2Model") as err:
        SiglipModel.from_pretrained(tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(CheckpointError, match=r"siglip\.Siglip2VisionModel"):
        siglip.SiglipVisionModel.from_pretrained(tmp_path)
    siglip1 = tmp_path / "siglip1"
    vision = {k: v for k, v in TINY["vision_config"].items() if k != "num_patches"}
    SiglipModel(siglip.SiglipConfig(TINY["text_config"], dict(vision, image_size=16))).save_pretrained(
        siglip1
    )
    with pytest.raises(CheckpointError, match=r"'siglip'.*siglip\.SiglipModel"):
        Siglip2Model.from_pretrained(siglip1)


def test_inputs_that_are_not_naflex_patches_are_refused(tiny_images):
    model = Siglip2VisionModel(Siglip2Config(**TINY).vision_config).eval()
    pixels, mask, shapes = (
        tiny_images.pixel_values,
        tiny_images.pixel_attention_mask,
        tiny_images.spatial_shapes,
    )
    with pytest.raises(ValueError, match=r"patches \(batch, max_num_patches, 48\)"):
        model(torch.zeros(5, 3, 16, 16), mask, shapes)
    with pytest.raises(ValueError, match="spatial_shapes must be"):
        model(pixels, mask, None)
    with pytest.raises(ValueError, match="at most 16 patches"):
        model(pixels, mask, torch.tensor([[5, 4]] * 5))
    with pytest.raises(ValueError, match="pixel_attention_mask must be"):
        model(pixels, mask[:, :8], shapes)
    with pytest.raises(ValueError, match="num_patches must be a square"):
        siglip.Siglip2VisionConfig(num_patches=200)


def test_text_model_is_the_siglip_text_tower(tmp_path):
    theirs = _reference("Siglip2TextModel", TINY)
    theirs.save_pretrained(tmp_path)
    ours = Siglip2TextModel.from_pretrained(tmp_path)
    assert (
        isinstance(ours.text_model, SiglipTextTransformer) and ours.config.model_type == "siglip2_text_model"
    )
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, 9:] = 0
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _exact(ours(ids, mask).pooler_output, theirs(ids, attention_mask=mask).pooler_output, "masked text")


def test_towers_and_classifier_load_from_a_two_tower_checkpoint(tiny_images, tmp_path):
    theirs = _reference("Siglip2Model", TINY)
    theirs.save_pretrained(tmp_path)
    with torch.no_grad():
        vision = Siglip2VisionModel.from_pretrained(tmp_path)
        _exact(
            vision(**tiny_images).pooler_output,
            theirs.get_image_features(**tiny_images).pooler_output,
            "tower",
        )
        classifier = Siglip2ForImageClassification.from_pretrained(tmp_path, num_labels=4)  # a fresh head
        assert classifier(**tiny_images).logits.shape == (5, 4)
