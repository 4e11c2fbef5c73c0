"""Inference modes (precision, int8, torch.compile), ONNX export, the fast GELU and reduced JPEG decoding."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile

from _material import BUNDLED, assert_freed_memory_kept
from _material import FASHION_CLASSES as LABELS
from siglip import Embedder, SiglipImageProcessor, SiglipImageProcessorPil, SiglipModel, SiglipProcessor
from siglip.core import heap
from siglip.core.staging import FILE_MODE
from siglip.core.two_tower import pil_resize
from siglip.core.two_tower.modeling import (
    ACTIVATIONS,
    SiglipAttention,
    SiglipEncoderLayer,
    SiglipMLP,
    key_padding_mask,
)
from siglip.tools.cli import main
from siglip.tools.embeddings import cache_folder, fused_attention, int8
from siglip.tools.embeddings import embedder as embedder_module
from siglip.tools.embeddings.attention import (
    FUSED_FORMS,
    Bf16Attention,
    FusedAttention,
    FusedFloat32Attention,
    GraphBf16Attention,
    GroupedAttention,
    GroupedBf16Attention,
)
from siglip.tools.embeddings.embedder import decoding_workers
from siglip.tools.embeddings.groups import GroupedEncoderLayer, group_count
from siglip.tools.embeddings.inference import InferenceMode
from siglip.tools.embeddings.int8 import (
    EAGER_ROWS_PER_CALL,
    PACKAGE_ROWS_PER_CALL,
    ProjectedPoolingHead,
    fast_gelu_tanh,
    quantize_linear_layers,
    split_head_projections,
)
from siglip.tools.embeddings.onednn import (
    PACKED_UP_TO_ROWS,
    ROWS_PER_CALL,
    FusedEncoderLayer,
    FusedLinear,
    drop_packed_weights,
    fused_linears_available,
    use_fused_linears,
)
from siglip.tools.embeddings.onnx_export import check_onnx, export_onnx
from siglip.tools.embeddings.precision import PRECISIONS, CpuUnits, int8_attention_dtype

pytest_plugins = ["_fixtures"]
EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples" / "fashion").glob("*.png"))


def _reference_gelu(x: torch.Tensor) -> torch.Tensor:
    """The textbook formula in float64: the oracle for both of our paths."""
    x = x.double()
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


# --- the fast GELU ------------------------------------------------------------------------------------------
def test_fast_gelu_matches_the_formula_and_aten():
    x = torch.cat([torch.randn(100_000) * 3, torch.linspace(-30, 30, 10_001), torch.tensor([0.0, -0.0])])
    with torch.inference_mode():
        fast = fast_gelu_tanh(x)
    expected = _reference_gelu(x)
    assert (fast.double() - expected).abs().max().item() < 2e-6
    assert (fast - F.gelu(x, approximate="tanh")).abs().max().item() < 2e-6
    assert torch.isfinite(fast).all()


def test_fast_gelu_leaves_autograd_to_aten():
    x = torch.randn(1000, requires_grad=True)
    fast_gelu_tanh(x).sum().backward()
    expected = torch.autograd.grad(F.gelu(x, approximate="tanh").sum(), x)[0]
    assert torch.equal(x.grad, expected)
    with torch.no_grad():  # the fast path overwrites a fresh buffer, never its input
        before = x.detach().clone()
        fast_gelu_tanh(x.detach())
        assert torch.equal(x.detach(), before)


# --- inference modes ----------------------------------------------------------------------------------------
def test_modes_are_checked_and_resolved(monkeypatch):
    with pytest.raises(ValueError, match=r"precision must be one of .*'int4'"):
        InferenceMode("int4")
    monkeypatch.setattr("siglip.tools.embeddings.precision.native_bf16", lambda device: False)
    assert InferenceMode().resolve("cpu").precision == "fp32"
    monkeypatch.setattr("siglip.tools.embeddings.precision.native_bf16", lambda device: True)
    assert InferenceMode().resolve("cpu").precision == "bf16"
    assert InferenceMode("int8").resolve("cpu").precision == "int8"
    with pytest.raises(ValueError, match=r"int8.*CPU only.*cuda"):
        InferenceMode("int8").resolve("cuda")
    with pytest.raises(ValueError, match="resolve"):
        InferenceMode().apply(SiglipModel.from_pretrained(BUNDLED))
    assert set(PRECISIONS) == {"auto", "fp32", "bf16", "bf16-autocast", "fp16", "int8", "int8-static"}


def _examples() -> torch.Tensor:
    processor = SiglipImageProcessor.from_pretrained(BUNDLED)
    return processor([str(p) for p in EXAMPLES], return_tensors="pt")["pixel_values"]


@pytest.fixture(scope="module")
def fp32_features() -> tuple[torch.Tensor, torch.Tensor]:
    model = SiglipModel.from_pretrained(BUNDLED).eval()
    with torch.inference_mode():
        return model.get_image_features(_examples()), model.get_text_features(_label_ids(model))


def _label_ids(model: SiglipModel) -> torch.Tensor:
    processor = SiglipProcessor.from_pretrained(BUNDLED)
    return processor(text=[f"a photo of a {label}." for label in LABELS], return_tensors="pt")["input_ids"]


@pytest.mark.parametrize(
    ("precision", "min_cosine"), [("int8", 0.995), ("bf16", 0.999), ("bf16-autocast", 0.999), ("fp16", 0.999)]
)
def test_reduced_precision_stays_close_to_fp32(precision, min_cosine, fp32_features):
    """The issue's bounds: cosine to fp32 >= 0.999 for the reduced floats, >= 0.995 for int8; zero-shot agrees."""
    mode = InferenceMode(precision).resolve("cpu")
    model = mode.apply(SiglipModel.from_pretrained(BUNDLED))
    images = _assert_bounds(model, fp32_features, min_cosine, mode.dtype, mode.autocast("cpu"))
    assert not torch.equal(images, fp32_features[0])  # the mode did change the arithmetic


def _assert_bounds(
    model: SiglipModel,
    fp32_features: tuple[torch.Tensor, torch.Tensor],
    min_cosine: float,
    dtype: torch.dtype = torch.float32,
    context: contextlib.AbstractContextManager | None = None,
) -> torch.Tensor:
    """The issue's bounds on `model`'s features of the example photos and the labels (pixels in `dtype`, run
    in `context`): cosine to fp32 above `min_cosine`, and zero-shot, the same label wins for every photo.
    Returns the image features, in float32."""
    with torch.inference_mode(), context or contextlib.nullcontext():
        images = model.get_image_features(_examples().to(dtype)).float()
        texts = model.get_text_features(_label_ids(model)).float()
    reference_images, reference_texts = fp32_features
    assert F.cosine_similarity(images, reference_images).min().item() > min_cosine
    assert F.cosine_similarity(texts, reference_texts).min().item() > min_cosine
    ours = (F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T).argmax(-1)
    theirs = (F.normalize(reference_images, dim=-1) @ F.normalize(reference_texts, dim=-1).T).argmax(-1)
    assert torch.equal(ours, theirs)
    return images


# --- bf16 on the CPU: the bias, GELU and residual adds inside oneDNN's products ------------------------------
needs_onednn_bf16 = pytest.mark.skipif(
    not fused_linears_available("cpu"), reason="this CPU's oneDNN has no bf16 products (AVX-512 or AMX)"
)


def _bf16_values(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape))).bfloat16()


