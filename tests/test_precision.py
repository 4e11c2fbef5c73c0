"""One precision vocabulary: every word means the same weights and arithmetic for training and inference,
decided by one hardware probe (CPU, and CUDA GPUs of compute capability 7.x and 8.x, mocked)."""

from __future__ import annotations

import pytest
import torch

from siglip.errors import UsageError
from siglip.tools.embeddings.inference import InferenceMode
from siglip.tools.embeddings.precision import (
    ONEDNN_CAP_VARIABLES,
    PRECISIONS,
    TRAINING_PRECISIONS,
    as_precision,
    auto_precision,
    cpu_units,
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


CPU_PROBES = {"avx512_bf16": "_is_avx512_bf16_supported", "amx": "_is_amx_tile_supported",
              "avx2": "_is_avx2_supported", "vnni": "_is_vnni_supported"}  # fmt: skip


def mock_cpu(monkeypatch: pytest.MonkeyPatch, flags: set[str]) -> None:
    """A CPU with `flags` (of `CPU_PROBES`, and "avx_vnni"), no `SIGLIP_BF16_UNITS` pin (the suite's: these
    tests probe) and no ISA cap."""
    for variable in ("SIGLIP_BF16_UNITS", *ONEDNN_CAP_VARIABLES):
        monkeypatch.delenv(variable, raising=False)
    for flag, probe in CPU_PROBES.items():
        monkeypatch.setattr(torch.cpu, probe, lambda flag=flag: flag in flags)
    monkeypatch.setattr(
        torch.cpu, "get_capabilities", lambda: {"avx_vnni": "avx_vnni" in flags}, raising=False
    )


@pytest.fixture(params=list(DEVICES))
def device(request, monkeypatch) -> tuple[str, bool]:
    """A device with its capability mocked; yields (device type, whether it has bf16 units)."""
    kind, capability, flags, bf16_units, *_ = DEVICES[request.param]
    mock_cpu(monkeypatch, flags)
    if kind == "cuda":
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
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


# oneDNN's ISA cap on a CPU with every unit (AMX): (variables, auto for inference, auto for training, why's
# ending): the table's row for the CPU the cap leaves, by hand
CAPPED = {
    "at AVX2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "int8", "fp32", "without VNNI (ONEDNN_MAX_CPU_ISA=AVX2)"),
    "at AVX-512 VNNI": ({"ONEDNN_MAX_CPU_ISA": "avx512_core_vnni"}, "int8", "fp32",
                        "with VNNI (ONEDNN_MAX_CPU_ISA=avx512_core_vnni)"),
    "at AVX-512 BF16": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "int8", "bf16-autocast",
                        "with VNNI (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16)"),
    "at AVX-512 without VNNI": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, "int8", "fp32",
                                "without VNNI (ONEDNN_MAX_CPU_ISA=AVX512_CORE)"),
    "at SSE4.1": ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, "fp32", "fp32",
                  "no bf16 units or int8 kernels (ONEDNN_MAX_CPU_ISA=SSE41)"),
    "the older name": ({"DNNL_MAX_CPU_ISA": "AVX2"}, "int8", "fp32", "without VNNI (DNNL_MAX_CPU_ISA=AVX2)"),
    "ideep's name before the older": ({"DNNL_MAX_CPU_ISA": "AVX512_CORE_AMX", "MKLDNN_MAX_CPU_ISA": "AVX2"},
                                      "int8", "fp32", "without VNNI (MKLDNN_MAX_CPU_ISA=AVX2)"),
    "the new name first": ({"ONEDNN_MAX_CPU_ISA": "ALL", "DNNL_MAX_CPU_ISA": "AVX2"},
                           "bf16", "bf16-autocast", "auto: AMX"),
    "an empty value: the next name": ({"ONEDNN_MAX_CPU_ISA": "", "DNNL_MAX_CPU_ISA": "AVX2"},
                                      "int8", "fp32", "without VNNI (DNNL_MAX_CPU_ISA=AVX2)"),
    "a cap that hides nothing": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, "bf16", "bf16-autocast", "auto: AMX"),
    "a name oneDNN ignores (spaces count)": ({"ONEDNN_MAX_CPU_ISA": " AVX2"}, "bf16", "bf16-autocast",
                                             "auto: AMX"),
    "DEFAULT": ({"ONEDNN_MAX_CPU_ISA": "DEFAULT"}, "bf16", "bf16-autocast", "auto: AMX"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CAPPED))
