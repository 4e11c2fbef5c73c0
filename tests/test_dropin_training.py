"""What fine-tuning code calls on a model (issue 21), against transformers 5.24: its `Trainer` on
`SiglipForImageClassification`, `num_parameters`, input embeddings, `resize_token_embeddings`, `push_to_hub`, and
the answers to `quantization_config=` and `attn_implementation="flash_attention_2"` where the packages are missing
(and, with the packages mocked, what they would run)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import siglip
from _reference import TINY, quiet_transformers, reference_model
from siglip import OfflineError

NUM_LABELS = 3


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tf-classifier")
    reference_model("SiglipForImageClassification", TINY, num_labels=NUM_LABELS).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tf-model")
    reference_model("SiglipModel", TINY).save_pretrained(directory)
    return directory


# --- transformers' Trainer -----------------------------------------------------------------------------------
def _train(model, output_dir: Path, checkpointing: dict | None) -> list[float]:
    import transformers

    generator = torch.Generator().manual_seed(0)
    data = [
        {"pixel_values": torch.rand(3, 32, 32, generator=generator) * 2 - 1, "labels": i % NUM_LABELS}
        for i in range(12)
    ]
    args = transformers.TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-3,
        logging_steps=1, report_to=[], seed=0, use_cpu=True, save_strategy="no", dataloader_num_workers=0,
        activation_checkpointing=checkpointing is not None, activation_checkpointing_kwargs=checkpointing,
        disable_tqdm=True,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("checkpointing", [None, {}, {"every_n_layers": 2, "use_reentrant": True}])
def test_trainer_fine_tunes_our_classifier_with_transformers_losses(classifier_dir, tmp_path, checkpointing):
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate (in the test extra)")
    import transformers

    quiet_transformers()
    theirs_model = transformers.SiglipForImageClassification.from_pretrained(classifier_dir)
    theirs = _train(theirs_model, tmp_path / "t", checkpointing)
    ours_model = siglip.SiglipForImageClassification.from_pretrained(classifier_dir)
    ours = _train(ours_model, tmp_path / "o", checkpointing)
    assert len(ours) == len(theirs) == 4
    assert ours == pytest.approx(theirs, rel=1e-5)
    assert ours_model.is_activation_checkpointing == (checkpointing is not None)


@pytest.mark.parametrize("every_n_layers", [1, 2, 3])
def test_activation_checkpointing_picks_transformers_layers(model_dir, every_n_layers):
    import transformers

    ours, theirs = (
        siglip.SiglipModel.from_pretrained(model_dir),
        transformers.SiglipModel.from_pretrained(model_dir),
    )
    for model in (ours, theirs):
        model.activation_checkpointing_enable(every_n_layers=every_n_layers)
    expected = [layer.gradient_checkpointing for tower in ("text_model", "vision_model")
                for layer in getattr(theirs, tower).encoder.layers]  # fmt: skip
    assert [
        flag for tower in (ours.text_model, ours.vision_model) for flag in tower.encoder.checkpointed
    ] == expected
    ours.gradient_checkpointing_disable()
    assert not ours.is_gradient_checkpointing


# --- the model methods Trainer and PEFT use -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["SiglipModel", "SiglipTextModel", "SiglipVisionModel"])
def test_num_parameters_as_transformers(model_dir, name):
    import transformers

    ours, theirs = (
        getattr(siglip, name).from_pretrained(model_dir),
        getattr(transformers, name).from_pretrained(model_dir),
    )
    for model in (ours, theirs):
        for p in list(model.parameters())[:5]:
            p.requires_grad_(False)
    for kwargs in ({}, {"only_trainable": True}, {"exclude_embeddings": True},
                   {"only_trainable": True, "exclude_embeddings": True}):  # fmt: skip
        assert ours.num_parameters(**kwargs) == theirs.num_parameters(**kwargs), kwargs


@pytest.mark.parametrize(
    "name", ["SiglipModel", "SiglipTextModel", "SiglipVisionModel", "SiglipForImageClassification"]
)
def test_input_embeddings_as_transformers(model_dir, name):
    import transformers

    quiet_transformers()
    ours, theirs = (
        getattr(siglip, name).from_pretrained(model_dir),
        getattr(transformers, name).from_pretrained(model_dir),
    )
    for kind in (nn.Embedding, nn.Conv2d):
        assert isinstance(ours.get_input_embeddings(), kind) == isinstance(
            theirs.get_input_embeddings(), kind
        )
    assert ours.get_input_embeddings().weight.shape == theirs.get_input_embeddings().weight.shape
    assert ours.get_output_embeddings() is theirs.get_output_embeddings() is None
    replacement = (
        nn.Embedding(7, 64)
        if isinstance(ours.get_input_embeddings(), nn.Embedding)
        else nn.Conv2d(3, 64, 8, 8)
    )
    ours.set_input_embeddings(replacement)
    assert ours.get_input_embeddings() is replacement


def test_enable_input_require_grads_lets_gradients_reach_a_frozen_model(model_dir):
    model = siglip.SiglipModel.from_pretrained(model_dir).requires_grad_(False)
    ids = torch.ones(2, 16, dtype=torch.long)
    assert not model.get_text_features(ids).requires_grad
    model.enable_input_require_grads()
    assert model.get_text_features(ids).requires_grad
    model.disable_input_require_grads()
    assert not model.get_text_features(ids).requires_grad


@pytest.mark.parametrize(
    "kwargs", [{"new_num_tokens": 140}, {"new_num_tokens": 100}, {"new_num_tokens": 130, "pad_to_multiple_of": 16},
               {"pad_to_multiple_of": 48}, {"new_num_tokens": 140, "mean_resizing": False}, {}],
)  # fmt: skip
def test_resize_token_embeddings_as_transformers(model_dir, kwargs):
    import transformers

    ours, theirs = (
        siglip.SiglipModel.from_pretrained(model_dir),
        transformers.SiglipModel.from_pretrained(model_dir),
    )
    torch.manual_seed(1)
    expected = theirs.resize_token_embeddings(**kwargs)
    torch.manual_seed(1)
    got = ours.resize_token_embeddings(**kwargs)
    assert got.weight.shape == expected.weight.shape
    assert ours.config.text_config.vocab_size == theirs.config.text_config.vocab_size
    assert got is ours.get_input_embeddings()
    if kwargs.get("mean_resizing", True):  # the same draw from the same distribution
        torch.testing.assert_close(got.weight, expected.weight, rtol=1e-5, atol=1e-6)
    else:  # transformers initialises the new rows with its own init: compare the kept rows
        torch.testing.assert_close(got.weight[:128], expected.weight[:128])


# --- push_to_hub ------------------------------------------------------------------------------------------------
def test_push_to_hub_offline_fails_in_one_line(model_dir, monkeypatch):
    from siglip.core import push_to_hub

    monkeypatch.setattr(push_to_hub, "hub_reachable", lambda: False)
    with pytest.raises(OfflineError, match="cannot be reached") as err:
        siglip.SiglipModel.from_pretrained(model_dir).push_to_hub("me/tiny")
    assert "\n" not in str(err.value)


def test_push_to_hub_uploads_the_saved_files(model_dir, monkeypatch):
    import huggingface_hub

    from siglip.core import push_to_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None, library_name=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["create"] = (repo_id, private, exist_ok)
            return types.SimpleNamespace(repo_id=f"user/{repo_id}")

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls["upload"] = (repo_id, sorted(p.name for p in Path(folder_path).iterdir()), kwargs)
            return "commit-info"

    monkeypatch.setattr(push_to_hub, "hub_reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    model = siglip.SiglipModel.from_pretrained(model_dir)
    assert (
        model.push_to_hub("tiny", private=True, token="t", tags=["siglip"], revision="dev") == "commit-info"
    )
    assert calls["create"] == ("tiny", True, True) and calls["token"] == "t"
    repo_id, files, kwargs = calls["upload"]
    assert repo_id == "user/tiny" and files == ["README.md", "config.json", "model.safetensors"]
    assert kwargs["commit_message"] == "Upload SiglipModel" and kwargs["revision"] == "dev"
    model.config.push_to_hub("tiny")
    assert calls["upload"][1] == ["config.json"]


# --- bitsandbytes ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is not None,
    reason="bitsandbytes is installed: no error to check",
)
def test_quantization_without_bitsandbytes_is_a_one_line_error(model_dir):
    import transformers

    for config in (
        siglip.BitsAndBytesConfig(load_in_4bit=True),
        transformers.BitsAndBytesConfig(load_in_8bit=True),
    ):
        with pytest.raises(ImportError, match=r"requires bitsandbytes: `pip install -U bitsandbytes`") as err:
            siglip.AutoModel.from_pretrained(model_dir, quantization_config=config)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="bitsandbytes only"):
        siglip.AutoModel.from_pretrained(model_dir, quantization_config={"quant_method": "gptq", "bits": 4})
    with pytest.raises(ValueError, match="only one can be used"):
        siglip.BitsAndBytesConfig(load_in_4bit=True, load_in_8bit=True)


def _fake_bitsandbytes() -> types.ModuleType:
    """A stand-in for bitsandbytes whose layers compute in full precision: enough to check which layers the
    loader swaps and that the weights travel with them."""

    class Param(nn.Parameter):
        def __new__(cls, data, requires_grad=False, **kwargs):
            return super().__new__(cls, data, requires_grad)

    class Linear8bitLt(nn.Linear):
        def __init__(self, in_features, out_features, bias=True, has_fp16_weights=True, threshold=0.0):
            super().__init__(in_features, out_features, bias, device="meta")

    class Linear4bit(nn.Linear):
        def __init__(self, in_features, out_features, bias=True, compute_dtype=None, **kwargs):
            super().__init__(in_features, out_features, bias, device="meta")

    module = types.ModuleType("bitsandbytes")
    module.__spec__ = importlib.machinery.ModuleSpec("bitsandbytes", None)
    module.nn = types.SimpleNamespace(
        Linear8bitLt=Linear8bitLt, Linear4bit=Linear4bit, Int8Params=Param, Params4bit=Param
    )
    return module


@pytest.mark.parametrize("bits", [4, 8])
def test_quantization_swaps_the_linear_layers_transformers_swaps(model_dir, monkeypatch, bits):
    fake = _fake_bitsandbytes()
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    plain = siglip.SiglipForImageClassification.from_pretrained(model_dir, num_labels=2, dtype=torch.float32)
    torch.manual_seed(0)
    config = siglip.BitsAndBytesConfig(**{f"load_in_{bits}bit": True})
    model = siglip.SiglipForImageClassification.from_pretrained(
        model_dir, num_labels=2, quantization_config=config
    )
    swapped = {
        name
        for name, m in model.named_modules()
        if type(m).__name__.startswith("Linear") and "bit" in type(m).__name__
    }
    linear = {name for name, m in plain.named_modules() if type(m) is nn.Linear}
    assert swapped == linear - {"classifier"}  # the module of the last parameter stays, as in transformers
    assert (
        type(model.vision_model.head.attention.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    )
    assert model.dtype == torch.float16 and model.is_quantized and getattr(model, f"is_loaded_in_{bits}bit")
    assert model.config.quantization_config[f"load_in_{bits}bit"] is True
    model.classifier.load_state_dict(plain.classifier.state_dict())
    pixels = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(
        model.float()(pixels).logits, plain(pixels).logits, rtol=1e-2, atol=1e-2
    )  # float16 weights


# --- flash attention ------------------------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash_attn is installed")
def test_flash_attention_without_the_package_is_transformers_error(model_dir, tmp_path):
    import transformers

    with pytest.raises(ImportError) as theirs:
        transformers.SiglipModel.from_pretrained(model_dir, attn_implementation="flash_attention_2")
    with pytest.raises(ImportError) as ours:
        siglip.SiglipModel.from_pretrained(model_dir, attn_implementation="flash_attention_2")
    assert str(ours.value) == str(theirs.value)
    vision = {k: v for k, v in TINY["vision_config"].items() if k != "image_size"}
    naflex = siglip.Siglip2Config(
        text_config=TINY["text_config"],
        vision_config=dict(vision, num_patches=16),
        attn_implementation="flash_attention_2",
    )
    with pytest.raises(ValueError, match="Siglip2Model does not support Flash Attention 2"):
        siglip.Siglip2Model(naflex)  # as transformers: SigLIP 2 NaFlex runs eager and sdpa only


def _fake_flash_attn() -> types.ModuleType:
    """flash_attn's two functions written with SDPA, on (B, T, H, D) and on packed varlen tokens."""

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), scale=softmax_scale)
        return out.transpose(1, 2)

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kwargs):
        bounds = cu_seqlens_q.tolist()
        pieces = [
            flash_attn_func(q[None, a:b], k[None, a:b], v[None, a:b], softmax_scale=kwargs["softmax_scale"])[
                0
            ]
            for a, b in itertools.pairwise(bounds)
        ]
        return torch.cat(pieces)

    module = types.ModuleType("flash_attn")
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    module.flash_attn_func, module.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    return module


def test_flash_attention_path_with_the_package_mocked(model_dir, monkeypatch):
    """Without a mask the flash path is SDPA's attention; with a padding mask, the kept tokens see what SDPA
    gives them and the padded positions come out as transformers' FA2 path makes them (zeros before out_proj)."""
    monkeypatch.setitem(sys.modules, "flash_attn", _fake_flash_attn())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    flash = siglip.SiglipModel.from_pretrained(model_dir, attn_implementation="flash_attention_2")
    sdpa = siglip.SiglipModel.from_pretrained(model_dir)
    pixels, ids = torch.rand(2, 3, 32, 32), torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(flash.get_image_features(pixels), sdpa.get_image_features(pixels))
        mask = torch.ones(2, 16, dtype=torch.long)
        mask[1, 10:] = 0
        ours = flash.text_model(ids, mask).last_hidden_state
        reference = sdpa.text_model(ids, mask).last_hidden_state
        kept = mask.bool()
        torch.testing.assert_close(ours[kept], reference[kept], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(ours[1, 10:], reference[1, 10:])
