"""Numerical parity with transformers on every released architecture shape (random weights, real widths).

Each test saves a randomised transformers model with its own `save_pretrained`, loads the files with our
`from_pretrained`, and compares every output (and the gradients after one backward) within 1e-5 of each
output's largest magnitude, in float32.
"""

from __future__ import annotations

import pytest
import torch

import siglip
from _reference import SHAPES, TINY, assert_close, inputs_for, reference_model

REL = 1e-5


def _compare_towers(ours, theirs, prefix: str, report: dict) -> None:
    report[f"{prefix}.last_hidden_state"] = assert_close(
        ours.last_hidden_state, theirs.last_hidden_state, f"{prefix}.last_hidden_state", REL
    )
    if theirs.pooler_output is None:
        assert ours.pooler_output is None
    else:
        report[f"{prefix}.pooler_output"] = assert_close(
            ours.pooler_output, theirs.pooler_output, f"{prefix}.pooler_output", REL
        )
    assert len(ours.hidden_states) == len(theirs.hidden_states)
    report[f"{prefix}.hidden_states"] = max(
        assert_close(a, b, f"{prefix}.hidden_states[{i}]", REL)
        for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states, strict=True))
    )


@pytest.mark.parametrize("shape", [s for s in SHAPES if s != "no-vision-head"])
def test_siglip_model_matches_transformers(shape, tmp_path):
    config = SHAPES[shape]
    theirs = reference_model("SiglipModel", config)
    theirs.save_pretrained(tmp_path)
    ours = siglip.SiglipModel.from_pretrained(tmp_path)
    inputs = inputs_for(config)
    report: dict[str, float] = {}

    # Forward through the default (SDPA) paths, with the loss and every hidden state.
    ref = theirs(**inputs, return_loss=True, output_hidden_states=True)
    out = ours(**inputs, return_loss=True, output_hidden_states=True)
    for name in ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        report[name] = assert_close(getattr(out, name), getattr(ref, name), name, REL)
    report["loss"] = assert_close(out.loss, ref.loss, "loss", REL)
    _compare_towers(out.text_model_output, ref.text_model_output, "text", report)
    _compare_towers(out.vision_model_output, ref.vision_model_output, "vision", report)

    # Gradients of every parameter after one backward of the loss.
    ref.loss.backward()
    out.loss.backward()
    their_grads = dict(theirs.named_parameters())
    worst = 0.0
    for name, param in ours.named_parameters():
        worst = max(worst, assert_close(param.grad, their_grads[name].grad, f"grad {name}", REL))
    report["gradients"] = worst

    # Attention maps: transformers returns them on its eager path only; ours on any path.
    theirs.set_attn_implementation("eager")
    with torch.no_grad():
        ref = theirs(**inputs, output_attentions=True)
        out = ours(**inputs, output_attentions=True)
    for tower in ("text_model_output", "vision_model_output"):
        maps = zip(getattr(out, tower).attentions, getattr(ref, tower).attentions, strict=True)
        report[f"{tower}.attentions"] = max(assert_close(a, b, f"{tower} attention", REL) for a, b in maps)
    print(f"\nparity {shape}: " + ", ".join(f"{k}={v:.2e}" for k, v in report.items()))