def _rounded_once(got: torch.Tensor, exact: torch.Tensor) -> bool:
    """Whether bf16 `got` is float64 `exact` rounded once: within half a bf16 ulp, and the float32
    accumulator's rounding."""
    return bool(((got.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all())


@needs_onednn_bf16
@pytest.mark.parametrize("activation", [None, "gelu_pytorch_tanh", "gelu"])
@pytest.mark.parametrize("tokens", [17, 100])  # 51 rows; 300: past PACKED_UP_TO_ROWS
@pytest.mark.parametrize("amx", [True, False])
def test_fused_linear_rounds_the_exact_result_once(monkeypatch, activation, tokens, amx):
    """Against float64 on the same bf16 values: one rounding to bf16 at the end (the unfused path rounds the
    product before the activation, and the bias add once more), with the packed weight or the plain one: the
    packed one for every call on a CPU without AMX, for calls of at most `PACKED_UP_TO_ROWS` rows with it
    (the CPU's units mocked: the kernels are this CPU's either way)."""
    from siglip.tools.embeddings import onednn

    monkeypatch.setattr(onednn, "cpu_units", lambda: _units(amx))
    x, linear = _bf16_values(3, tokens, 64), torch.nn.Linear(64, 96).bfloat16()
    act = ACTIVATIONS[activation] if activation else None
    fused = FusedLinear(linear, act)
    assert fused.weight is linear.weight and fused.bias is linear.bias  # shared, not copied
    assert fused.packed_rows == (PACKED_UP_TO_ROWS if amx else None)
    with torch.inference_mode():
        got = fused(x)
    assert (fused._packed is not None) == (not amx or 3 * tokens <= PACKED_UP_TO_ROWS)
    with torch.inference_mode():
        exact = F.linear(x.double(), linear.weight.double(), linear.bias.double())
        exact = act(exact) if act else exact
        unfused = act(linear(x)) if act else linear(x)
    assert got.dtype == torch.bfloat16
    assert _rounded_once(got, exact)
    assert (got.double() - exact).abs().mean() <= (unfused.double() - exact).abs().mean()


@needs_onednn_bf16
def test_fused_linear_adds_the_residual_without_touching_it():
    x, residual, linear = _bf16_values(2, 9, 32), _bf16_values(2, 9, 48, 1)[..., 0], torch.nn.Linear(32, 48)
    fused = FusedLinear(linear.bfloat16())
    before = residual.clone()
    with torch.inference_mode():
        got = fused.add_to(x, residual)
    exact = residual.double() + F.linear(x.double(), linear.weight.double(), linear.bias.double())
    assert torch.equal(residual, before)
    assert _rounded_once(got, exact)


@needs_onednn_bf16
def test_the_packed_weight_follows_the_weight():
    """The packed copy of a few rows' calls is made again after the weight changes: another parameter, another
    tensor in it (`.data =`), in place (an optimiser step, `load_state_dict`); it is dropped when the layer is
    cast or `drop_packed_weights` is called, and does not travel through `deepcopy` or pickle; weights made
    under inference mode are not packed."""
    import pickle

    x = _bf16_values(2, 5, 32)
    fused = FusedLinear(torch.nn.Linear(32, 48).bfloat16())

    def check(layer: FusedLinear, packed: bool = True) -> None:
        with torch.inference_mode():
            got = layer(x)
        assert (layer._packed is not None) == packed
        assert _rounded_once(got, F.linear(x.double(), layer.weight.double(), layer.bias.double()))

    check(fused)
    fused.weight = torch.nn.Parameter(torch.randn(48, 32).bfloat16())  # version 0, as the first one
    check(fused)
    fused.weight.data = torch.randn(48, 32).bfloat16()  # the same parameter and version, other values
    check(fused)
    with torch.no_grad():
        fused.weight.mul_(-3)  # in place: a new version of the same parameter
    check(fused)
    fused.load_state_dict({"weight": torch.randn(48, 32).bfloat16(), "bias": fused.bias.detach()})
    check(fused)
    fused.float()
    assert fused._packed is None
    fused.bfloat16()
    check(fused)
    for twin in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        assert twin._packed is None
        check(twin)
    fused.weight.data.mul_(2)  # unseen by the version counter: the caller says so
    drop_packed_weights(fused)
    check(fused)
    del fused.__dict__["_packed"]  # a layer pickled by a version that had no packed copies
    check(fused)
    with torch.inference_mode():  # weights without a version counter: never packed
        inference = FusedLinear(torch.nn.Linear(32, 48).bfloat16())
    assert inference.weight.is_inference()
    check(inference, packed=False)


@needs_onednn_bf16
def test_a_large_batch_runs_each_layer_in_groups_of_sequences(monkeypatch):
    """Past `ROWS_PER_CALL` tokens a fused layer runs groups of whole sequences: the same states (bf16 rounding
    aside) and attention maps as one call, with a per-sequence padding mask or one broadcast over the batch."""
    model = InferenceMode("bf16").apply(SiglipModel.from_pretrained(BUNDLED))
    layer = model.text_model.encoder.layers[0]
    assert isinstance(layer, FusedEncoderLayer) and layer.rows_per_call == ROWS_PER_CALL
    x = _bf16_values(5, 16, model.config.text_config.hidden_size)
    mask = key_padding_mask(torch.arange(16) < torch.tensor([16, 12, 9, 16, 3])[:, None], x.dtype)
    calls = []
    monkeypatch.setattr(layer, "_one_call", lambda *args: calls.append(args[0].shape[0]) or
                        FusedEncoderLayer._one_call(layer, *args))  # fmt: skip
    with torch.inference_mode():
        for attention_mask in (None, mask, mask[:1]):
            monkeypatch.setattr(layer, "rows_per_call", 10_000)
            whole, whole_maps = layer(x, attention_mask, output_attentions=True)
            monkeypatch.setattr(layer, "rows_per_call", 40)  # 80 rows: two groups (3 + 2 sequences)
            grouped, maps = layer(x, attention_mask, output_attentions=True)
            assert F.cosine_similarity(grouped.flatten(1).float(), whole.flatten(1).float()).min() > 0.9999
            assert maps.shape == whole_maps.shape and (maps - whole_maps).abs().max() < 0.02
    assert calls == [5, 3, 2] * 3
    square = _bf16_values(16, 16, model.config.text_config.hidden_size)  # as many sequences as tokens
    causal = torch.full((16, 16), torch.finfo(x.dtype).min).triu(1).bfloat16()  # (T, T): broadcast, not split
    with torch.inference_mode():
        monkeypatch.setattr(layer, "rows_per_call", 10_000)
        whole = layer(square, causal)[0]
        monkeypatch.setattr(layer, "rows_per_call", 128)
        grouped = layer(square, causal)[0]
        assert layer(x[:0])[0].shape == (0, *x.shape[1:])  # an empty batch: one (empty) call
    assert F.cosine_similarity(grouped.flatten(1).float(), whole.flatten(1).float()).min() > 0.9999


@needs_onednn_bf16
def test_bf16_mode_fuses_every_linear_and_keeps_the_checkpoint(tmp_path):
    plain = SiglipModel.from_pretrained(BUNDLED).eval().bfloat16()
    model = InferenceMode("bf16").apply(copy.deepcopy(plain))
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    unfused = [m for m in layers if not isinstance(m, FusedLinear)]
    # only the MAP head's out_proj stays (nn.MultiheadAttention computes it through its own weights)
    assert len(unfused) == 1 and isinstance(
        unfused[0], torch.nn.modules.linear.NonDynamicallyQuantizableLinear
    )
    assert all(isinstance(m, FusedEncoderLayer) for m in model.modules() if isinstance(m, SiglipEncoderLayer))
    mlps = [m for m in model.modules() if isinstance(m, SiglipMLP)]
    assert mlps and all(m.fc1.post_op == "gelu" and m.activation(torch.ones(1)).item() == 1 for m in mlps)
    # the same parameters under the same names: the model saves and loads as before
    assert {k: v.dtype for k, v in model.state_dict().items()} == {
        k: v.dtype for k, v in plain.state_dict().items()
    }
    model.save_pretrained(tmp_path)
    reloaded = SiglipModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    expected = plain.state_dict()
    assert all(torch.equal(tensor, expected[key]) for key, tensor in reloaded.state_dict().items())
    pixels, ids = _examples().bfloat16(), _label_ids(plain)
    with torch.inference_mode():
        for ours, theirs in (
            (model.get_image_features(pixels), plain.get_image_features(pixels)),
            (model.get_text_features(ids), plain.get_text_features(ids)),
        ):
            assert not torch.equal(ours, theirs)  # the fused kernels ran
            assert F.cosine_similarity(ours.float(), theirs.float()).min().item() > 0.9999
        maps = model.vision_model(pixels, output_attentions=True).attentions
        reference = plain.vision_model(pixels, output_attentions=True).attentions
    assert [a.shape for a in maps] == [b.shape for b in reference]
    assert all(
        F.cosine_similarity(a.flatten(1).float(), b.flatten(1).float()).min() > 0.999
        for a, b in zip(maps, reference, strict=True)
    )


@needs_onednn_bf16
def test_fused_layers_train_as_the_plain_ones():
    """Where autograd needs a gradient (the fused kernel has none) the layers compute as nn.Linear does."""
    plain = SiglipModel.from_pretrained(BUNDLED).bfloat16().train()
    fused = copy.deepcopy(plain)
    use_fused_linears(fused)
    pixels = _examples().bfloat16()
    for model in (plain, fused):
        model.get_image_features(pixels).float().square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), fused.parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None), name
        assert a.grad is None or torch.equal(a.grad, b.grad), name


@needs_onednn_bf16
def test_fused_towers_keep_masks_naflex_patches_and_fall_back_off_the_fused_kernel(tmp_path):
    """A padded text with its attention mask and a NaFlex image tower (patch mask, sizes, masked pooling head)
    give the plain bf16 model's vectors; moved to float32 the fused model is the plain fp32 one bit for bit;
    with frozen weights and trainable biases (BitFit) it still trains."""
    from _material import save_tiny_naflex
    from siglip import Siglip2Model, Siglip2Processor

    folder = save_tiny_naflex(tmp_path / "naflex")
    plain = Siglip2Model.from_pretrained(folder).eval()
    fused = InferenceMode("bf16").apply(copy.deepcopy(plain))
    assert any(isinstance(m, FusedEncoderLayer) for m in fused.vision_model.modules())
    processor = Siglip2Processor.from_pretrained(folder)
    images = [
        Image.open(path).convert("RGB").resize(size)
        for path, size in zip(EXAMPLES[:3], [(40, 24), (16, 64), (32, 32)], strict=True)
    ]
    inputs = processor(images=images, return_tensors="pt")
    ids = torch.tensor([[5, 6, 7, 8, 1, 1], [9, 10, 1, 1, 1, 1]])
    mask = (ids != 1).long()
    bf16 = copy.deepcopy(plain).bfloat16()
    with torch.inference_mode():
        ours = fused.get_image_features(
            inputs.pixel_values.bfloat16(), inputs.pixel_attention_mask, inputs.spatial_shapes
        )
        theirs = bf16.get_image_features(
            inputs.pixel_values.bfloat16(), inputs.pixel_attention_mask, inputs.spatial_shapes
        )
        assert F.cosine_similarity(ours.float(), theirs.float()).min().item() > 0.9999
        ours = fused.text_model(ids, attention_mask=mask).last_hidden_state
        theirs = bf16.text_model(ids, attention_mask=mask).last_hidden_state
        keep = mask.bool()  # the padded positions' states are not compared
        assert F.cosine_similarity(ours[keep].float(), theirs[keep].float()).min().item() > 0.999
    as_fp32, reference = copy.deepcopy(fused).float(), copy.deepcopy(bf16).float()  # the same rounded weights
    with torch.inference_mode():
        assert torch.equal(as_fp32.get_text_features(ids), reference.get_text_features(ids))
    linear_biases = ("proj.bias", "fc1.bias", "fc2.bias")  # the first layer's input then wants no gradient
    for name, parameter in fused.named_parameters():
        parameter.requires_grad_(name.endswith(linear_biases))
    fused.train().get_text_features(ids).float().sum().backward()
    trained = [p for n, p in fused.text_model.named_parameters() if n.endswith(linear_biases)]
    assert trained and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


def test_bf16_mode_is_plain_where_onednn_has_no_bf16(monkeypatch):
    monkeypatch.setattr("siglip.tools.embeddings.onednn.fused_linears_available", lambda device: False)
    model = InferenceMode("bf16").apply(SiglipModel.from_pretrained(BUNDLED))
    assert not any(isinstance(m, FusedLinear | FusedEncoderLayer) for m in model.modules())
    monkeypatch.undo()
    for precision in ("fp32", "bf16-autocast"):  # and the other words never fuse
        model = InferenceMode(precision).apply(SiglipModel.from_pretrained(BUNDLED))
        assert not any(isinstance(m, FusedLinear | FusedEncoderLayer) for m in model.modules())
    fp32 = SiglipModel.from_pretrained(BUNDLED)
    use_fused_linears(fp32)  # float32 weights: left with aten's kernels, bit for bit transformers' numbers
    assert not any(isinstance(m, FusedLinear | FusedEncoderLayer) for m in fp32.modules())


@pytest.fixture(params=["int8-linears", "torch-dynamic"])
def eager_int8_path(request, monkeypatch):
    """Each of eager int8's two paths: `Int8Linear`s where their kernel runs (skipped elsewhere), and torch's
    dynamically quantised linears, which a machine without it takes (forced here)."""
    if request.param == "torch-dynamic":
        monkeypatch.setattr(int8, "int8_linears_why_not", lambda: "forced by the test")
    elif int8.int8_linears_why_not() is not None:
        pytest.skip(f"no Int8Linear here: {int8.int8_linears_why_not()}")
    return request.param


