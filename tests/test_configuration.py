"""Configs: transformers' defaults, sparse released config.json files, unknown keys, files transformers reads."""

from __future__ import annotations

import dataclasses
import json

import pytest
import transformers

import siglip
from _reference import quiet_transformers
from siglip import CheckpointError, SiglipConfig, SiglipTextConfig, SiglipVisionConfig

quiet_transformers()

# Sparse config.json files as released checkpoints store them (only non-default keys).
SPARSE_BASE_224 = {
    "architectures": ["SiglipModel"],
    "initializer_factor": 1.0,
    "model_type": "siglip",
    "text_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "model_type": "siglip_text_model",
        "num_attention_heads": 12,
        "vocab_size": 32000,
    },
    "torch_dtype": "float32",
    "transformers_version": "4.37.0.dev0",
    "vision_config": {"model_type": "siglip_vision_model", "patch_size": 16},
}
SPARSE_SO400M_224 = {
    "model_type": "siglip",
    "text_config": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "max_position_embeddings": 16,
        "model_type": "siglip_text_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
    },
    "vision_config": {
        "hidden_size": 1152,
        "image_size": 224,
        "intermediate_size": 4304,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "patch_size": 14,
    },
}
SPARSE_GIANT_OPT = {
    "model_type": "siglip",
    "text_config": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "projection_size": 1536,
        "vocab_size": 256000,
    },
    "vision_config": {
        "hidden_size": 1536,
        "image_size": 384,
        "intermediate_size": 6144,
        "num_attention_heads": 16,
        "num_hidden_layers": 40,
        "patch_size": 16,
    },
    "dtype": "bfloat16",
}


def _model_fields(config) -> list[str]:
    base = {f.name for f in dataclasses.fields(siglip.core.config.PretrainedConfig)}
    return [f.name for f in dataclasses.fields(config) if f.name not in base]


def _assert_same_values(ours, theirs) -> None:
    for name in _model_fields(ours):
        value = getattr(ours, name)
        if isinstance(value, siglip.core.config.PretrainedConfig):
            _assert_same_values(value, getattr(theirs, name))
        else:
            assert value == getattr(theirs, name), (
                f"{type(ours).__name__}.{name}: {value} != {getattr(theirs, name)}"
            )


@pytest.mark.parametrize("cls_name", ["SiglipTextConfig", "SiglipVisionConfig", "SiglipConfig"])
def test_defaults_equal_transformers(cls_name):
    ours, theirs = getattr(siglip, cls_name)(), getattr(transformers, cls_name)()
    assert ours.model_type == theirs.model_type
    _assert_same_values(ours, theirs)
    assert ours.num_labels == theirs.num_labels == 2


@pytest.mark.parametrize("sparse", [SPARSE_BASE_224, SPARSE_SO400M_224, SPARSE_GIANT_OPT])
def test_sparse_released_configs_read_as_transformers_reads_them(sparse, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(sparse))
    ours = SiglipConfig.from_pretrained(tmp_path)
    theirs = transformers.SiglipConfig.from_pretrained(tmp_path)
    _assert_same_values(ours, theirs)
    # A tower config picks its own part of a full SigLIP config.
    _assert_same_values(SiglipTextConfig.from_pretrained(tmp_path), theirs.text_config)
    _assert_same_values(SiglipVisionConfig.from_pretrained(tmp_path), theirs.vision_config)


def test_derived_fields():
    assert SiglipTextConfig().projection_size == 768
    assert SiglipTextConfig(hidden_size=1152, num_attention_heads=16).projection_size == 1152
    giant = SiglipConfig.from_dict(SPARSE_GIANT_OPT)
    assert giant.text_config.projection_size == 1536
    assert giant.torch_dtype == "bfloat16"  # transformers 5 writes `dtype`, 4.x `torch_dtype`
    assert SiglipConfig.from_dict(SPARSE_SO400M_224).text_config.max_position_embeddings == 16
    config = SiglipConfig(num_labels=3)
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert config.label2id == {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}
    assert SiglipConfig.from_dict({"id2label": {"0": "cat", "1": "dog"}}).id2label == {0: "cat", 1: "dog"}