def test_isa_caps_hide_the_units_onednn_may_not_use(case, monkeypatch):
    variables, inference, training, why_ends = CAPPED[case]
    mock_cpu(monkeypatch, {*CPU_PROBES, "avx_vnni"})
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    word, why = auto_precision("cpu")
    assert (word, resolve_precision("auto", "cpu", training=True).name) == (inference, training)
    assert why.endswith(why_ends)
    assert native_bf16("cpu") is (training == "bf16-autocast")


# each of oneDNN's level names (its `dnnl_cpu_isa_t` docs) -> the units it keeps on a CPU with every unit
LEVELS = {
    "SSE41": "", "AVX": "", "AVX2": "avx2", "AVX512_CORE": "avx2", "AVX2_VNNI": "avx2 vnni",
    "AVX2_VNNI_2": "avx2 vnni", "AVX512_CORE_VNNI": "avx2 vnni", "AVX512_CORE_BF16": "avx2 vnni bf16",
    "AVX512_CORE_FP16": "avx2 vnni bf16", "AVX10_1_512": "avx2 vnni bf16", "AVX10_2": "avx2 vnni bf16",
    "AVX10_2_512": "avx2 vnni bf16", "AVX512_CORE_AMX": "avx2 vnni bf16 amx",
    "AVX10_1_512_AMX": "avx2 vnni bf16 amx", "AVX512_CORE_AMX_FP16": "avx2 vnni bf16 amx",
    "AVX10_1_512_AMX_FP16": "avx2 vnni bf16 amx", "AVX10_2_AMX_2": "avx2 vnni bf16 amx",
    "AVX10_2_512_AMX_2": "avx2 vnni bf16 amx",
}  # fmt: skip


@pytest.mark.parametrize("level", list(LEVELS))
def test_each_onednn_level_keeps_its_units(level, monkeypatch):
    mock_cpu(monkeypatch, {*CPU_PROBES, "avx_vnni"})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", level.lower())  # oneDNN matches names in any case
    units = cpu_units()
    assert {unit for unit in ("avx2", "vnni", "bf16", "amx") if getattr(units, unit)} == set(
        LEVELS[level].split()
    )
    assert units.cap == (None if "amx" in LEVELS[level] else f"ONEDNN_MAX_CPU_ISA={level.lower()}")


@pytest.mark.parametrize(
    ("flags", "level", "vnni"),
    [
        ({"avx2", "avx_vnni"}, "AVX2_VNNI", True),  # Alder Lake: AVX-VNNI, no AVX-512
        ({"avx2", "avx_vnni"}, None, True),
        ({"avx2", "vnni"}, "AVX2_VNNI", False),  # Cascade Lake: AVX-512 VNNI only, held to AVX-VNNI's level
        ({"avx2", "vnni"}, "AVX512_CORE_VNNI", True),
        ({"avx2", "avx_vnni"}, "AVX512_CORE_VNNI", False),
    ],
)
def test_the_two_vnnis_count_where_their_level_keeps_them(flags, level, vnni, monkeypatch):
    """AVX-VNNI (256-bit) and AVX-512 VNNI are different instructions, kept by different levels: the int8
    products overflow 16-bit sums wherever neither is usable (`int8.pt2e_int8` then takes 7-bit activations)."""
    mock_cpu(monkeypatch, flags)
    if level:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", level)
    assert cpu_units().vnni is vnni
    assert auto_precision("cpu")[1].split(" VNNI")[0].endswith("with" if vnni else "without")


def test_the_pin_decides_without_naming_a_cap(monkeypatch):
    mock_cpu(monkeypatch, {*CPU_PROBES, "avx_vnni"})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("SIGLIP_BF16_UNITS", "0")
    assert auto_precision("cpu") == ("fp32", "auto: no bf16 units or int8 kernels")


def test_a_dtype_names_the_word_whose_weights_it_is():
    for word in ("fp32", "bf16", "fp16"):
        assert precision_of_dtype(as_precision(word).weights) == word
    with pytest.raises(UsageError, match="float64"):
        precision_of_dtype(torch.float64)