def test_int8_quantises_every_linear_layer_of_the_towers(eager_int8_path):
    # a deep copy, as one makes to keep the float model: the activation must still be recognised
    engine = torch.backends.quantized.engine
    model = InferenceMode("int8").apply(copy.deepcopy(SiglipModel.from_pretrained(BUNDLED)))
    assert torch.backends.quantized.engine == engine  # packing for oneDNN leaves the global setting alone
    quantised = int8.Int8Linear if eager_int8_path == "int8-linears" else torch.ao.nn.quantized.dynamic.Linear
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear | quantised)]
    plain = [m for m in layers if not isinstance(m, quantised)]
    # only the MAP head's attention's out_proj stays float (a NonDynamicallyQuantizableLinear, on one token)
    assert len(plain) == 1 and isinstance(plain[0], torch.nn.modules.linear.NonDynamicallyQuantizableLinear)
    assert len(layers) > 20
    mlps = [m for m in model.modules() if isinstance(m, SiglipMLP)]
    if eager_int8_path == "int8-linears":  # the GELU inside the first layer's product, the MLP skipping it
        assert all(m.fc1.post_op == "gelu" and m.fc1.algorithm == "tanh" for m in mlps)
        assert all(m.fc2.post_op == "none" and m.activation(torch.ones(1)) == 1 for m in mlps)
        # each attention's queries, keys and values in one layer (the three gone), which comes out in the
        # attention's dtype; the other layers in float32
        attentions = [m for m in model.modules() if isinstance(m, SiglipAttention)]
        assert not any(hasattr(m, name) for m in attentions for name in ("q_proj", "k_proj", "v_proj"))
        projections = {m.qkv_proj for m in attentions}
        assert projections and all(p.out_dtype == int8_attention_dtype() for p in projections)
        others = [m for m in model.modules() if isinstance(m, int8.Int8Linear) and m not in projections]
        assert others and all(m.out_dtype == torch.float32 for m in others)
    else:  # the activation is the fast one: this mode is approximate anyway (fp32 keeps aten's, bit-exact)
        assert all(m.activation is fast_gelu_tanh for m in mlps)
        # the three projections stay (torch's layers quantise the weights per tensor: stacked, they would
        # share one scale)
        attentions = [m for m in model.modules() if isinstance(m, SiglipAttention)]
        assert attentions and not any("qkv_proj" in m._modules for m in attentions)
        assert all(isinstance(m.k_proj, torch.ao.nn.quantized.dynamic.Linear) for m in attentions)
    fp32 = InferenceMode("fp32").apply(SiglipModel.from_pretrained(BUNDLED))
    assert not any(m.activation is fast_gelu_tanh for m in fp32.modules() if isinstance(m, SiglipMLP))


def _units(amx: bool, bf16: bool | None = None) -> CpuUnits:
    return CpuUnits(avx2=True, vnni=True, bf16=amx if bf16 is None else bf16, amx=amx)


def _mock_units(monkeypatch: pytest.MonkeyPatch, units: CpuUnits) -> None:
    """This CPU's units as `units`, for the modules that choose kernels by them (the kernels stay this CPU's;
    `fused_attention` keeps reading the real units: its kernel runs only where they are)."""
    from siglip.tools.embeddings import attention, onednn, precision

    for module in (precision, attention, onednn):
        monkeypatch.setattr(module, "cpu_units", lambda: units)


def _on_this_cpu(kernel: type) -> type:
    """`kernel`, or its fused form where siglip's fused attention kernel runs on this CPU."""
    return FUSED_FORMS.get(kernel, kernel) if fused_attention.why_not() is None else kernel


def test_int8_attention_runs_in_bf16_on_cpus_with_bf16_units(monkeypatch, fp32_features):
    """With AMX, int8's attention products run in bf16 by torch's SDPA kernel (eager, and the towers a compiled
    mode packages); with AVX-512 BF16 and no AMX, in bf16 in groups of sequences when eager, as graph
    operations in a package; without bf16 units, and under `SIGLIP_BF16_UNITS=0`, in float32. The numbers are those of
    attention on bf16-rounded inputs (a sequence with no key left included), and the towers keep the int8
    bound and the zero-shot winners."""
    from siglip.tools.embeddings.compiled import compile_towers

    def attentions(model: torch.nn.Module) -> list[type]:
        return [type(m) for m in model.modules() if isinstance(m, SiglipAttention)]

    for amx, bf16, pin, eager_class, compiled_class in (
        (False, False, None, SiglipAttention, SiglipAttention),
        (True, True, "0", SiglipAttention, SiglipAttention),
        (False, True, "0", SiglipAttention, SiglipAttention),
        (False, True, None, GroupedBf16Attention, GraphBf16Attention),
        (True, True, None, Bf16Attention, Bf16Attention),
    ):
        _mock_units(monkeypatch, _units(amx, bf16))
        if pin is None:
            monkeypatch.delenv("SIGLIP_BF16_UNITS", raising=False)
        else:
            monkeypatch.setenv("SIGLIP_BF16_UNITS", pin)
        eager = InferenceMode("int8").apply(SiglipModel.from_pretrained(BUNDLED))
        compiled = SiglipModel.from_pretrained(BUNDLED)
        # the towers wrapped, not yet compiled: what their package is made of
        compile_towers(compiled, "int8")
        layers = eager.config.text_config.num_hidden_layers + eager.config.vision_config.num_hidden_layers
        assert attentions(eager) == [_on_this_cpu(eager_class)] * layers
        assert attentions(compiled) == [_on_this_cpu(compiled_class)] * layers
    fp32 = InferenceMode("fp32").apply(SiglipModel.from_pretrained(BUNDLED))
    assert not any(isinstance(m, Bf16Attention) for m in fp32.modules())

    kernels = {Bf16Attention, GroupedBf16Attention, GraphBf16Attention}  # each on this CPU's products
    for kernel in sorted(kernels | {_on_this_cpu(k) for k in kernels}, key=lambda k: k.__name__):
        for module in eager.modules():
            if isinstance(module, SiglipAttention):
                module.__class__ = kernel
        _check_bf16_attention(eager.vision_model.encoder.layers[0].self_attn)
        _assert_bounds(eager, fp32_features, 0.995)


