"""Checkpoint I/O: round trips with transformers, tower and sharded layouts, legacy pickles, hub cache, errors."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import siglip
from _reference import TINY, inputs_for, reference_model
from siglip import CheckpointError, OfflineError, SiglipConfig, SiglipModel

CLASSES = ["SiglipModel", "SiglipTextModel", "SiglipVisionModel", "SiglipForImageClassification"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _ours(cls_name: str, seed: int = 0, **config_kwargs):
    torch.manual_seed(seed)
    config = SiglipConfig(**TINY, **config_kwargs)
    if cls_name == "SiglipTextModel":
        config = config.text_config
    elif cls_name == "SiglipVisionModel":
        config = config.vision_config
    return getattr(siglip, cls_name)(config)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_transformers_to_ours_bit_exact(cls_name, tmp_path):
    theirs = reference_model(cls_name, TINY)
    theirs.save_pretrained(tmp_path)
    ours = getattr(siglip, cls_name).from_pretrained(tmp_path)
    # transformers 5 saves towers without the `text_model.` / `vision_model.` prefix; we hold 4.x names.
    their_keys = {
        k.removeprefix("text_model.").removeprefix("vision_model."): v for k, v in theirs.state_dict().items()
    }
    our_keys = {
        k.removeprefix("text_model.").removeprefix("vision_model."): v for k, v in ours.state_dict().items()
    }
    if cls_name in ("SiglipTextModel", "SiglipVisionModel"):
        _assert_same_weights(our_keys, their_keys)
    else:
        _assert_same_weights(ours.state_dict(), theirs.state_dict())


@pytest.mark.parametrize("cls_name", CLASSES)
def test_ours_to_transformers_bit_exact(cls_name, tmp_path):
    ours = _ours(cls_name)
    ours.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["config.json", "model.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in tmp_path.iterdir())  # readable by all
    saved = load_file(tmp_path / "model.safetensors")
    _assert_same_weights(saved, ours.state_dict())  # 4.x key layout, readable by 4.x and 5.x alike
    theirs = getattr(transformers, cls_name).from_pretrained(tmp_path)
    their_state = theirs.state_dict()
    for key, value in ours.state_dict().items():
        their_key = key if key in their_state else key.split(".", 1)[1]
        assert torch.equal(value, their_state[their_key]), key
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [cls_name]


def test_full_checkpoint_loads_into_each_tower(tmp_path, caplog):
    theirs = reference_model("SiglipModel", TINY)
    theirs.save_pretrained(tmp_path)
    inputs = inputs_for(TINY)
    text = siglip.SiglipTextModel.from_pretrained(tmp_path)
    vision = siglip.SiglipVisionModel.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(
            text(inputs["input_ids"]).pooler_output,
            theirs.get_text_features(inputs["input_ids"]).pooler_output,
        )
        assert torch.equal(
            vision(inputs["pixel_values"]).pooler_output,
            theirs.get_image_features(inputs["pixel_values"]).pooler_output,
        )
    with caplog.at_level(logging.WARNING, logger="siglip"):
        classifier = siglip.SiglipForImageClassification.from_pretrained(tmp_path, num_labels=4)
    assert "classifier.weight" in caplog.text and "fresh initialisation" in caplog.text
    assert (
        classifier.classifier.weight.shape == (4, 64) and torch.isfinite(classifier.classifier.weight).all()
    )
    assert classifier.classifier.weight.device.type == "cpu"
    assert torch.equal(
        classifier.vision_model.post_layernorm.weight, theirs.vision_model.post_layernorm.weight
    )


def test_prefixed_and_unprefixed_tower_checkpoints(tmp_path):
    ours = _ours("SiglipVisionModel")
    state = ours.state_dict()
    for name, keys in (
        ("prefixed", state),
        ("bare", {k.removeprefix("vision_model."): v for k, v in state.items()}),
    ):
        ours.config.save_pretrained(tmp_path / name)
        save_file(keys, tmp_path / name / "model.safetensors", metadata={"format": "pt"})
        loaded = siglip.SiglipVisionModel.from_pretrained(tmp_path / name)
        _assert_same_weights(loaded.state_dict(), state)


def test_sharded_checkpoint_round_trip(tmp_path):
    ours = _ours("SiglipModel")
    ours.save_pretrained(tmp_path, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    _assert_same_weights(SiglipModel.from_pretrained(tmp_path).state_dict(), ours.state_dict())
    _assert_same_weights(transformers.SiglipModel.from_pretrained(tmp_path).state_dict(), ours.state_dict())


def test_legacy_pytorch_model_bin(tmp_path):
    ours = _ours("SiglipModel")
    ours.config.save_pretrained(tmp_path)
    torch.save(ours.state_dict(), tmp_path / "pytorch_model.bin")
    _assert_same_weights(SiglipModel.from_pretrained(tmp_path).state_dict(), ours.state_dict())


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited",))


def test_pickled_code_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    SiglipConfig(**TINY).save_pretrained(tmp_path)
    for zipped in (True, False):  # both formats torch.save writes (a bare pickle is no torch file at all)
        torch.save(
            {"logit_scale": _Exploit()}, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=zipped
        )
        with pytest.raises(CheckpointError, match=r"pytorch_model.bin' as plain tensors"):
            SiglipModel.from_pretrained(tmp_path)
        assert not (tmp_path / "exploited").exists()
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"logit_scale": _Exploit()}, f)
    with pytest.raises(CheckpointError, match=r"not a checkpoint format siglip reads"):
        SiglipModel.from_pretrained(tmp_path)
    assert not (tmp_path / "exploited").exists()


def test_safetensors_preferred_over_bin(tmp_path):
    ours = _ours("SiglipModel")
    ours.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"garbage that must not be read")
    _assert_same_weights(SiglipModel.from_pretrained(tmp_path).state_dict(), ours.state_dict())


def _edit_weights(directory: Path, edit) -> None:
    state = load_file(directory / "model.safetensors")
    edit(state)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})


def test_weight_problems_are_listed(tmp_path):
    _ours("SiglipModel").save_pretrained(tmp_path)
    _edit_weights(tmp_path, lambda s: s.pop("text_model.head.bias"))
    with pytest.raises(CheckpointError, match=r"missing weights:\n  text_model.head.bias"):
        SiglipModel.from_pretrained(tmp_path)
    _edit_weights(
        tmp_path,
        lambda s: s.update({"text_model.head.bias": torch.zeros(64), "extra.weight": torch.zeros(2)}),
    )
    with pytest.raises(CheckpointError, match=r"unexpected weights:\n  extra.weight"):
        SiglipModel.from_pretrained(tmp_path)
    _edit_weights(tmp_path, lambda s: (s.pop("extra.weight"), s.update({"logit_bias": torch.zeros(3)})))
    with pytest.raises(
        CheckpointError,
        match=r"mis-shaped weights \(.*\):\n  logit_bias: checkpoint \(3,\), model \(1,\)",
    ):
        SiglipModel.from_pretrained(tmp_path)


def test_ignore_mismatched_sizes_reinitialises_the_classifier(tmp_path, caplog):
    _ours("SiglipForImageClassification", num_labels=3).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"classifier.weight: checkpoint \(3, 64\), model \(5, 64\)"):
        siglip.SiglipForImageClassification.from_pretrained(tmp_path, num_labels=5)
    with caplog.at_level(logging.WARNING, logger="siglip"):
        model = siglip.SiglipForImageClassification.from_pretrained(
            tmp_path, num_labels=5, ignore_mismatched_sizes=True
        )
    assert model.classifier.weight.shape == (5, 64) and "classifier.weight" in caplog.text
    assert model(torch.zeros(1, 3, 32, 32)).logits.shape == (1, 5)


def test_a_tower_checkpoint_does_not_fit_the_full_model(tmp_path):
    _ours("SiglipVisionModel").save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"expects model_type 'siglip'.*'siglip_vision_model'"):
        SiglipModel.from_pretrained(tmp_path)


def test_dtype_and_device_arguments(tmp_path):
    _ours("SiglipModel").save_pretrained(tmp_path)
    assert SiglipModel.from_pretrained(tmp_path).dtype == torch.float32
    assert SiglipModel.from_pretrained(tmp_path, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert SiglipModel.from_pretrained(tmp_path, torch_dtype="float16").dtype == torch.float16
    SiglipModel.from_pretrained(tmp_path, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert SiglipModel.from_pretrained(tmp_path / "bf16", dtype="auto").dtype == torch.bfloat16
    assert SiglipModel.from_pretrained(tmp_path / "bf16").dtype == torch.float32
    model = SiglipModel.from_pretrained(tmp_path, device="cpu")
    assert model.device.type == "cpu" and not model.training
    with pytest.raises(ValueError, match="disagree"):
        SiglipModel.from_pretrained(tmp_path, dtype=torch.float16, torch_dtype=torch.bfloat16)


def test_missing_files_and_bad_paths(tmp_path):
    with pytest.raises(CheckpointError, match=f"'{tmp_path}' has no 'config.json'"):
        SiglipModel.from_pretrained(tmp_path)
    SiglipConfig(**TINY).save_pretrained(tmp_path)
    with pytest.raises(
        CheckpointError, match=r"has no weights: looked for model.safetensors, model.safetensors.index.json"
    ):
        SiglipModel.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="is a file; pass the directory"):
        SiglipModel.from_pretrained(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=r"No such directory: './not-here'"):
        SiglipModel.from_pretrained("./not-here")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="Cannot read safetensors file"):
        SiglipModel.from_pretrained(tmp_path)


def test_interrupted_save_leaves_the_directory_as_it_was(tmp_path, monkeypatch):
    first = _ours("SiglipModel", seed=1)
    first.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(state_dict, directory, **kwargs):  # dies half-way through writing the weights
        (directory / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(siglip.core.weights, "save_state_dict", crash)
    with pytest.raises(KeyboardInterrupt):
        _ours("SiglipModel", seed=2).save_pretrained(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp folder, nothing changed


# --- the hub cache (no network here: a cache laid out as huggingface_hub lays it out) -------------------
def _fake_hub_cache(cache: Path, repo_id: str, source: Path, revision_name: str = "main") -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / revision_name).write_text(commit)


def test_hub_id_resolves_from_the_cache_offline(tmp_path):
    ours = _ours("SiglipModel")
    ours.save_pretrained(tmp_path / "src")
    _fake_hub_cache(tmp_path / "cache", "google/siglip-test", tmp_path / "src", revision_name="v1")
    loaded = SiglipModel.from_pretrained(
        "google/siglip-test", cache_dir=tmp_path / "cache", revision="v1", local_files_only=True
    )
    _assert_same_weights(loaded.state_dict(), ours.state_dict())
    with pytest.raises(OfflineError, match="'google/siglip-test' is not a local directory"):
        SiglipModel.from_pretrained("google/siglip-test", cache_dir=tmp_path / "cache", local_files_only=True)


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def test_hf_hub_offline_environment(tmp_path):
    _ours("SiglipModel").save_pretrained(tmp_path / "src")
    _fake_hub_cache(tmp_path / "cache", "someone/cached", tmp_path / "src")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    code = (
        "import siglip; m = siglip.SiglipModel.from_pretrained('someone/cached'); print(m.num_parameters())"
    )
    done = _run(code, env)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == _ours("SiglipModel").num_parameters()
    done = _run("import siglip; siglip.SiglipModel.from_pretrained('google/siglip-base-patch16-224')", env)
    assert done.returncode != 0
    assert "OfflineError" in done.stderr
    assert (
        "is not in the Hugging Face cache" in done.stderr
        and "pass the path of a local directory" in done.stderr
    )


def test_a_new_save_removes_the_weight_files_of_an_earlier_layout(tmp_path):
    model = _ours("SiglipModel")
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        model.logit_bias.fill_(123.0)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert not (tmp_path / "model.safetensors").exists()  # it would shadow the new shards
    assert SiglipModel.from_pretrained(tmp_path).logit_bias.item() == 123.0
    model.save_pretrained(tmp_path)  # and back: the shards and their index go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_transformers_loading_options(tmp_path):
    _ours("SiglipModel").save_pretrained(tmp_path)
    model = SiglipModel.from_pretrained(
        tmp_path, device_map="cpu", low_cpu_mem_usage=True, output_attentions=True
    )
    assert model.device.type == "cpu" and model.config.output_attentions
    assert model.config.name_or_path == str(tmp_path)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['image_size', 'torch_dype'\]"):
        SiglipModel.from_pretrained(tmp_path, torch_dype=torch.float16, image_size=64)
    # "auto" puts the whole model on the best device (here the CPU); more in tests/test_dropin.py
    assert SiglipModel.from_pretrained(tmp_path, device_map="auto").device.type == "cpu"


def test_save_pretrained_options(tmp_path):
    model = _ours("SiglipModel")
    model.save_pretrained(tmp_path / "other", is_main_process=False)
    assert not (tmp_path / "other").exists()
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path / "given", state_dict=state)
    assert torch.equal(load_file(tmp_path / "given" / "model.safetensors")["logit_bias"], torch.zeros(1))
    with pytest.raises(ValueError, match="safetensors only"):
        model.save_pretrained(tmp_path / "pickles", safe_serialization=False)


def test_api_details_like_transformers():
    assert SiglipModel.main_input_name == transformers.SiglipModel.main_input_name == "input_ids"
    assert siglip.SiglipVisionModel.main_input_name == transformers.SiglipVisionModel.main_input_name
    text, vision = siglip.SiglipTextConfig(vocab_size=99), siglip.SiglipVisionConfig(patch_size=14)
    config = SiglipConfig(text, vision)  # positional, as transformers 4.x allows
    assert config.text_config.vocab_size == 99 and config.vision_config.patch_size == 14


def test_a_tower_loads_from_a_classifier_checkpoint(tmp_path):
    _ours("SiglipForImageClassification", num_labels=3).save_pretrained(tmp_path)
    vision = siglip.SiglipVisionModel.from_pretrained(tmp_path)
    assert vision(torch.zeros(1, 3, 32, 32)).pooler_output.shape == (1, 64)


def test_mis_shaped_weights_name_the_way_out(tmp_path):
    _ours("SiglipForImageClassification", num_labels=3).save_pretrained(tmp_path)
    with pytest.raises(
        CheckpointError,
        match="pass ignore_mismatched_sizes=True in Python or --ignore-mismatched-sizes to `siglip train`",
    ):
        siglip.SiglipForImageClassification.from_pretrained(tmp_path, num_labels=5)


def test_offline_a_cached_snapshot_goes_without_an_optional_file(tmp_path, spiece_model):
    """As transformers: offline, a repository whose snapshot is cached loads without the optional files the
    cache lacks (special_tokens_map.json here); a repository not cached at all is an OfflineError."""
    from _material import save_tiny_checkpoint

    source = save_tiny_checkpoint(tmp_path / "src", spiece_model)
    (source / "special_tokens_map.json").unlink()
    _fake_hub_cache(tmp_path / "cache", "someone/cached", source)
    code = (
        "import siglip; p = siglip.SiglipProcessor.from_pretrained('someone/cached'); "
        "print(p(text=['a cat'], return_tensors='pt')['input_ids'].shape[1])"
    )
    done = _run(code, {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 16
