"""One precision vocabulary: every word means the same weights and arithmetic for training and inference,
decided by one hardware probe (CPU, and CUDA GPUs of compute capability 7.x and 8.x, mocked)."""

from __future__ import annotations

import pytest
import torch

from siglip.errors import UsageError
from siglip.tools.embeddings.inference import InferenceMode
from siglip.tools.embeddings.precision import (
    PRECISIONS,
    TRAINING_PRECISIONS,
    as_precision,
    native_bf16,
    precision_of_dtype,
    resolve_precision,
)
from siglip.tools.training import TrainConfig

DEVICES = {  # name -> (device, CUDA capability or None, has bf16 units)
    "cpu without bf16 units": ("cpu", None, False),
    "cpu with AVX-512 BF16": ("cpu", None, True),
    "cuda 7.0 (V100)": ("cuda", (7, 0), False),
    "cuda 8.0 (A100)": ("cuda", (8, 0), True),
}


@pytest.fixture(params=list(DEVICES))
def device(request, monkeypatch) -> tuple[str, bool]:
    """A device with its capability mocked; yields (device type, whether it has bf16 units)."""
    kind, capability, bf16_units = DEVICES[request.param]
    monkeypatch.delenv("SIGLIP_BF16_UNITS", raising=False)  # the suite's fp32 pin: this test probes
    if kind == "cuda":
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    else:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16_units)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return kind, bf16_units


def _meaning(word: str, device: str, training: bool) -> tuple[torch.dtype, torch.dtype | None]:
    resolved = resolve_precision(word, device, training=training)
    return resolved.weights, resolved.autocast


def test_the_probe_sees_bf16_units_only_where_the_hardware_has_them(device):
    kind, bf16_units = device
    assert native_bf16(kind) is bf16_units


def test_each_word_means_the_same_for_training_and_inference(device):
    kind, _ = device
    for word in TRAINING_PRECISIONS:
        if word == "auto":
            continue
        assert InferenceMode(word).resolve(kind).dtype == resolve_precision(word, kind).weights
        assert _meaning(word, kind, training=True) == _meaning(word, kind, training=False)
    assert _meaning("bf16", kind, training=True) == (torch.bfloat16, None)
    assert _meaning("bf16-autocast", kind, training=True) == (torch.float32, torch.bfloat16)
    assert _meaning("fp32", kind, training=True) == (torch.float32, None)


def test_auto_computes_in_bf16_exactly_where_there_are_bf16_units(device):
    kind, bf16_units = device
    inference = _meaning("auto", kind, training=False)
    training = _meaning("auto", kind, training=True)
    # the arithmetic dtype agrees; training keeps float32 weights for the optimizer
    if bf16_units:
        assert inference == (torch.bfloat16, None)
        assert training == (torch.float32, torch.bfloat16)
    else:
        assert inference == ((torch.float16, None) if kind == "cuda" else (torch.float32, None))
        assert training == (torch.float32, None)
    assert InferenceMode().resolve(kind).dtype == inference[0]


def test_training_refuses_the_inference_only_words():
    assert set(TRAINING_PRECISIONS) < set(PRECISIONS)
    for word in set(PRECISIONS) - set(TRAINING_PRECISIONS):
        with pytest.raises(UsageError, match=f"{word!r}"):
            TrainConfig(data="x", output_dir="y", model="m", precision=word)
    with pytest.raises(UsageError, match="CPU only"):
        resolve_precision("int8", "cuda")


def test_the_environment_pin_overrides_the_probe(monkeypatch):
    monkeypatch.setenv("SIGLIP_BF16_UNITS", "0")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert not native_bf16("cpu")
    monkeypatch.setenv("SIGLIP_BF16_UNITS", "1")
    assert native_bf16("cpu")


def test_a_dtype_names_the_word_whose_weights_it_is():
    for word in ("fp32", "bf16", "fp16"):
        assert precision_of_dtype(as_precision(word).weights) == word
    with pytest.raises(UsageError, match="float64"):
        precision_of_dtype(torch.float64)