def _check_bf16_attention(attention: SiglipAttention, dtype: torch.dtype = torch.float32) -> None:
    """One module's heads against attention computed by hand on bf16-rounded queries, keys and values (and
    scores, for the grouped and graph kernels), with and without a padding mask that leaves one sequence no
    key."""
    x = torch.randn(3, 10, attention.embed_dim, generator=torch.Generator().manual_seed(3)).to(dtype)
    mask = key_padding_mask(torch.arange(10) < torch.tensor([[10], [4], [0]]), dtype)  # the last: no key
    with torch.inference_mode():
        if hasattr(attention, "qkv_proj"):  # eager int8's one layer for the three
            projected = attention.qkv_proj(x).chunk(3, dim=-1)
        else:
            projected = tuple(proj(x) for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
        q, k, v = (
            t.view(3, 10, attention.num_heads, attention.head_dim).transpose(1, 2).bfloat16().float()
            for t in projected
        )
        for attention_mask in (None, mask):
            scores = q @ k.transpose(-1, -2)
            # the fused kernel keeps its scores in float32; the grouped and graph kernels round them
            fused = isinstance(attention, FusedAttention) and attention_mask is None
            if isinstance(attention, GroupedAttention | GraphBf16Attention) and not fused:
                scores = scores.bfloat16().float()
            scores = scores * attention.scale
            if attention_mask is not None:
                scores = scores + attention_mask.float()
            expected = (scores.softmax(-1) @ v).transpose(1, 2).reshape(3, 10, attention.embed_dim)
            ours = attention.attend(x, attention_mask)[0]
            # the projections' dtype: the inputs' (int8's write theirs in the attention's: bf16)
            assert ours.dtype == projected[0].dtype
            torch.testing.assert_close(ours.float(), expected, atol=2e-2, rtol=2e-2)  # bf16's output rounding
            assert torch.equal(ours, ours.bfloat16().to(dtype))  # the kernel's bf16 output


def test_grouped_bf16_attention_equals_one_group(monkeypatch):
    """`grouped_products` in groups of sequences gives each sequence what one group of the whole batch gives,
    with per-sequence and broadcast masks, for int8's kernel (float32 in and out) and eager bf16's; a sequence
    of more scores than a group, or a mask of fewer dims, takes the SDPA kernel of the class below; under
    autograd both run SDPA (which has a backward), and eager bf16's takes it for float32 inputs too (a model
    moved to float32 computes as the plain one)."""
    from siglip.tools.embeddings import attention as kernels

    plain = SiglipModel.from_pretrained(BUNDLED).text_model.encoder.layers[0].self_attn
    for kernel, below, dtype in (
        (GroupedBf16Attention, Bf16Attention, torch.float32),
        (GroupedAttention, SiglipAttention, torch.bfloat16),
    ):
        layer = copy.deepcopy(plain).to(dtype)
        layer.__class__ = kernel
        x = torch.randn(5, 16, layer.embed_dim, generator=torch.Generator().manual_seed(1)).to(dtype)
        per_sequence = key_padding_mask(torch.arange(16) < torch.tensor([16, 12, 9, 16, 3])[:, None], dtype)
        broadcast = per_sequence[1:2]
        scores = layer.num_heads * 16 * 16
        with torch.inference_mode():
            for mask in (None, per_sequence, broadcast):
                monkeypatch.setattr(kernels, "SCORES_PER_GROUP", 5 * scores)
                whole = layer.attend(x, mask)[0]
                assert whole.dtype == dtype
                monkeypatch.setattr(kernels, "SCORES_PER_GROUP", 2 * scores)  # groups of 2, 2 and 1
                torch.testing.assert_close(layer.attend(x, mask)[0], whole, atol=0, rtol=0)
                # a sequence longer than a group alone, or a mask of other than 4 dims: the SDPA kernel
                sdpa = copy.deepcopy(layer)
                sdpa.__class__ = below
                monkeypatch.setattr(kernels, "SCORES_PER_GROUP", scores - 1)
                assert torch.equal(layer.attend(x, mask)[0], sdpa.attend(x, mask)[0])
                monkeypatch.setattr(kernels, "SCORES_PER_GROUP", 5 * scores)
                if mask is not None:
                    flat = mask[0, 0]  # (1, 16): one row for every query of every sequence
                    assert torch.equal(layer.attend(x, flat)[0], sdpa.attend(x, flat)[0])
        leaf = x.clone().requires_grad_()
        layer.attend(leaf, per_sequence)[0].float().sum().backward()  # the grouped kernel writes with out=
        assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    layer.float()
    rounded = copy.deepcopy(plain).bfloat16().float()  # the same weights, rounded to bf16 and back
    x = torch.randn(2, 16, layer.embed_dim, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(layer.attend(x)[0], rounded.attend(x)[0])


def test_graph_attention_equals_grouped_attention(monkeypatch):
    """`GraphBf16Attention` (what a package compiles) computes what the eager grouped kernels compute, bit for
    bit, eagerly: int8's float32 inputs and eager bf16's, with no mask, a per-sequence padding mask (one
    sequence left no key) and a broadcast one; the groups do not change the numbers."""
    from siglip.tools.embeddings import attention as kernels

    plain = SiglipModel.from_pretrained(BUNDLED).text_model.encoder.layers[0].self_attn
    for grouped, dtype in ((GroupedBf16Attention, torch.float32), (GroupedAttention, torch.bfloat16)):
        layer, graph = copy.deepcopy(plain).to(dtype), copy.deepcopy(plain).to(dtype)
        layer.__class__, graph.__class__ = grouped, GraphBf16Attention
        x = torch.randn(5, 16, layer.embed_dim, generator=torch.Generator().manual_seed(6)).to(dtype)
        per_sequence = key_padding_mask(torch.arange(16) < torch.tensor([16, 12, 9, 0, 3])[:, None], dtype)
        monkeypatch.setattr(kernels, "SCORES_PER_GROUP", 2 * layer.num_heads * 16 * 16)  # groups of 2, 2, 1
        with torch.inference_mode():
            for mask in (None, per_sequence, per_sequence[1:2]):
                ours = graph.attend(x, mask)[0]
                assert ours.dtype == dtype and torch.isfinite(ours).all()
                assert torch.equal(ours, layer.attend(x, mask)[0])


@pytest.mark.parametrize("amx", [True, False])
def test_bf16_attention_runs_in_groups_without_amx(monkeypatch, amx, fp32_features):
    """Eager bf16 on AVX-512 BF16 without AMX runs the attention in groups of sequences, and a compiled bf16
    package as graph operations; with AMX (torch's SDPA kernel on the tiles) and in fp32 the attention is
    left as it is. The grouped bf16 towers keep the bf16
    bound (cosine >= 0.999 to fp32) and the zero-shot winners."""
    from siglip.tools.embeddings import attention

    # the attention's choice only: the fused linears keep this CPU's (oneDNN's bf16 products need AVX-512)
    monkeypatch.setattr(attention, "cpu_units", lambda: _units(amx, bf16=True))
    model = InferenceMode("bf16").apply(SiglipModel.from_pretrained(BUNDLED))
    kinds = {type(m) for m in model.modules() if isinstance(m, SiglipAttention)}
    assert kinds == {SiglipAttention if amx else _on_this_cpu(GroupedAttention)}
    from siglip.tools.embeddings.compiled import compile_towers

    packaged = SiglipModel.from_pretrained(BUNDLED).bfloat16()
    compile_towers(packaged, "bf16")  # the towers wrapped, not yet compiled: what their package is made of
    kinds = {type(m) for m in packaged.modules() if isinstance(m, SiglipAttention)}
    assert kinds == {SiglipAttention if amx else _on_this_cpu(GraphBf16Attention)}
    fp16 = SiglipModel.from_pretrained(BUNDLED).half()
    compile_towers(fp16, "fp16")  # fp16 packages keep torch's SDPA kernel
    assert {type(m) for m in fp16.modules() if isinstance(m, SiglipAttention)} == {SiglipAttention}
    fp32 = InferenceMode("fp32").apply(SiglipModel.from_pretrained(BUNDLED))
    assert {type(m) for m in fp32.modules() if isinstance(m, SiglipAttention)} == {SiglipAttention}
    if amx:
        return
    _check_bf16_attention(model.vision_model.encoder.layers[0].self_attn, torch.bfloat16)
    _assert_bounds(model, fp32_features, 0.999, torch.bfloat16)


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_a_naflex_vision_tower_keeps_an_eager_kernel_beside_a_packaged_text_tower(
    monkeypatch, tmp_path, precision
):
    """A NaFlex vision tower is not packaged: without AMX, in int8 its attention takes the eager grouped kernel,
    in bf16 torch's SDPA (under torch.compile, for its long sequences), while the packaged text tower takes
    the graph kernel."""
    from _material import save_tiny_naflex
    from siglip import Siglip2Model
    from siglip.tools.embeddings.compiled import CompiledTower, compile_towers

    _mock_units(monkeypatch, _units(amx=False, bf16=True))
    monkeypatch.delenv("SIGLIP_BF16_UNITS", raising=False)
    model = Siglip2Model.from_pretrained(save_tiny_naflex(tmp_path / "naflex")).eval()
    compile_towers(model if precision == "int8" else model.bfloat16(), precision)
    assert isinstance(model.text_model, CompiledTower) and not isinstance(model.vision_model, CompiledTower)
    text = {type(m) for m in model.text_model.modules() if isinstance(m, SiglipAttention)}
    vision = {type(m) for m in model.vision_model.modules() if isinstance(m, SiglipAttention)}
    assert text == {_on_this_cpu(GraphBf16Attention)}
    assert vision == {_on_this_cpu(GroupedBf16Attention) if precision == "int8" else SiglipAttention}


def test_int8_quantises_the_map_heads_input_projections(fp32_features):
    """int8 splits the MAP head's packed input projection into two linear layers of the same weights (the
    float head then gives nn.MultiheadAttention's numbers, with and without a padding mask), which eager int8
    quantises and a compiled mode packages; the towers keep the int8 bound."""
    from siglip.tools.embeddings.compiled import compile_towers

    head = SiglipModel.from_pretrained(BUNDLED).vision_model.head
    split = copy.deepcopy(head)
    split_head_projections(split)
    assert type(split) is ProjectedPoolingHead
    packed = torch.cat([split.q_proj.weight, split.kv_proj.weight])
    assert torch.equal(packed, head.attention.in_proj_weight)
    x = torch.randn(3, 10, head.probe.shape[-1], generator=torch.Generator().manual_seed(5))
    mask = key_padding_mask(torch.arange(10) < torch.tensor([[10], [7], [4]]), x.dtype)
    with torch.inference_mode():
        for key_mask in (None, mask):
            torch.testing.assert_close(split(x, key_mask), head(x, key_mask), atol=1e-5, rtol=1e-5)
        # the padded keys count for nothing: the third item pooled from its first 4 tokens alone
        torch.testing.assert_close(split(x, mask)[2], split(x[2:, :4])[0], atol=1e-5, rtol=1e-5)

    eager = InferenceMode("int8").apply(SiglipModel.from_pretrained(BUNDLED))
    quantised = (
        int8.Int8Linear if int8.int8_linears_why_not() is None else torch.ao.nn.quantized.dynamic.Linear
    )
    assert isinstance(eager.vision_model.head, ProjectedPoolingHead)
    assert isinstance(eager.vision_model.head.q_proj, quantised)
    assert isinstance(eager.vision_model.head.kv_proj, quantised)
    compiled = SiglipModel.from_pretrained(BUNDLED)
    compile_towers(compiled, "int8")
    assert type(compiled.vision_model.tower.head) is ProjectedPoolingHead
    with torch.inference_mode():
        images = eager.get_image_features(_examples())
    assert F.cosine_similarity(images, fp32_features[0]).min().item() > 0.995


def test_groups_are_as_few_as_fit():
    assert group_count(8, 196, 1024) == 2  # 1,568 tokens: two groups of 4 images
    assert group_count(32, 196, 1024) == 7  # 6,272 tokens: 7 groups (5, 5, 5, 5, 4, 4, 4 images)
    assert group_count(32, 64, 1024) == 2 and group_count(16, 64, 1024) == 1  # 1,024 fit one call
    assert group_count(32, 196, 1600) == 4 and group_count(8, 196, 1600) == 1
    assert group_count(1, 5000, 1024) == 1 and group_count(3, 5000, 1024) == 3  # one sequence is longer
    assert group_count(0, 196, 1024) == 1  # an empty batch: one (empty) call


def test_int8_linears_rows_per_call_follow_amx(monkeypatch):
    """`Int8Linear` layers run calls of up to 4,096 tokens without AMX (measured on a Zen 4 and a Zen 5),
    1,024 with it (the eager int8 value measured there)."""
    for amx, rows in ((True, EAGER_ROWS_PER_CALL), (False, int8.INT8_LINEAR_ROWS_PER_CALL)):
        monkeypatch.setattr(int8, "cpu_units", lambda amx=amx: _units(amx))
        assert int8.int8_linear_rows_per_call() == rows


def test_eager_int8_runs_a_large_batch_in_groups_of_sequences(monkeypatch, fp32_features, eager_int8_path):
    """Past its rows per call (`EAGER_ROWS_PER_CALL` tokens; with `Int8Linear`s 4,096 on a CPU without AMX)
    each int8 encoder layer runs groups of whole sequences, each with the numbers of its own call; the towers
    keep the int8 bound and the zero-shot winners."""
    model = InferenceMode("int8").apply(SiglipModel.from_pretrained(BUNDLED))
    layers = [m for m in model.modules() if isinstance(m, SiglipEncoderLayer)]
    kind = FusedEncoderLayer if eager_int8_path == "int8-linears" else GroupedEncoderLayer
    assert layers and all(type(m) is kind for m in layers)
    rows = int8.int8_linear_rows_per_call() if eager_int8_path == "int8-linears" else EAGER_ROWS_PER_CALL
    assert all(m.rows_per_call == rows for m in layers)
    for each in layers:  # what follows counts groups of 1,024 tokens
        monkeypatch.setattr(each, "rows_per_call", 1024)
    text_layer = model.text_model.encoder.layers[0]
    calls = []
    monkeypatch.setattr(text_layer, "_one_call", lambda *args: calls.append(args[0].shape[0]) or
                        kind._one_call(text_layer, *args))  # fmt: skip
    ids = _label_ids(model).repeat(4, 1)[:32]  # 32 texts of 32 tokens: 1,024 rows, one call
    other = torch.randint(
        model.config.text_config.vocab_size, ids.shape, generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        alone = [model.text_model(each).last_hidden_state for each in (ids, other)]
        both = model.text_model(torch.cat([ids, other])).last_hidden_state  # 2,048 rows: two groups of 32
    assert calls == [32, 32, 32, 32]  # each alone, then both in two groups
    # the encoder's states are each group's own (the head after it, int8 too, takes the whole batch)
    assert torch.equal(both, torch.cat(alone))

    # a layer's groups are its own calls on each group (here 10 images in groups of at most 3: 3, 3, 2, 2),
    # masks split with them
    layer, pixels = model.vision_model.encoder.layers[0], _examples()
    tokens = (pixels.shape[-1] // model.config.vision_config.patch_size) ** 2
    x = torch.randn(len(pixels), tokens, model.config.vision_config.hidden_size)
    mask = key_padding_mask(torch.arange(tokens) < torch.arange(len(pixels))[:, None] + 5, x.dtype)
    with torch.inference_mode():
        for attention_mask in (None, mask):
            whole = layer(x, attention_mask)[0]
            monkeypatch.setattr(layer, "rows_per_call", 3 * tokens)
            grouped = layer(x, attention_mask)[0]
            masks = [None] * 4 if attention_mask is None else attention_mask.split([3, 3, 2, 2])
            alone = [layer(part, m)[0] for part, m in zip(x.split([3, 3, 2, 2]), masks, strict=True)]
            monkeypatch.setattr(layer, "rows_per_call", 1024)
            assert torch.equal(grouped, torch.cat(alone)) and not torch.equal(grouped, whole)
            assert F.cosine_similarity(grouped.flatten(1), whole.flatten(1)).min() > 0.999

        for each in layers:  # the whole image tower in groups of 3 images
            monkeypatch.setattr(each, "rows_per_call", 3 * tokens)
        images = model.get_image_features(pixels)
    reference_images, reference_texts = fp32_features
    assert F.cosine_similarity(images, reference_images).min().item() > 0.995
    texts = F.normalize(reference_texts, dim=-1)
    ours = (F.normalize(images, dim=-1) @ texts.T).argmax(-1)
    assert torch.equal(ours, (F.normalize(reference_images, dim=-1) @ texts.T).argmax(-1))


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_an_int8_package_runs_a_large_batch_in_groups_of_items(precision):
    """An int8 package is called on groups of items of at most `PACKAGE_ROWS_PER_CALL` tokens, its outputs put
    back in order; other packages take the batch whole (a stand-in for the compiled model: what is timed
    is the package, checked by the compiled-int8 test below)."""
    from siglip.tools.embeddings.compiled import CompiledTower, Package

    model = SiglipModel.from_pretrained(BUNDLED).eval()
    calls = []

    def package(x: torch.Tensor) -> list[torch.Tensor]:  # a state per token (its position) and a pooled sum
        calls.append(len(x))
        flat = x.flatten(1).float()
        return [flat[:, :, None] * 2, flat.sum(1, keepdim=True)]

    text_length = model.config.text_config.max_position_embeddings
    texts = CompiledTower(model.text_model, precision)
    texts._compiled, texts.package = package, Package(Path("text.pt2"), (text_length,), torch.int64)
    images = CompiledTower(model.vision_model, precision)
    images._compiled, images.package = package, Package(Path("image.pt2"), (3, 28, 28), torch.float32)
    assert text_length == 32 and model.config.vision_config.patch_size == 4  # 49 patches an image
    ids = torch.randint(100, (70, text_length), generator=torch.Generator().manual_seed(0))
    pixels = torch.rand(70, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    # 70 texts of 32 tokens (2,240) in two groups, 70 images of 49 (3,430) in three
    for tower, x, wanted in ((texts, ids, [35, 35]), (images, pixels, [24, 23, 23])):
        calls.clear()
        out = tower(x)
        expected = package(x)
        assert torch.equal(out.last_hidden_state, expected[0]) and torch.equal(out.pooler_output, expected[1])
        assert calls[:-1] == (wanted if precision == "int8" else [70])  # the last call: `expected`'s own


def test_compiled_fp32_is_a_package_of_onednn_products_within_float_rounding(
    fp32_features, tmp_path, monkeypatch
):
    """fp32 + compile on the CPU: each tower a package with its weights packed for oneDNN (transformers' fp32
    products go to MKL), its features within float32 rounding of the eager ones at every batch size. The
    package is used only when asked: `compile="cached"` (a job too small to pay a compile, a server's
    default) keeps the eager towers, transformers' bit for bit, with the package in the cache."""
    from torch._dynamo.utils import counters
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    from siglip.tools.embeddings.compiled import CACHED, CompiledTower

    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(tmp_path))
    # the cache kept within 0 bytes: a package of an earlier version goes when one is compiled, the packages
    # this process compiled and loaded stay (`prune_cache`)
    monkeypatch.setenv("SIGLIP_COMPILED_CACHE_GB", "0")
    earlier = tmp_path / f"fp32-SiglipVisionTransformer-{'0' * 32}.pt2"
    earlier.write_bytes(b"an earlier version's package")
    counters.clear()
    model = InferenceMode("fp32", compile=True).apply(SiglipModel.from_pretrained(BUNDLED))
    assert isinstance(model.vision_model, CompiledTower) and model.vision_model.precision == "fp32"
    pixels, ids = _examples(), _label_ids(model)
    with torch.inference_mode():
        for batch in (len(pixels), 3):  # a second batch size must not need another compile to be right
            got = model.get_image_features(pixels[:batch])
            torch.testing.assert_close(got, fp32_features[0][:batch], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.get_text_features(ids), fp32_features[1], rtol=1e-4, atol=1e-5)
    if torch.backends.mkldnn.is_available():  # inductor packs the weights where oneDNN or MKL runs them
        assert counters["inductor"]["mkldnn_linear_weight_pack_matcher_count"] > 0
    assert not earlier.exists()
    (package,) = tmp_path.glob("fp32-SiglipVisionTransformer-*.pt2")
    # the compiled library is in the package, not also left in inductor's cache (which torch never prunes)
    with zipfile.ZipFile(package) as archive:
        (library,) = [Path(n).name for n in archive.namelist() if n.endswith(".so")]
    assert not list(Path(cache_dir()).glob(f"*/{library}"))
    assert sorted(tmp_path.glob("*.pt2")) == sorted([package, model.text_model.package.path])
    # loading a package marks it used, for the least-recently-used order
    os.utime(package, (1, 1))
    again = InferenceMode("fp32", compile=True).apply(SiglipModel.from_pretrained(BUNDLED))
    with torch.inference_mode():
        torch.testing.assert_close(again.get_image_features(pixels), fp32_features[0], rtol=1e-4, atol=1e-5)
    assert again.vision_model.package.path == package and package.stat().st_mtime > time.time() - 600
    # a call with more than the main input (SigLIP 2's Gemma tokenizer gives an attention mask) runs the
    # eager float32 tower: transformers' numbers, as the eager mode's
    eager = SiglipModel.from_pretrained(BUNDLED).eval()
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        masked = model.text_model(ids, attention_mask=mask).pooler_output
        assert torch.equal(masked, eager.text_model(ids, attention_mask=mask).pooler_output)
        # ... and without a mask (interpolated positions): torch's SDPA, not the fused kernel the package runs
        moved = model.vision_model(pixels, interpolate_pos_encoding=True).pooler_output
        assert torch.equal(moved, eager.vision_model(pixels, interpolate_pos_encoding=True).pooler_output)
    kinds = {type(m) for m in model.vision_model.tower.modules() if isinstance(m, SiglipAttention)}
    assert kinds == {FusedFloat32Attention if fused_attention.why_not() is None else SiglipAttention}
    if fused_attention.why_not() is None:  # the package calls the kernel's C shim (traced, not SDPA)
        (extracted,) = tmp_path.glob("fp32-SiglipVisionTransformer-*.so")
        assert fused_attention.SHIM.encode() in extracted.read_bytes()
    cached = InferenceMode("fp32", compile=CACHED).apply(SiglipModel.from_pretrained(BUNDLED))
    assert not isinstance(cached.vision_model, CompiledTower)
    with torch.inference_mode():
        assert torch.equal(cached.get_image_features(pixels), fp32_features[0])


def test_compiled_bf16_packs_its_frozen_weights_and_keeps_the_bf16_bound(
    fp32_features, tmp_path, monkeypatch
):
    """bf16 + compile on the CPU: each tower a package compiled with freezing, whose linear weights inductor
    packs for oneDNN (the counter stayed at 0 with `torch.compile(options={"freezing": True})`, which did not
    freeze), within the bf16 bound of fp32 at every batch size."""
    from torch._dynamo.utils import counters

    from siglip.tools.embeddings.compiled import CompiledTower

    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(tmp_path))
    model = InferenceMode("bf16", compile=True).apply(SiglipModel.from_pretrained(BUNDLED))
    assert isinstance(model.vision_model, CompiledTower) and model.vision_model.precision == "bf16"
    pixels = _examples().bfloat16()
    counters.clear()
    with torch.inference_mode():  # the image tower only: one compile is the slow part of this test
        images = model.get_image_features(pixels).float()
        some = model.get_image_features(pixels[:3]).float()
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.vision_model.tower.modules())
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # inductor packs bf16 weights where oneDNN runs them
        assert counters["inductor"]["mkldnn_linear_weight_pack_matcher_count"] >= linears - 1
    assert torch._inductor.config.freezing is False  # asked for per compile, the global setting untouched
    assert F.cosine_similarity(images, fp32_features[0]).min().item() > 0.999
    torch.testing.assert_close(some, images[:3], rtol=0, atol=1e-2)
    (package,) = tmp_path.glob("*.pt2")
    assert package.name.startswith("bf16-SiglipVisionTransformer-")
    _runs_like_torchs_loader_without_the_gil(model.vision_model, package, pixels)
    # a second package in the process runs its own library: the dynamic loader knows a library by its file, so
    # the first library's file must stay (`PackageRunner` keeps each beside its package)
    ids = _label_ids(model)
    with torch.inference_mode():
        texts = model.get_text_features(ids).float()
    (text_package,) = tmp_path.glob("bf16-SiglipTextTransformer-*.pt2")
    from torch._inductor import aoti_load_package

    with torch.inference_mode():
        torchs = aoti_load_package(str(text_package))(ids)
    for ours, theirs in zip(model.text_model._compiled(ids), torchs, strict=True):
        assert torch.equal(ours, theirs)
    assert F.cosine_similarity(texts, fp32_features[1]).min().item() > 0.999
    assert {p.name.split("-")[1] for p in tmp_path.glob("*.so")} == {
        "SiglipVisionTransformer",
        "SiglipTextTransformer",
    }
    with torch.inference_mode():
        assert torch.equal(model.get_image_features(pixels).float(), images)
    # compiled: the fused graph's rounding differs from eager bf16's
    eager = InferenceMode("bf16").apply(SiglipModel.from_pretrained(BUNDLED))
    with torch.inference_mode():
        assert not torch.equal(images, eager.get_image_features(pixels).float())


def _runs_like_torchs_loader_without_the_gil(tower, package, x):
    """`tower`'s package runs through `PackageRunner`: the outputs of torch's own loader, bit for bit, while
    another Python thread keeps running (torch's loader holds the GIL for the whole call)."""
    import threading
    import time

    from torch._inductor import aoti_load_package

    from siglip.tools.embeddings.compiled import PackageRunner

    assert isinstance(tower._compiled, PackageRunner)
    with torch.inference_mode():
        for ours, torchs in zip(tower._compiled(x), aoti_load_package(str(package))(x), strict=True):
            assert torch.equal(ours, torchs)
        big = x.repeat(64, 1, 1, 1)  # one call long enough to see whether the other thread stood still
        progress, running = [0], threading.Event()

        def count() -> None:
            while running.is_set():
                progress[0] += 1

        running.set()
        counter = threading.Thread(target=count)
        counter.start()
        time.sleep(0.05)
        start, before = time.perf_counter(), progress[0]
        tower._compiled(big)
        elapsed, during = time.perf_counter() - start, progress[0] - before
        time.sleep(elapsed)
        alone = progress[0] - before - during
        running.clear()
        counter.join()
    # Released, the counter kept 93-97% of its pace on an idle machine and 46% in a loaded CI run (it shares
    # the cores with the call's threads and the other test worker); held (torch's loader), 3.5%: the first
    # switch interval only.
    assert during > 0.2 * alone, (during, alone)


def test_embedder_runs_in_the_mode_it_was_given(fp32_features):
    fp32 = Embedder.from_pretrained(BUNDLED, device="cpu", precision="fp32")
    int8 = Embedder.from_pretrained(BUNDLED, device="cpu", precision="int8")
    assert fp32.mode == InferenceMode("fp32") and int8.mode.precision == "int8"
    ours, reference = (
        int8.embed_images([str(p) for p in EXAMPLES]),
        fp32.embed_images([str(p) for p in EXAMPLES]),
    )
    assert (ours * reference).sum(-1).min() > 0.99
    assert np.allclose(np.linalg.norm(ours, axis=-1), 1, atol=1e-5)
    expected = F.normalize(fp32_features[0], dim=-1).numpy()
    np.testing.assert_allclose(reference, expected, atol=1e-5)


# --- ONNX ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[SiglipModel, dict[str, Path]]:
    model = SiglipModel.from_pretrained(BUNDLED)
    return model, export_onnx(model, tmp_path_factory.mktemp("onnx"))


def test_onnx_towers_match_pytorch(exported):
    import onnx

    model, paths = exported
    assert {p.name for p in paths.values()} == {"vision_model.onnx", "text_model.onnx"}
    for path in paths.values():
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
        assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis
    check = check_onnx(model, paths, batch=5)  # the export used batch 2
    assert max(check.max_abs_diff.values()) < 1e-4
    assert min(check.min_cosine.values()) > 0.99999


def test_onnx_export_refuses_old_opsets_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    model = SiglipModel.from_pretrained(BUNDLED)
    with pytest.raises(ValueError, match=r"opset must be at least 17.*16"):
        export_onnx(model, tmp_path, opset=16)

    real_export, calls = torch.onnx.export, []

    def fail_on_the_text_tower(*args, **kwargs):  # the vision tower is written first, then this fails
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("exporter crashed")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", fail_on_the_text_tower)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("kept")
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_onnx(model, tmp_path / "out")
    assert len(calls) == 2
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]  # no vision_model.onnx alone


def test_export_command(tmp_path, capsys):
    assert main(["export", "--model", BUNDLED, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vision_model.onnx" in out and "text: onnxruntime vs PyTorch" in out
    names = {p.name for p in tmp_path.iterdir()}
    assert {"vision_model.onnx", "text_model.onnx", "spiece.model", "preprocessor_config.json"} <= names
    # the processor files saved beside the ONNX files reproduce the checkpoint's preprocessing
    ours = SiglipProcessor.from_pretrained(tmp_path)(
        text=["a bag"], images=[str(EXAMPLES[0])], return_tensors="pt"
    )
    theirs = SiglipProcessor.from_pretrained(BUNDLED)(
        text=["a bag"], images=[str(EXAMPLES[0])], return_tensors="pt"
    )
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])


def test_embed_command_takes_the_inference_options(photos, tmp_path, capsys):
    directory, files = photos
    out = tmp_path / "vectors.npy"
    args = ["embed", str(directory), "--model", BUNDLED, "--out", str(out), "--no-progress"]
    assert main([*args, "--precision", "int8", "--reduced-decode"]) == 0
    fast = np.load(out)
    out.unlink()
    assert json.loads(Path(f"{out}.json").read_text())["precision"] == "int8"
    assert "\nprecision int8\n" in capsys.readouterr().out  # asked for: no reason given
    assert main(args) == 0
    # auto says what it chose and why (the suite pins SIGLIP_BF16_UNITS=0: fp32 on any machine)
    assert "\nprecision fp32 (auto: no bf16 units or int8 kernels)\n" in capsys.readouterr().out
    exact = np.load(out)
    assert fast.shape == exact.shape and len(fast) == len(files)
    assert (fast * exact).sum(-1).min() > 0.98


# --- reduced JPEG decoding ----------------------------------------------------------------------------------
def _jpeg(width: int, height: int) -> bytes:
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((width, height)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_reduced_decode_scales_large_jpegs_only(monkeypatch):
    # 224 x 224; the PIL backend without its compiled resize has Pillow decode every file (whole decodes of
    # JPEGs otherwise go to libjpeg-turbo directly, tests/test_jpeg.py; reduced ones always to Pillow, as here)
    monkeypatch.setattr(pil_resize, "kernels", lambda wait=False: None)
    processor = SiglipImageProcessorPil()
    large, small = _jpeg(640, 480), _jpeg(400, 300)
    decoded = []
    real_load = ImageFile.ImageFile.load

    def spy(image):
        decoded.append(image.size)  # the size the decoder was set up for (after draft)
        return real_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    full = processor(large, return_tensors="np")["pixel_values"]
    reduced = processor(large, return_tensors="np", reduced_decode=True)["pixel_values"]
    assert decoded[0] == (640, 480) and (320, 240) in decoded[1:]
    difference = np.abs(full - reduced)
    assert 0 < difference.mean() < 0.02  # values span [-1, 1]
    # below twice the target size there is nothing to reduce: identical to a full decode
    assert np.array_equal(
        processor(small, return_tensors="np")["pixel_values"],
        processor(small, return_tensors="np", reduced_decode=True)["pixel_values"],
    )


def test_reduced_decode_keeps_orientation_and_non_square_sizes(tmp_path):
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((800, 600))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    path = tmp_path / "phone.jpg"
    photo.save(path, "JPEG", quality=92, exif=exif)
    for size in ({"height": 224, "width": 224}, {"height": 96, "width": 192}):
        processor = SiglipImageProcessor(size=size)
        full = processor(str(path), return_tensors="np")["pixel_values"]
        reduced = processor(str(path), return_tensors="np", reduced_decode=True)["pixel_values"]
        assert reduced.shape == full.shape == (1, 3, size["height"], size["width"])
        assert 0 < np.abs(full - reduced).mean() < 0.02  # upright both times: a turned image differs by ~0.3


def test_embedder_decodes_reduced_when_asked(photos):
    _, files = photos
    jpegs = [str(f) for f in files if f.suffix == ".jpg"]
    exact = Embedder.from_pretrained(BUNDLED, device="cpu", precision="fp32")
    reduced = Embedder.from_pretrained(BUNDLED, device="cpu", precision="fp32", reduced_decode=True)
    assert (
        reduced.processor.image_processor.reduced_decode
        and not exact.processor.image_processor.reduced_decode
    )
    a, b = exact.embed_images(jpegs), reduced.embed_images(jpegs)
    assert not np.array_equal(a, b)
    assert (a * b).sum(-1).min() > 0.99


def test_reduced_decode_leaves_other_formats_alone(tmp_path):
    from skimage import data

    path = tmp_path / "large.png"
    Image.fromarray(data.astronaut()).save(path)
    processor = SiglipImageProcessor(reduced_decode=True)
    assert np.array_equal(
        processor(str(path), return_tensors="np")["pixel_values"],
        processor(str(path), return_tensors="np", reduced_decode=False)["pixel_values"],
    )
    assert "reduced_decode" not in processor.to_dict()  # a runtime choice, not a checkpoint setting


def test_int8_layers_equal_torchs_quantize_dynamic():
    # the oracle: torch's own quantize_dynamic with its default qconfig (weights per tensor), packed for the
    # same library; ours packs each weight once instead of twice
    from torch.ao.quantization import quantize_dynamic

    model = SiglipModel.from_pretrained(BUNDLED).eval()
    ours = quantize_linear_layers(copy.deepcopy(model))
    engine = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = (
            "onednn" if "onednn" in torch.backends.quantized.supported_engines else engine
        )
        theirs = quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    finally:
        torch.backends.quantized.engine = engine
    assert [type(m) for m in ours.modules()] == [type(m) for m in theirs.modules()]
    for mine, reference in zip(ours.modules(), theirs.modules(), strict=True):
        if isinstance(mine, torch.ao.nn.quantized.dynamic.Linear):
            assert (mine.in_features, mine.out_features) == (reference.in_features, reference.out_features)
            (w, b), (rw, rb) = mine._weight_bias(), reference._weight_bias()
            assert torch.equal(w.int_repr(), rw.int_repr()) and w.q_scale() == rw.q_scale()
            assert torch.equal(b, rb)
    pixels = _examples()
    with torch.inference_mode():
        assert torch.equal(ours.get_image_features(pixels), theirs.get_image_features(pixels))
        ids = _label_ids(model)
        assert torch.equal(ours.get_text_features(ids), theirs.get_text_features(ids))


def test_compiled_int8_keeps_the_int8_bounds_at_every_batch_size(
    fp32_features, tmp_path, monkeypatch, caplog, capsys
):
    """torchao's PT2E int8, compiled by AOTInductor (`int8` + compile): the issue's int8 bound (cosine >= 0.995
    to fp32) and the same zero-shot winners, on the image tower (one compile: the slow part of this test);
    then the package it left in the cache serves the next model of the same weights without compiling."""
    pytest.importorskip("torchao")
    from siglip.tools.embeddings import compiled
    from siglip.tools.embeddings.background_compile import BackgroundCompile
    from siglip.tools.embeddings.compiled import CACHED, CompiledTower

    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(tmp_path / "cache"))
    # the attention in bf16, as on a CPU with AMX, and the MAP head's projections split: traced and quantised
    monkeypatch.delenv("SIGLIP_BF16_UNITS", raising=False)
    _mock_units(monkeypatch, _units(True))
    model = InferenceMode("int8", compile=True).apply(SiglipModel.from_pretrained(BUNDLED))
    assert isinstance(model.vision_model, CompiledTower) and isinstance(model.text_model, CompiledTower)
    assert isinstance(model.vision_model.tower.encoder.layers[0].self_attn, Bf16Attention)
    assert isinstance(model.vision_model.tower.head, ProjectedPoolingHead)
    pixels = _examples()
    with torch.inference_mode():  # as the embedders call it
        images = model.get_image_features(pixels)
        again = model.get_image_features(pixels[:3])  # another batch size: no stale graph
        one = model.get_image_features(pixels[:1])
        # the package reads its input unchecked: a transposed view is made contiguous first, other shapes,
        # dtypes and empty batches are refused
        flipped = model.get_image_features(pixels.transpose(2, 3).contiguous().transpose(2, 3))
        # past `PACKAGE_ROWS_PER_CALL` tokens the package runs groups of whole images (here 10 in groups of
        # at most 3: 3, 3, 2, 2), each with the numbers of its own call
        tokens = (pixels.shape[-1] // model.config.vision_config.patch_size) ** 2
        monkeypatch.setattr(compiled, "PACKAGE_ROWS_PER_CALL", 3 * tokens)
        grouped = model.get_image_features(pixels)
        alone = torch.cat([model.get_image_features(part) for part in pixels.split([3, 3, 2, 2])])
        monkeypatch.setattr(compiled, "PACKAGE_ROWS_PER_CALL", PACKAGE_ROWS_PER_CALL)
        with pytest.raises(
            ValueError, match=r"compiled for torch.float32 inputs of shape \(batch, 3, 28, 28\)"
        ):
            model.get_image_features(pixels[:, :, :14])
        with pytest.raises(ValueError, match=r"got torch.float64"):
            model.vision_model(pixels.double())
        with pytest.raises(ValueError, match="empty batch"):
            model.get_image_features(pixels[:0])
        with pytest.raises(ValueError, match="pixels or token ids only"):
            model.get_image_features(pixels, output_attentions=True)
    reference_images, reference_texts = fp32_features
    assert F.cosine_similarity(images, reference_images).min().item() > 0.995
    assert F.cosine_similarity(again, reference_images[:3]).min().item() > 0.995
    assert F.cosine_similarity(one, reference_images[:1]).min().item() > 0.995
    assert torch.equal(flipped, images)
    assert torch.equal(grouped, alone) and not torch.equal(grouped, images)
    assert F.cosine_similarity(grouped, reference_images).min().item() > 0.995
    assert not torch.equal(images, reference_images)
    texts = F.normalize(reference_texts, dim=-1)
    ours = (F.normalize(images, dim=-1) @ texts.T).argmax(-1)
    assert torch.equal(ours, (F.normalize(reference_images, dim=-1) @ texts.T).argmax(-1))
    assert torch._inductor.config.freezing is False  # asked for per compile, the global setting untouched

    # one package, named by the weights: another model of the same weights loads it and compiles nothing
    (package,) = (tmp_path / "cache").glob("*.pt2")
    assert package.name.startswith("int8-SiglipVisionTransformer-") and package.suffix == ".pt2"
    # readable as a plain file of this process is (its umask), not only by its owner as a temporary file
    # is: a cache compiled by one user, or at a container image's build, serves the others
    (library,) = (tmp_path / "cache").glob("*.so")
    assert {package.stat().st_mode & 0o777, library.stat().st_mode & 0o777} == {FILE_MODE}

    def no_compile(*args):
        raise AssertionError("compiled although the cache holds the package")

    monkeypatch.setattr(compiled, "_compile_package", no_compile)
    loaded = InferenceMode("int8", compile=True).apply(SiglipModel.from_pretrained(BUNDLED))
    with torch.inference_mode():
        assert torch.equal(loaded.get_image_features(pixels), images)

    # compile="cached" (a job too small to pay a compile back) loads that package, and where the cache does
    # not hold it runs eager int8, compiling nothing; `siglip embed` says which it did
    probed = SiglipModel.from_pretrained(BUNDLED)
    classes = [type(module) for module in probed.modules()]
    assert compiled.image_package_cached(probed, "int8")
    assert [type(module) for module in probed.modules()] == classes  # probed on a copy
    cached = InferenceMode("int8", compile=CACHED).apply(SiglipModel.from_pretrained(BUNDLED))
    eager = InferenceMode("int8").apply(SiglipModel.from_pretrained(BUNDLED))
    with torch.inference_mode():
        assert isinstance(cached.vision_model, CompiledTower)
        assert torch.equal(cached.get_image_features(pixels), images)
    processor = SiglipProcessor.from_pretrained(BUNDLED)
    background = BackgroundCompile(Embedder(cached, processor, mode=InferenceMode("int8", compile=CACHED)))
    assert background.why_not == "its towers are compiled already"  # a server would not compile them again
    job = ["embed", *map(str, EXAMPLES[:2]), "--model", BUNDLED, "--precision", "int8"]
    capsys.readouterr()
    assert main([*job, "--out", str(tmp_path / "cached.npy")]) == 0
    said_cached = capsys.readouterr().out
    # `siglip dedup` of a folder chooses as `siglip embed` does; `siglip index` loads the package by default
    assert main(["dedup", *job[1:3], "--model", BUNDLED, "--precision", "int8"]) == 0
    assert "compiled ahead of time (2 images" in capsys.readouterr().err
    loaded = []
    load = compiled._load_package
    monkeypatch.setattr(compiled, "_load_package", lambda path: loaded.append(path) or load(path))
    index = [
        "index",
        *job[1:3],
        "--index",
        str(tmp_path / "index"),
        "--model",
        BUNDLED,
        "--precision",
        "int8",
    ]
    assert main(index) == 0
    assert loaded == [package]
    monkeypatch.setattr(compiled, "_load_package", load)
    # a cache this process may read but not write (a read-only image layer, another user's) still serves it
    write_error = cache_folder.write_error
    denied = PermissionError(13, "Read-only file system")
    monkeypatch.setattr(
        cache_folder, "write_error", lambda f: denied if f == package.parent else write_error(f)
    )
    read_only = InferenceMode("int8", compile=CACHED).apply(SiglipModel.from_pretrained(BUNDLED))
    with torch.inference_mode():
        assert torch.equal(read_only.get_image_features(pixels), images)  # loaded: `_compile_package` raises
    assert read_only.vision_model.package.path == package
    monkeypatch.setattr(cache_folder, "write_error", write_error)
    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(tmp_path / "empty"))
    uncached = InferenceMode("int8", compile=CACHED).apply(SiglipModel.from_pretrained(BUNDLED))
    assert not isinstance(uncached.vision_model, CompiledTower)
    assert main([*job, "--out", str(tmp_path / "uncached.npy")]) == 0
    said_uncached = capsys.readouterr().out
    with torch.inference_mode():
        assert torch.equal(uncached.get_image_features(pixels), eager.get_image_features(pixels))
    assert not list((tmp_path / "empty").glob("*.pt2"))
    assert "compiled ahead of time (2 images; compiling pays from ~" in said_cached
    assert "its package was in the cache)" in said_cached
    assert "not compiled (2 images; compiling pays from ~" in said_uncached
    assert "its package was not in the cache, or --compile)" in said_uncached
    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(tmp_path / "cache"))

    # a damaged package is compiled again (here: the good one copied in, as a compile would write it)
    good = package.read_bytes()
    package.write_bytes(good[: len(good) // 2])

    def compile_copy(tower, x, precision, path, calibration):
        path.write_bytes(good)

    monkeypatch.setattr(compiled, "_compile_package", compile_copy)
    again = InferenceMode("int8", compile=True).apply(SiglipModel.from_pretrained(BUNDLED))
    with torch.inference_mode(), caplog.at_level("WARNING", logger="siglip"):
        assert torch.equal(again.get_image_features(pixels), images)
    assert "compiling again" in caplog.text and package.read_bytes() == good
    assert [p.name for p in (tmp_path / "cache").glob("*.pt2")] == [package.name]  # no partial file left
    assert not list((tmp_path / "cache").glob(".*"))

    # a cache that cannot be written: compiled into a folder of this process, removed when it exits
    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(package / "below-a-file"))
    temporary = InferenceMode("int8", compile=True).apply(SiglipModel.from_pretrained(BUNDLED))
    with torch.inference_mode(), caplog.at_level("WARNING", logger="siglip"):
        assert torch.equal(temporary.get_image_features(pixels), images)
    assert "compiling for this process only" in caplog.text


def test_a_compiled_package_is_named_by_everything_it_depends_on(monkeypatch, tmp_path):
    from siglip.tools.embeddings import compiled
    from siglip.tools.embeddings.compiled import _package_path

    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(tmp_path))
    monkeypatch.setattr(compiled, "_versions", lambda precision: ("0.18.0",))
    tower = SiglipModel.from_pretrained(BUNDLED).vision_model
    pixels = _examples()
    path = _package_path(tower, pixels, "int8")
    assert path.parent == tmp_path and path == _package_path(tower, pixels[:2], "int8")  # batch size: no
    assert path != _package_path(tower, pixels, "bf16")  # the precision
    assert path != _package_path(tower, pixels[:, :, :14], "int8")  # input shape
    with monkeypatch.context() as patched:
        patched.setattr(compiled, "_versions", lambda precision: ("0.19.0",))
        assert path != _package_path(tower, pixels, "int8")  # library versions
    assert path != _package_path(tower, pixels.double(), "int8")  # dtype
    with monkeypatch.context() as patched:
        patched.setattr(compiled, "_cpu", lambda: "model name: another; flags: avx2")
        assert path != _package_path(tower, pixels, "int8")  # the CPU
    with monkeypatch.context() as patched:
        patched.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
        assert path != _package_path(tower, pixels, "int8")  # the instructions its kernels are held to
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert path != _package_path(tower, pixels, "int8")  # the threads the kernels are laid out for
    finally:
        torch.set_num_threads(threads)
    assert "flags" in compiled._cpu() or not Path("/proc/cpuinfo").exists()
    attention = tower.config.attn_implementation
    tower.config.attn_implementation = "eager" if attention != "eager" else "sdpa"
    assert path != _package_path(tower, pixels, "int8")  # the attention implementation
    tower.config.attn_implementation = attention
    assert path == _package_path(tower, pixels, "int8")
    attention = tower.encoder.layers[0].self_attn
    attention.__class__ = Bf16Attention
    assert path != _package_path(tower, pixels, "int8")  # the classes of its modules (same weights)
    assert "attention.py" in [Path(f).name for f in compiled._sources(tower, "bf16")]  # and their code
    attention.__class__ = SiglipAttention
    assert path == _package_path(tower, pixels, "int8")
    with torch.no_grad():
        tower.post_layernorm.weight[0] += 1e-3  # the weights
    assert path != _package_path(tower, pixels, "int8")

    # the code that makes it: the tower's classes, the compiling module, int8's quantiser settings
    sources = [Path(f).name for f in compiled._sources(tower, "int8")]
    assert {"compiled.py", "int8.py", "modeling.py"} <= set(sources)
    assert "int8.py" not in [Path(f).name for f in compiled._sources(tower, "bf16")]
    code = tmp_path / "int8.py"
    code.write_text("reduce_range = False\n")
    monkeypatch.setattr(compiled, "_sources", lambda tower, precision: [str(code)])
    before = _package_path(tower, pixels, "int8")
    code.write_text("reduce_range = True\n")
    assert _package_path(tower, pixels, "int8") != before