def test_vision_tower_without_head(tmp_path):
    config = SHAPES["no-vision-head"]
    theirs = reference_model("SiglipVisionModel", config)
    theirs.save_pretrained(tmp_path)
    ours = siglip.SiglipVisionModel.from_pretrained(tmp_path)
    assert ours.vision_model.head is None
    pixels = inputs_for(config)["pixel_values"]
    with torch.no_grad():
        out, ref = ours(pixels, output_hidden_states=True), theirs(pixels, output_hidden_states=True)
    _compare_towers(out, ref, "vision", {})
    model = siglip.SiglipModel(
        siglip.SiglipConfig(**TINY | {"vision_config": {**TINY["vision_config"], "vision_use_head": False}})
    )
    with pytest.raises(ValueError, match="vision_use_head=False"):
        model.get_image_features(torch.zeros(1, 3, 32, 32))


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A small transformers SiglipModel and ours loaded from its files."""
    directory = tmp_path_factory.mktemp("tiny")
    theirs = reference_model("SiglipModel", TINY, attn="eager")
    theirs.save_pretrained(directory)
    return theirs, siglip.SiglipModel.from_pretrained(directory), directory


@pytest.mark.parametrize("size", [(32, 32), (48, 48), (64, 40), (24, 56), (40, 32)])
def test_interpolate_pos_encoding_any_size(tiny_pair, size):
    theirs, ours, _ = tiny_pair
    pixels = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = theirs.vision_model(pixels, interpolate_pos_encoding=True)
        out = ours.vision_model(pixels, interpolate_pos_encoding=True)
        assert_close(out.last_hidden_state, ref.last_hidden_state, "last_hidden_state", REL)
        assert_close(out.pooler_output, ref.pooler_output, "pooler_output", REL)
        n = (size[0] // 8) * (size[1] // 8)
        assert out.last_hidden_state.shape == (2, n, 64)
        full = ours(
            input_ids=torch.ones(2, 16, dtype=torch.long), pixel_values=pixels, interpolate_pos_encoding=True
        )
        assert full.logits_per_image.shape == (2, 2)


def test_interpolation_is_identity_at_trained_size(tiny_pair):
    _, ours, _ = tiny_pair
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = ours.vision_model(pixels, interpolate_pos_encoding=True).last_hidden_state
        b = ours.vision_model(pixels).last_hidden_state
    assert torch.equal(a, b)


def test_wrong_image_size_without_interpolation_names_the_fix(tiny_pair):
    _, ours, _ = tiny_pair
    with pytest.raises(
        ValueError, match=r"48x48 give 36 patches.*16 position embeddings.*interpolate_pos_encoding"
    ):
        ours.vision_model(torch.randn(1, 3, 48, 48))


def test_attention_mask_is_honoured(tiny_pair):
    theirs, ours, _ = tiny_pair
    ids = torch.randint(0, 128, (3, 16))
    mask = torch.ones(3, 16, dtype=torch.long)
    mask[0, 10:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        for impl in ("sdpa", "eager"):
            theirs.set_attn_implementation(impl)
            ours.config.attn_implementation = impl
            ref = theirs.text_model(ids, attention_mask=mask, output_attentions=impl == "eager")
            out = ours.text_model(ids, attention_mask=mask, output_attentions=impl == "eager")
            assert_close(out.last_hidden_state, ref.last_hidden_state, f"{impl} masked text", REL)
            assert_close(out.pooler_output, ref.pooler_output, f"{impl} masked pooled", REL)
            unmasked = ours.text_model(ids).pooler_output
            assert not torch.allclose(unmasked[0], out.pooler_output[0]), "the mask must change row 0"
            assert torch.allclose(unmasked[1], out.pooler_output[1], atol=1e-6), (
                "an all-ones row is unchanged"
            )
    theirs.set_attn_implementation("eager")
    ours.config.attn_implementation = "sdpa"


def test_return_dict_false_and_feature_getters(tiny_pair):
    theirs, ours, _ = tiny_pair
    inputs = inputs_for(TINY, batch=3)
    with torch.no_grad():
        ref = theirs(**inputs, return_loss=True, return_dict=False)
        out = ours(**inputs, return_loss=True, return_dict=False)
        assert isinstance(out, tuple) and len(out) == len(ref) == 7
        for i in range(5):
            assert_close(out[i], ref[i], f"tuple[{i}]", REL)
        assert isinstance(out[5], tuple) and len(out[5]) == len(ref[5])
        text = ours.get_text_features(inputs["input_ids"])
        image = ours.get_image_features(inputs["pixel_values"])
        assert isinstance(text, torch.Tensor) and isinstance(image, torch.Tensor)
        assert_close(text, theirs.get_text_features(inputs["input_ids"]).pooler_output, "text features", REL)
        assert_close(
            image, theirs.get_image_features(inputs["pixel_values"]).pooler_output, "image features", REL
        )
        # The 4.x tensor also reads as the 5.x output: the same pooler_output and the tower's other fields.
        for features, ref, name in (
            (text, theirs.get_text_features(inputs["input_ids"], output_hidden_states=True), "text"),
            (image, theirs.get_image_features(inputs["pixel_values"], output_attentions=True), "image"),
        ):
            assert features.pooler_output is features
            assert_close(features.last_hidden_state, ref.last_hidden_state, f"{name} last_hidden_state", REL)
            assert type(features * 1) is torch.Tensor  # operations give plain tensors
        hidden = ours.get_text_features(inputs["input_ids"], output_hidden_states=True).hidden_states
        ref_hidden = theirs.get_text_features(inputs["input_ids"], output_hidden_states=True).hidden_states
        for a, b in zip(hidden, ref_hidden, strict=True):
            assert_close(a, b, "text hidden_states", REL)
        maps = ours.get_image_features(inputs["pixel_values"], output_attentions=True).attentions
        ref_maps = theirs.get_image_features(inputs["pixel_values"], output_attentions=True).attentions
        for a, b in zip(maps, ref_maps, strict=True):
            assert_close(a, b, "image attentions", REL)
        assert not hasattr(ours.get_text_features(inputs["input_ids"]), "hidden_states")  # only when asked
        # The getters are unnormalised; forward's embeddings are their normalised versions.
        full = ours(**inputs)
        assert_close(full.text_embeds, text / text.norm(dim=-1, keepdim=True), "normalised text", REL)


def test_output_indexing_like_transformers(tiny_pair):
    _, ours, _ = tiny_pair
    with torch.no_grad():
        out = ours(**inputs_for(TINY))
    assert out["logits_per_image"] is out.logits_per_image
    assert out[0] is out.logits_per_image  # loss is None and skipped, as in transformers
    assert "loss" not in out.keys()  # noqa: SIM118 (keys() is the API under test)
    assert list(out)[:2] == ["logits_per_image", "logits_per_text"]


def test_tower_models_match_transformers(tmp_path):
    for cls_name in ("SiglipTextModel", "SiglipVisionModel"):
        theirs = reference_model(cls_name, TINY)
        theirs.save_pretrained(tmp_path / cls_name)
        ours = getattr(siglip, cls_name).from_pretrained(tmp_path / cls_name)
        inputs = inputs_for(TINY)
        arg = inputs["input_ids"] if "Text" in cls_name else inputs["pixel_values"]
        with torch.no_grad():
            _compare_towers(
                ours(arg, output_hidden_states=True), theirs(arg, output_hidden_states=True), cls_name, {}
            )


def test_image_classification_matches_transformers(tmp_path):
    theirs = reference_model("SiglipForImageClassification", TINY, num_labels=5)
    theirs.save_pretrained(tmp_path)
    ours = siglip.SiglipForImageClassification.from_pretrained(tmp_path)
    pixels = inputs_for(TINY, batch=4)["pixel_values"]
    labels = torch.tensor([0, 3, 4, 1])
    ref = theirs(pixels, labels=labels)
    out = ours(pixels, labels=labels)
    assert_close(out.logits, ref.logits, "logits", REL)
    assert_close(out.loss, ref.loss, "loss", REL)
    # transformers fixes config.problem_type at the first call; float labels on a fresh model mean multi-label.
    theirs = reference_model("SiglipForImageClassification", TINY, num_labels=5)
    multi = torch.rand(4, 5).round()
    assert_close(ours(pixels, labels=multi).loss, theirs(pixels, labels=multi).loss, "multi-label loss", REL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matches_transformers(tiny_pair, dtype):
    _, _, directory = tiny_pair
    import transformers

    theirs = transformers.SiglipModel.from_pretrained(directory, dtype=dtype).eval()
    ours = siglip.SiglipModel.from_pretrained(directory, dtype=dtype)
    assert ours.dtype == dtype and ours.logit_scale.dtype == dtype
    inputs = inputs_for(TINY)
    with torch.no_grad():
        ref, out = theirs(**inputs), ours(**inputs)
    assert out.logits_per_image.dtype == dtype
    # Same kernels in the same dtype: equal up to low-precision rounding of differently ordered ops.
    assert_close(out.image_embeds, ref.image_embeds, "low-precision image embeds", 2e-2)
    assert_close(out.logits_per_image, ref.logits_per_image, "low-precision logits", 2e-2)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_pair):
    directory = tiny_pair[2]
    inputs = inputs_for(TINY, batch=3)
    grads = []
    for enabled in (False, True):
        model = siglip.SiglipModel.from_pretrained(directory).train()
        if enabled:
            model.gradient_checkpointing_enable()
        assert model.is_gradient_checkpointing == enabled
        model(**inputs, return_loss=True).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name