def test_unknown_keys_are_kept_and_written_back(tmp_path):
    data = json.loads(json.dumps(SPARSE_BASE_224))
    data["my_field"] = {"a": 1}
    data["vision_config"]["paligemma_extra"] = 7
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = SiglipConfig.from_pretrained(tmp_path)
    assert config.my_field == {"a": 1}
    assert config.vision_config.paligemma_extra == 7
    config.save_pretrained(tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["my_field"] == {"a": 1}
    assert written["vision_config"]["paligemma_extra"] == 7
    assert "transformers_version" not in written  # describes the writer, not the model
    assert "attn_implementation" not in json.dumps(written)


def test_files_we_write_are_read_by_transformers(tmp_path):
    ours = SiglipConfig(
        text_config={
            "hidden_size": 1152,
            "num_attention_heads": 16,
            "projection_size": 1536,
            "vocab_size": 256000,
        },
        vision_config={"image_size": 384, "patch_size": 14, "vision_use_head": False},
        id2label={0: "cat", 1: "dog", 2: "bird"},
        torch_dtype="bfloat16",
    )
    ours.save_pretrained(tmp_path)
    theirs = transformers.SiglipConfig.from_pretrained(tmp_path)
    _assert_same_values(ours, theirs)
    assert theirs.id2label == {0: "cat", 1: "dog", 2: "bird"}
    assert theirs.num_labels == 3
    for cls_name in ("SiglipTextConfig", "SiglipVisionConfig"):
        tower = getattr(siglip, cls_name)(hidden_size=128, num_attention_heads=4)
        tower.save_pretrained(tmp_path / cls_name)
        _assert_same_values(tower, getattr(transformers, cls_name).from_pretrained(tmp_path / cls_name))


def test_composition_and_overrides(tmp_path):
    text, vision = SiglipTextConfig(vocab_size=1000), SiglipVisionConfig(image_size=256)
    config = SiglipConfig.from_text_vision_configs(text, vision, initializer_factor=0.5)
    assert config.text_config.vocab_size == 1000 and config.vision_config.image_size == 256
    assert config.initializer_factor == 0.5
    config.save_pretrained(tmp_path)
    assert SiglipConfig.from_pretrained(tmp_path, num_labels=7).num_labels == 7


def test_attn_implementation_reaches_the_towers():
    config = SiglipConfig(attn_implementation="eager")
    assert config.text_config.attn_implementation == "eager" == config.vision_config.attn_implementation
    config.attn_implementation = "sdpa"
    assert config.vision_config.attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        SiglipConfig(attn_implementation="flex_attention")  # flash_attention_2: tests/test_dropin_training.py


def test_bad_configs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="hidden_size 100 is not divisible by num_attention_heads 12"):
        SiglipTextConfig(hidden_size=100)
    with pytest.raises(ValueError, match="image_size 8 is smaller than patch_size 16"):
        SiglipVisionConfig(image_size=8)
    with pytest.raises(ValueError, match=r"'siglip2'.*SigLIP 2 NaFlex.*siglip\.Siglip2Model"):
        SiglipConfig.from_dict({"model_type": "siglip2"})
    with pytest.raises(ValueError, match=r"expects model_type 'siglip_vision_model'.*'siglip_text_model'"):
        SiglipVisionConfig.from_dict({"model_type": "siglip_text_model"})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json' is not valid JSON"):
        SiglipConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "siglip", "text_config": {"hidden_size": 7}})
    )
    with pytest.raises(CheckpointError, match=r"Invalid config .*config.json.*hidden_size 7"):
        SiglipConfig.from_pretrained(tmp_path)