def test_a_job_compiles_its_image_tower_where_the_compile_pays_back(monkeypatch, capsys, tmp_path):
    from siglip import Siglip2Config, SiglipConfig
    from siglip.tools.embeddings import compiled
    from siglip.tools.embeddings.compiled import (
        CACHED,
        COMPILE_PAYS_FROM_FLOP,
        COMPILE_PAYS_WITHOUT_AMX_FROM_FLOP,
        compile_pays,
        eager_as_fast,
    )

    base = SiglipConfig(
        vision_config={
            "image_size": 224,
            "patch_size": 16,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
        }
    )
    # by hand: 196 patches x 12 layers x (q, k, v, out: 4 x 768^2; MLP: 2 x 768 x 3072) multiply-adds, x 2
    flop = 2 * 196 * 12 * (4 * 768 * 768 + 2 * 768 * 3072)
    assert flop == 33_294_385_152
    cpu = torch.device("cpu")
    monkeypatch.setattr(compiled, "missing_for_compile", lambda precision: None)
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True)  # int8's packages pay with VNNI
    # the base tower's measured break-evens: ~1,000 images with AMX (int8), ~14,000 (int8) and ~12,000 (bf16)
    # without; below them a job loads the package if an earlier job compiled it (`CACHED`)
    with monkeypatch.context() as probe:
        probe.setattr(compiled, "has_amx", lambda device: True)
        pays_from = math.ceil(COMPILE_PAYS_FROM_FLOP / flop)
        assert 950 <= pays_from <= 1050
        assert compile_pays(base, pays_from, "int8", cpu).compile is True
        assert compile_pays(base, pays_from - 1, "int8", cpu).compile == CACHED
        probe.setattr(compiled, "has_amx", lambda device: False)
        for precision, images in (("int8", 14_000), ("bf16", 12_000)):
            pays = math.ceil(COMPILE_PAYS_WITHOUT_AMX_FROM_FLOP[precision] / flop)
            assert 0.95 * images <= pays <= 1.05 * images
            assert compile_pays(base, pays, precision, cpu).compile is True
            short = compile_pays(base, pays - 1, precision, cpu)
            assert short.compile == CACHED and f"compiling pays from ~{pays:,}" in short.why
        assert compile_pays(base, 1, "bf16", cpu).compile == CACHED
    with monkeypatch.context() as probe:  # loading needs no C++ compiler: a small job does not look for one
        probe.setattr(compiled, "missing_for_compile", lambda precision: pytest.fail("looked for a compiler"))
        assert compile_pays(base, 2, "int8", cpu).compile == CACHED
        probe.setattr(compiled, "missing_for_packages", lambda precision: "torchao is not installed")
        without = compile_pays(base, 2, "int8", cpu)
        assert without.compile is False and without.why.endswith("but torchao is not installed")
    assert not compile_pays(base, 10**9, "fp32", cpu).compile  # bit for bit transformers' unless --compile
    assert not compile_pays(base, 10**9, "bf16", torch.device("cuda")).compile
    assert not compile_pays(Siglip2Config(), 10**9, "int8", cpu).compile  # NaFlex: not packaged
    # with AMX, eager bf16 (oneDNN's fused linears) is as fast as the package for a base-size model: never
    # compiled there; the bundled tiny model's towers (under EAGER_AS_FAST_FROM_FLOP) still are
    tiny = SiglipConfig.from_pretrained(BUNDLED)
    with monkeypatch.context() as probe:
        probe.delenv("SIGLIP_BF16_UNITS", raising=False)  # the suite's pin hides the units: this probes them
        for amx in (True, False):
            probe.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
            bf16 = compile_pays(base, 10**9, "bf16", cpu)
            assert bf16.compile is not amx
            assert ("bf16 on a CPU with AMX" in bf16.why and "33.3 GFLOP an item" in bf16.why) is amx
            assert (eager_as_fast(base, "bf16", cpu) is None) is not amx
            assert eager_as_fast(tiny, "bf16", cpu) is None  # 51 MFLOP an image
            assert compile_pays(base, 10**9, "int8", cpu).compile is True
            assert eager_as_fast(base, "int8", cpu) is None
    # without VNNI, eager int8 is as fast as its package for a base-size model: never compiled there either
    with monkeypatch.context() as probe:
        probe.setattr(torch.cpu, "_is_vnni_supported", lambda: False)
        probe.setattr(torch.cpu, "get_capabilities", lambda: {"avx_vnni": False}, raising=False)
        int8 = compile_pays(base, 10**9, "int8", cpu)
        assert (
            not int8.compile and "int8 on a CPU without VNNI" in int8.why and "33.3 GFLOP an item" in int8.why
        )
        assert eager_as_fast(tiny, "int8", cpu) is None
        assert compile_pays(base, 10**9, "bf16", cpu).compile  # bf16 without AMX: not this rule
        probe.setattr(torch.cpu, "_is_vnni_supported", lambda: True)
        probe.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # VNNI the kernels may not use counts as none
        assert not compile_pays(base, 10**9, "int8", cpu).compile
    monkeypatch.setattr(compiled, "missing_for_compile", lambda precision: "torchao is not installed")
    lacking = compile_pays(base, 10**9, "int8", cpu)
    assert not lacking.compile and "torchao is not installed" in lacking.why
    # the job says what it chose; the bundled tiny model never pays back a compile, and none is cached here
    monkeypatch.setattr(compiled, "missing_for_compile", lambda precision: None)
    job = ["embed", *map(str, EXAMPLES[:2]), "--model", BUNDLED, "--precision", "int8"]
    assert main([*job, "--out", str(tmp_path / "e.npy")]) == 0
    said = capsys.readouterr().out
    assert "not compiled (2 images; compiling pays from ~" in said and "package was not in the cache" in said
    assert main(["embed", str(EXAMPLES[0]), "--model", BUNDLED, "--out", str(tmp_path / "d.npy")]) == 0
    assert "not compiled (fp32 computes transformers' products bit for bit, or --compile)" in (
        capsys.readouterr().out
    )
    assert (
        main(
            ["embed", str(EXAMPLES[0]), "--model", BUNDLED, "--out", str(tmp_path / "f.npy"), "--no-compile"]
        )
        == 0
    )
    assert "compiled" not in capsys.readouterr().out


