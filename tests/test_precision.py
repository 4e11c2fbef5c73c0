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
    auto_precision,
    native_bf16,
    precision_of_dtype,
    resolve_precision,
)
from siglip.tools.training import TrainConfig

# name -> (device, CUDA capability or None, CPU flags, has bf16 units, auto for inference, auto for training):
# the table of siglip.tools.embeddings.precision's doc, written out by hand
DEVICES = {
    "cpu, SSE only": ("cpu", None, set(), False, "fp32", "fp32"),
    "cpu with AVX2": ("cpu", None, {"avx2"}, False, "int8", "fp32"),
    "cpu with AVX-512 VNNI": ("cpu", None, {"avx2", "vnni"}, False, "int8", "fp32"),
    "cpu with AVX-512 BF16": ("cpu", None, {"avx2", "vnni", "avx512_bf16"}, True, "int8", "bf16-autocast"),
    "cpu with AMX": ("cpu", None, {"avx2", "vnni", "avx512_bf16", "amx"}, True, "bf16", "bf16-autocast"),
    "cpu with bf16 units, no int8 kernels": ("cpu", None, {"avx512_bf16"}, True, "bf16", "bf16-autocast"),
    "cuda 7.0 (V100)": ("cuda", (7, 0), set(), False, "fp16", "fp32"),
    "cuda 8.0 (A100)": ("cuda", (8, 0), set(), True, "bf16", "bf16-autocast"),
}


@pytest.fixture(params=list(DEVICES))
def device(request, monkeypatch) -> tuple[str, bool]:
    """A device with its capability mocked; yields (device type, whether it has bf16 units)."""
    kind, capability, flags, bf16_units, *_ = DEVICES[request.param]
    for variable in ("SIGLIP_BF16_UNITS", "ONEDNN_MAX_CPU_ISA", "FBGEMM_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(variable, raising=False)  # the suite's fp32 pin, and caps: this test probes
    if kind == "cuda":
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    else:
        for flag, probe in [("avx512_bf16", "_is_avx512_bf16_supported"), ("amx", "_is_amx_tile_supported"),
                            ("avx2", "_is_avx2_supported"), ("vnni", "_is_vnni_supported")]:  # fmt: skip
            monkeypatch.setattr(torch.cpu, probe, lambda flag=flag: flag in flags)
    request.node.auto_words = DEVICES[request.param][4:]
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


def test_auto_is_the_documented_word_for_each_device(device, request):
    kind, bf16_units = device
    inference, training = request.node.auto_words
    assert resolve_precision("auto", kind).name == inference
    assert resolve_precision("auto", kind, training=True).name == training
    assert InferenceMode().resolve(kind).precision == inference
    word, why = auto_precision(kind)
    assert word == inference and why.startswith("auto: ")
    # training computes in bf16 exactly where there are bf16 units; int8 only on CPUs, never for training
    assert (_meaning("auto", kind, training=True)[1] == torch.bfloat16) is bf16_units
    if inference == "int8":
        assert why.endswith(("with VNNI", "without VNNI"))


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
    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: True)
    assert not native_bf16("cpu")
    assert resolve_precision("auto", "cpu").name == "fp32"  # the pin means reference numbers: no int8 either
    monkeypatch.setenv("SIGLIP_BF16_UNITS", "1")
    assert native_bf16("cpu")


# ISA caps on a CPU with every unit (AMX): (variables, auto for inference, auto for training, why's ending):
# the table's row for the CPU the caps leave, by hand
CAPPED = {
    "oneDNN at AVX2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "int8", "fp32",
                       "without VNNI (ONEDNN_MAX_CPU_ISA=AVX2)"),
    "oneDNN at AVX-512 VNNI": ({"ONEDNN_MAX_CPU_ISA": "avx512_core_vnni"}, "int8", "fp32",
                               "with VNNI (ONEDNN_MAX_CPU_ISA=avx512_core_vnni)"),
    "oneDNN at AVX-512 BF16": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "int8", "bf16-autocast",
                               "with VNNI (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16)"),
    "oneDNN at AVX-512 without VNNI": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, "int8", "fp32",
                                       "without VNNI (ONEDNN_MAX_CPU_ISA=AVX512_CORE)"),
    "fbgemm without VNNI": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX512"},
                            "int8", "fp32", "without VNNI (ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI, "
                            "FBGEMM_ENABLE_INSTRUCTIONS=AVX512)"),
    "oneDNN at SSE4.1": ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, "fp32", "fp32",
                         "no bf16 units or int8 kernels (ONEDNN_MAX_CPU_ISA=SSE41)"),
    "caps that hide nothing": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX512_E1"},
                               "bf16", "bf16-autocast", "auto: AMX"),
    "no cap": ({"ONEDNN_MAX_CPU_ISA": "DEFAULT"}, "bf16", "bf16-autocast", "auto: AMX"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CAPPED))
def test_isa_caps_hide_the_units_their_libraries_may_not_use(case, monkeypatch):
    variables, inference, training, why_ends = CAPPED[case]
    for variable in ("SIGLIP_BF16_UNITS", "ONEDNN_MAX_CPU_ISA", "FBGEMM_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(variable, raising=False)
    for probe in (
        "_is_avx512_bf16_supported",
        "_is_amx_tile_supported",
        "_is_avx2_supported",
        "_is_vnni_supported",
    ):
        monkeypatch.setattr(torch.cpu, probe, lambda: True)
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    word, why = auto_precision("cpu")
    assert (word, resolve_precision("auto", "cpu", training=True).name) == (inference, training)
    assert why.endswith(why_ends)
    assert native_bf16("cpu") is (training == "bf16-autocast")


def test_a_dtype_names_the_word_whose_weights_it_is():
    for word in ("fp32", "bf16", "fp16"):
        assert precision_of_dtype(as_precision(word).weights) == word
    with pytest.raises(UsageError, match="float64"):
        precision_of_dtype(torch.float64)