@pytest.mark.skipif(not heap._is_glibc(), reason="glibc's malloc")
@pytest.mark.parametrize("kept", [True, False])
def test_a_model_put_in_a_mode_on_the_cpu_keeps_freed_memory_for_the_next_batch(kept):
    """glibc unmaps freed blocks of 32 MiB and more and trims its heap, so each batch faulted its activations'
    pages in again (7% of the base image tower's time at batch 32). Once a model is put in a mode on the CPU,
    the same allocations stop faulting pages in after a few rounds; with SIGLIP_KEEP_FREED_MEMORY=0 every
    round faults all of them again."""
    setup = (
        "import sys\nfrom siglip import AutoModel\nfrom siglip.tools.embeddings.inference import InferenceMode\n"
        'InferenceMode("fp32").apply(AutoModel.from_pretrained(sys.argv[1]))'
    )
    assert_freed_memory_kept(setup, BUNDLED, kept=kept)


@pytest.mark.parametrize(
    ("cores", "device", "workers"),
    [(1, "cpu", 0), (2, "cpu", 0), (4, "cpu", 4), (16, "cpu", 8), (2, "cuda", 2), (16, "cuda", 8)],
)
def test_image_files_are_decoded_in_the_process_for_a_model_on_two_cores_or_fewer(
    monkeypatch, cores, device, workers
):
    """There the processor's own threads decode on every core, and worker processes cost the model 4-7%
    (BENCHMARKS.md); elsewhere one worker per core, at most 8."""
    monkeypatch.setattr(embedder_module, "usable_cores", lambda: cores)
    assert decoding_workers(torch.device(device)) == workers


@pytest.mark.parametrize("backend", ["torch", "pil"])
def test_a_batch_of_files_decoded_in_one_call_equals_each_decoded_alone(photos, backend):
    """What the DataLoader fetches in this process (`__getitems__`: the batch's files in one call of the
    processor, on its threads) equals each file loaded on its own: the same pixels bit for bit, and a
    damaged file failing alone with the same reason while the others load."""
    from siglip.core.hub import locate
    from siglip.tools.embeddings.embedder import _ImageFiles, load_processor
    from siglip.tools.embeddings.options import ModelOptions
    from siglip.tools.search.store import FileState

    directory, readable = photos
    paths = [*map(str, readable[:3]), str(directory / "broken.jpg"), *map(str, readable[3:])]
    processor = load_processor(locate(BUNDLED), ModelOptions(image_backend=backend)).image_processor
    dataset = _ImageFiles([FileState(p, -1, -1) for p in paths], processor)
    indices = list(range(len(paths)))
    for files in (indices, [i for i in indices if i != 3]):  # with and without the damaged file
        batch = dataset.__getitems__(files)
        alone = [dataset[i] for i in files]
        assert [(s.source, s.index, s.reason) for s in batch] == [
            (s.source, s.index, s.reason) for s in alone
        ]
        for together, single in zip(batch, alone, strict=True):
            assert (together.inputs is None) == (single.inputs is None)
            if single.inputs is not None:
                assert together.inputs.keys() == single.inputs.keys()
                for name, value in single.inputs.items():
                    np.testing.assert_array_equal(together.inputs[name], value)
    assert dataset.__getitems__(indices)[3].inputs is None and dataset[3].reason
