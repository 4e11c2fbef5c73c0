"""Eager int8's `Int8Linear`: oneDNN's int8 products on weights quantised per output channel, each call's
input quantised by siglip's kernel (`kernels/quantize.cpp`), the bias, GELU and residual inside the product.
Oracles: the quantisation's documented formula computed in numpy's float32, and the products in float64."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _material import BUNDLED, fresh_kernel_cache, old_builds, use_broken_compiler
from siglip import SiglipModel
from siglip.tools.embeddings import int8
from siglip.tools.embeddings.inference import InferenceMode
from siglip.tools.embeddings.int8 import Int8Linear, quantized

# the kernel and the layers run on any x86 CPU with AVX2, and eager int8 takes them there
pytestmark = pytest.mark.skipif(
    int8._quantize_kernel()[1] is not None,
    reason=f"no quantisation kernel here: {int8._quantize_kernel()[1]}",
)
needs_int8_linears = pytest.mark.skipif(
    int8.int8_linears_why_not() is not None,
    reason=f"eager int8 without Int8Linear: {int8.int8_linears_why_not()}",
)


def _reference(x: torch.Tensor, qmax: int) -> tuple[np.ndarray, np.float32, int]:
    """`quantized`'s formula, step by step in numpy's float32 (ties to even: `np.rint`)."""
    values = x.numpy().astype(np.float32).ravel()
    lo, hi = min(values.min(), np.float32(0)), max(values.max(), np.float32(0))
    scale = max(np.float32(hi - lo) / np.float32(qmax), np.float32(2.0**-23))
    zero_point = int(np.clip(np.rint(-lo / scale), 0, qmax))
    q = np.clip(np.rint(values * (np.float32(1) / scale)) + zero_point, 0, qmax)
    return q.astype(np.uint8).reshape(-1, x.shape[-1]), scale, zero_point


@pytest.mark.parametrize("qmax", [255, 127])
@pytest.mark.parametrize(
    "shape",
    [(1, 1), (1, 7), (3, 31), (2, 32), (5, 33), (197, 768), (985, 3072), (3, 64, 768), (0, 768)],
)
def test_quantized_is_its_formula_bit_for_bit(shape, qmax):
    """Every size (vectors of 8 and 32, their tails, one thread and a team of two) gives the formula's
    values, scale and zero point; dequantised, each value is within half a step of the input."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))) * 3 + 0.7
    q, scale, zero_point = quantized(x, qmax)
    if x.numel():
        expected, expected_scale, expected_zero = _reference(x, qmax)
        assert (scale, zero_point) == (float(expected_scale), expected_zero)
        assert np.array_equal(q.numpy(), expected)
        back = (q.double() - zero_point) * scale
        # half a step, and the float32 rounding of `x * (1 / scale)` (a few 1e-5 steps at 255)
        assert (back - x.reshape(q.shape).double()).abs().max() <= scale * (0.5 + 1e-4)
        assert int(q.max()) <= qmax
    assert q.dtype == torch.uint8 and q.shape == (max(1, x.numel()) // x.shape[-1], x.shape[-1])


def test_quantized_ranges_ties_and_zeros():
    """The range always holds 0 (an all-positive input has zero point 0, an all-negative one qmax), ties go
    to even, and all zeros take the smallest scale."""
    q, scale, zero_point = quantized(torch.tensor([0.5, 1.5, 2.5, 3.5, 254.5, 255.0]))
    assert (scale, zero_point) == (1.0, 0) and q.tolist() == [[0, 2, 2, 4, 254, 255]]
    q, scale, zero_point = quantized(torch.tensor([-254.0, -127.0, -1.0]), 127)
    assert (scale, zero_point) == (2.0, 127) and q.tolist() == [[0, 63, 127]]  # -63.5 to -64, -0.5 to 0
    q, scale, zero_point = quantized(torch.zeros(2, 40))
    assert scale == 2.0**-23 and zero_point == 0 and not q.any()
    # two ties to even can round past qmax: 123.5 to 124, plus the zero point 3.5 rounded to 4, is 128 > 127
    edge = torch.tensor([-3.5, 123.5] + [0.0] * 38)
    for values in (edge, edge[:2]):  # in a vector of 32, and in the tail
        q, scale, zero_point = quantized(values, 127)
        assert (scale, zero_point) == (1.0, 4) and q[0, :2].tolist() == [0, 127]


def test_quantized_does_not_depend_on_threads_and_reads_any_layout():
    """One thread, two, three (slices of unequal lengths, the last one short) give the same values; so do
    the input laid out by column and in float64."""
    x = torch.randn(61, 1001, generator=torch.Generator().manual_seed(1))  # 61,061 values: not whole vectors
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(quantized(x))
    finally:
        torch.set_num_threads(threads)
    results += [quantized(x.T.contiguous().T), quantized(x.double())]
    first = results[0]
    assert all(torch.equal(each[0], first[0]) and each[1:] == first[1:] for each in results)
    assert np.array_equal(first[0].numpy(), _reference(x, 255)[0])


@pytest.mark.parametrize("shape", [(1, 5), (3, 37), (985, 768)])
def test_bf16_inputs_are_read_as_their_float32_values(shape):
    """A bf16 input (int8's attention output where the attention runs in bf16) quantises as its float32
    values do, bit for bit, vectors and tails alike; its NaN is refused too."""
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(6)) * 5).bfloat16()
    ours, theirs = quantized(x), quantized(x.float())
    assert torch.equal(ours[0], theirs[0]) and ours[1:] == theirs[1:]
    x.view(-1)[-1] = float("nan")
    with pytest.raises(ValueError, match="holds a NaN"):
        quantized(x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [0, 37, 40_000, 50_002])
def test_a_nan_or_an_infinity_is_refused_by_name(bad, where):
    x = torch.randn(50_003)  # two threads' slices of whole vectors, the last with a tail of 3 (50,002)
    x[where] = bad
    with pytest.raises(ValueError, match=r"input of shape \(50003,\) holds a NaN or an infinity"):
        quantized(x)


def test_what_cannot_be_quantised_is_refused_by_name():
    with pytest.raises(ValueError, match="holds a NaN or an infinity"):
        quantized(torch.tensor([3e38, -1e38, 5.0]))  # finite, but their range is not: the scale would be inf
    with pytest.raises(ValueError, match="qmax must be 127 or 255"):
        quantized(torch.ones(3), 200)
    for bad in (torch.tensor(1.0), torch.ones(3, device="meta")):
        with pytest.raises(ValueError, match="must be a CPU tensor of one dimension or more"):
            quantized(bad)


def _float64_product(layer: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """What `layer` computes, in float64: the dequantised input by the dequantised weight, plus the bias."""
    q, scale, zero_point = quantized(x, layer.qmax)
    weight = layer.weight.double() * layer.weight_scale.double()[:, None]
    out = ((q.double() - zero_point) * scale) @ weight.T + layer.bias.double()
    return out.view(*x.shape[:-1], layer.out_features)


@pytest.mark.parametrize("activation", [None, "gelu_pytorch_tanh", "gelu"])
def test_int8_linear_computes_its_arithmetic(activation):
    """The product of the quantised input and weights, the bias and the activation (as SigLIP's MLP names
    it) within float32 rounding of the float64 computation; the per-channel weights within half a step of
    the float weights; the output near the float layer's."""
    from siglip.core.two_tower.modeling import ACTIVATIONS

    generator = torch.Generator().manual_seed(2)
    linear = torch.nn.Linear(96, 80)
    with torch.no_grad():
        linear.weight.mul_(torch.linspace(0.1, 10, 80)[:, None])  # rows of very different ranges
    act = ACTIVATIONS[activation] if activation else None
    layer = Int8Linear(linear, act)
    steps = layer.weight_scale[:, None]
    assert (layer.weight.float() * steps - linear.weight).abs().le(steps / 2 + 1e-7).all()
    assert layer.weight.abs().amax(1).eq(127).all()  # each row's largest magnitude to 127
    x = torch.randn(2, 9, 96, generator=generator)
    with torch.inference_mode():
        out = layer(x)
        expected = _float64_product(layer, x)
        if act is not None:
            expected = act(expected)
        float_out = linear(x) if act is None else act(linear(x))
    assert out.shape == (2, 9, 80) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=2e-4, rtol=1e-5)
    assert F.cosine_similarity(out.flatten(), float_out.flatten(), 0) > 0.9995  # 0.9998 with 7 bits


@pytest.mark.parametrize("batch", [1, 3])
def test_add_to_adds_any_residual_and_leaves_it_alone(batch, monkeypatch):
    """`add_to` adds the residual inside the product, whatever its layout (a patch embedding's output is laid
    out by channel: for one image, its rows are a view with strides (1, tokens)), handed to oneDNN
    contiguous, and does not write into it."""
    layer = Int8Linear(torch.nn.Linear(64, 48))
    x = torch.randn(batch, 10, 64, generator=torch.Generator().manual_seed(3))
    residual = torch.randn(batch, 48, 10).transpose(1, 2)  # (batch, 10, 48), by channel
    with (
        torch.inference_mode()
    ):  # a contiguous residual (oneDNN could add into it in place) is left alone too
        contiguous = residual.contiguous()
        layer.add_to(x, contiguous)
        assert torch.equal(contiguous, residual)
    kept = residual.clone()
    product, layouts = torch.ops.onednn.qlinear_pointwise.binary, []

    def spy(*args: object) -> torch.Tensor:
        layouts.append(args[6].is_contiguous())  # `other`, the residual as oneDNN reads it
        return product(*args)

    monkeypatch.setattr(torch.ops.onednn.qlinear_pointwise, "binary", spy)
    with torch.inference_mode():
        out = layer.add_to(x, residual)
        plain = layer(x)
    assert torch.equal(residual, kept)
    # oneDNN given a strided residual took its slow path for every later call of the shape (56x, one image)
    assert layouts == [True]
    torch.testing.assert_close(out, plain + residual, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(
        out.double(), _float64_product(layer, x) + residual.double(), atol=2e-4, rtol=0
    )


@needs_int8_linears
def test_int8_linears_copy_pickle_and_move():
    """A model in eager int8 deep-copies and pickles (the packed weights are not copied but packed again) and
    computes the same numbers after; `.to()` drops the packed copy."""
    model = InferenceMode("int8").apply(SiglipModel.from_pretrained(BUNDLED))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    size = model.config.vision_config.image_size
    pixels = F.interpolate(pixels, size=(size, size))
    with torch.inference_mode():
        before = model.get_image_features(pixels)
        copied = copy.deepcopy(model)
        loaded = pickle.loads(pickle.dumps(model))
        for other in (copied, loaded):
            assert torch.equal(other.get_image_features(pixels), before)
    layer = next(m for m in model.vision_model.modules() if isinstance(m, Int8Linear))
    assert layer._packed is not None
    layer.to(torch.device("cpu"))
    assert layer._packed is None


@needs_int8_linears
def test_a_model_with_nan_pixels_is_refused_by_name():
    model = InferenceMode("int8").apply(SiglipModel.from_pretrained(BUNDLED))
    size = model.config.vision_config.image_size
    pixels = torch.zeros(1, 3, size, size)
    pixels[0, 0, 0, 0] = float("nan")
    with torch.inference_mode(), pytest.raises(ValueError, match="holds a NaN or an infinity"):
        model.get_image_features(pixels)


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """The quantisation kernel looked up anew (in a cache of this test's own), and again after the test."""
    yield from fresh_kernel_cache(monkeypatch, tmp_path, int8._quantize_kernel)


def _torch_dynamic(model: torch.nn.Module) -> bool:
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    return any(isinstance(m, dynamic) for m in model.modules()) and not any(
        isinstance(m, Int8Linear) for m in model.modules()
    )


def test_without_the_kernel_eager_int8_takes_torchs_linears(monkeypatch, tmp_path, fresh_kernel, caplog):
    """`SIGLIP_INT8_LINEARS=0`, a compiler that fails (said: its last line of errors; no file left) and a CPU
    without AVX2 (the kernel never built) leave eager int8 on torch's dynamically quantised linears."""
    monkeypatch.setenv(int8.INT8_LINEARS_VARIABLE, "0")
    assert int8.int8_linears_why_not() == "SIGLIP_INT8_LINEARS=0"
    assert _torch_dynamic(InferenceMode("int8").apply(SiglipModel.from_pretrained(BUNDLED)))
    monkeypatch.delenv(int8.INT8_LINEARS_VARIABLE)
    use_broken_compiler(monkeypatch, tmp_path)
    why = int8.int8_linears_why_not()
    assert "could not be built" in why and "unrecognized option" in why
    assert list(fresh_kernel.iterdir()) == []  # no half-written library
    with caplog.at_level("INFO", logger="siglip"):
        model = InferenceMode("int8").apply(SiglipModel.from_pretrained(BUNDLED))
    assert _torch_dynamic(model)
    assert "torch's dynamically quantised linear layers: the int8 quantisation kernel" in caplog.text
    with pytest.raises(RuntimeError, match="could not be built"):
        quantized(torch.ones(3))

    int8._quantize_kernel.cache_clear()
    monkeypatch.delenv("CXX")
    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: False)
    assert int8.int8_linears_why_not() == "the CPU has no AVX2"
    assert _torch_dynamic(InferenceMode("int8").apply(SiglipModel.from_pretrained(BUNDLED)))
    assert not fresh_kernel.exists() or list(fresh_kernel.iterdir()) == []


def test_a_build_removes_only_its_own_stale_builds(fresh_kernel):
    """Building the quantisation kernel removes its own builds of other sources unused for an hour, never
    another kernel's (the attention kernel's old build stays for its own next build to judge)."""
    mine, theirs = old_builds(fresh_kernel, "quantize-0123456789abcdef.so", "attention-0123456789abcdef.so")
    assert int8._quantize_kernel()[1] is None
    assert not mine.exists() and theirs.exists()
    assert len(list(fresh_kernel.glob("quantize-*.so"))) == 1


def test_a_weight_row_of_zeros_and_a_layer_without_bias():
    linear = torch.nn.Linear(16, 4, bias=False)
    with torch.no_grad():
        linear.weight[2] = 0
    layer = Int8Linear(linear)
    assert torch.isfinite(layer.weight_scale).all() and not layer.weight[2].any()
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        out = layer(x)
    assert not out[:, 2].any()
    torch.testing.assert_close(out, linear(x).detach(), atol=0.05, rtol=0.05)


def test_a_changed_weight_is_packed_again():
    """The packed copy follows the weight: `load_state_dict` (which replaces its values in place) and an
    in-place write both give the new numbers on the next call."""
    first, second = (Int8Linear(torch.nn.Linear(32, 24)) for _ in range(2))
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(8))
    expected = second(x)
    first(x)  # packed
    first.load_state_dict(second.state_dict())
    assert torch.equal(first(x), expected)
    with torch.no_grad():
        first.weight.neg_()
    assert torch.allclose(first(x) - first.bias, -(expected - second.bias), atol=1e-5)


def test_an_int8_model_is_refused_as_a_checkpoint(tmp_path, monkeypatch):
    """`save_pretrained` refuses a model in eager int8 by name, on either path (its layers are not the
    checkpoint's float weights), and leaves no file; the float model saves as before."""
    from siglip.errors import CheckpointError

    for why in (None, "forced"):  # Int8Linear (whatever the CPU), then torch's linears
        monkeypatch.setattr(int8, "int8_linears_why_not", lambda why=why: why)
        model = InferenceMode("int8").apply(SiglipModel.from_pretrained(BUNDLED))
        with pytest.raises(CheckpointError, match="Cannot save SiglipModel as a checkpoint: text_model"):
            model.save_pretrained(tmp_path / "int8")
        assert not (tmp_path / "int8").exists() or not any((tmp_path / "int8").iterdir())
    SiglipModel.from_pretrained(BUNDLED).save_pretrained(tmp_path / "float")
    assert (tmp_path / "float" / "model.safetensors").is_file()


@needs_int8_linears
def test_queries_keys_and_values_come_in_the_attentions_dtype(monkeypatch):
    """On a CPU whose int8 attention computes in bf16, the projections write q, k, v in bf16: the same
    embeddings as converting their float32 output (the attention rounds it to bf16 either way), and the
    attention maps, when asked for, in bf16."""
    from siglip.core.two_tower.modeling import SiglipAttention
    from siglip.tools.embeddings.precision import int8_attention_dtype

    monkeypatch.delenv("SIGLIP_BF16_UNITS", raising=False)  # the suite's pin keeps int8's attention float32
    if int8_attention_dtype() != torch.bfloat16:
        pytest.skip("int8's attention computes in float32 on this CPU")
    model = InferenceMode("int8").apply(SiglipModel.from_pretrained(BUNDLED))
    floats = copy.deepcopy(model)
    for attention in floats.modules():
        if isinstance(attention, SiglipAttention):
            assert attention.qkv_proj.out_dtype == torch.bfloat16
            attention.qkv_proj.out_dtype = torch.float32
    size = model.config.vision_config.image_size
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(9))
    ids = torch.randint(
        model.config.text_config.vocab_size, (3, 16), generator=torch.Generator().manual_seed(9)
    )
    with torch.inference_mode():
        assert torch.equal(model.get_image_features(pixels), floats.get_image_features(pixels))
        assert torch.equal(model.get_text_features(ids), floats.get_text_features(ids))
        maps = model.vision_model(pixels, output_attentions=True).attentions
    assert maps[0].dtype == torch.bfloat16


@pytest.mark.parametrize("masked", [False, True])
def test_one_layer_for_queries_keys_and_values_gives_the_three_layers_numbers(masked):
    """`fuse_projections` stacks the three weights into one layer: as `Int8Linear`s (weights quantised per
    output channel, the input once) the attention's output is bit for bit that of three `Int8Linear`s; in
    float32 it stays within float rounding of the checkpoint's layers. The three layers are gone."""
    from siglip.core.two_tower.modeling import SiglipAttention, key_padding_mask
    from siglip.tools.embeddings.onednn import replace_linears

    model = SiglipModel.from_pretrained(BUNDLED)
    three = model.text_model.encoder.layers[1].self_attn
    assert type(three) is SiglipAttention
    one = copy.deepcopy(three)
    int8.fuse_projections(one)
    assert not any(hasattr(one, name) for name in ("q_proj", "k_proj", "v_proj"))
    x = torch.randn(3, 10, three.embed_dim, generator=torch.Generator().manual_seed(4))
    mask = key_padding_mask(torch.arange(10) < torch.tensor([[10], [4], [1]]), x.dtype) if masked else None
    with torch.inference_mode():
        torch.testing.assert_close(one.attend(x, mask)[0], three.attend(x, mask)[0], rtol=1e-5, atol=1e-6)
        replace_linears(one, Int8Linear)
        replace_linears(three, Int8Linear)
        assert isinstance(one.qkv_proj, Int8Linear) and one.qkv_proj.out_features == 3 * three.embed_dim
        assert torch.equal(one.attend(x, mask)[0], three.attend(x, mask)[0])


def test_projections_wrapped_by_an_adapter_are_not_fused():
    """An attention whose queries' layer is wrapped (a LoRA adapter's `weight` is its base layer's, without
    the adapter) keeps its three layers; the others are fused."""

    class Adapted(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + 1.0

    model = SiglipModel.from_pretrained(BUNDLED)
    wrapped = model.text_model.encoder.layers[0].self_attn
    base = wrapped.q_proj
    wrapped.q_proj = Adapted(base.in_features, base.out_features)
    wrapped.q_proj.load_state_dict(base.state_dict())
    int8.fuse_projections(model)
    assert "qkv_proj" not in wrapped._modules and isinstance(wrapped.q_proj, Adapted)
    assert hasattr(wrapped, "k_proj") and hasattr(wrapped, "v_proj")
    assert "qkv_proj" in model.text_model.encoder.layers[1].self_attn._modules


@needs_int8_linears
def test_a_cpu_without_vnni_takes_int8_linears_with_7_bit_activations(monkeypatch):
    """Without VNNI eager int8 still takes `Int8Linear`s (the same oneDNN products as torch's dynamically
    quantised linears there, which gained nothing), every one with 7-bit activations; oneDNN held below AVX2
    (an ISA cap on a CPU with it) leaves torch's linears, saying so."""
    from siglip.tools.embeddings.precision import CpuUnits

    monkeypatch.setattr(int8, "cpu_units", lambda: CpuUnits(avx2=True, vnni=False, bf16=False, amx=False))
    assert int8.int8_linears_why_not() is None
    model = InferenceMode("int8").apply(SiglipModel.from_pretrained(BUNDLED))
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert not _torch_dynamic(model) and layers and {m.qmax for m in layers} == {127}

    cap = "ONEDNN_MAX_CPU_ISA=AVX"
    monkeypatch.setattr(
        int8, "cpu_units", lambda: CpuUnits(avx2=False, vnni=False, bf16=False, amx=False, cap=cap)
    )
    assert int8.int8_linears_why_not() == f"oneDNN's int8 products held below AVX2 ({cap})"
    assert _torch_dynamic(InferenceMode("int8").apply(SiglipModel.from_pretrained(BUNDLED)))


def test_a_layer_loaded_on_a_cpu_without_vnni_takes_7_bits(monkeypatch):
    """A layer pickled where the CPU has VNNI (8-bit activations) takes 7 bits where it is loaded on one
    without, whose int8 products would overflow 8-bit activations."""
    from siglip.tools.embeddings.precision import CpuUnits

    layer = Int8Linear(torch.nn.Linear(8, 4), qmax=255)
    saved = pickle.dumps(layer)
    monkeypatch.setattr(int8, "cpu_units", lambda: CpuUnits(avx2=True, vnni=False, bf16=False, amx=False))
    assert pickle.loads(saved).qmax == 127 and Int8Linear(torch.nn.Linear(8, 4)).qmax == 127
    monkeypatch.setattr(int8, "cpu_units", lambda: CpuUnits(avx2=True, vnni=True, bf16=False, amx=False))
    assert pickle.loads(saved).qmax == 255


def test_cxx_is_a_path_or_a_command(monkeypatch, tmp_path, fresh_kernel):
    """`$CXX` naming an existing file is one word (spaces included); otherwise a command with arguments
    (`ccache g++`); one that cannot be read as a command falls back to torch's linears, saying why."""
    folder = tmp_path / "my tools"
    folder.mkdir()
    wrapper = folder / "c++ wrapper"
    wrapper.write_text('#!/bin/sh\nexec g++ "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CXX", str(wrapper))
    assert int8._quantize_kernel()[1] is None
    int8._quantize_kernel.cache_clear()
    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(tmp_path / "second"))
    monkeypatch.setenv("CXX", "env g++")
    assert int8._quantize_kernel()[1] is None
    int8._quantize_kernel.cache_clear()
    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(tmp_path / "third"))
    monkeypatch.setenv("CXX", "/opt/o'brien/g++")
    assert "cannot be read as a command" in int8._quantize_kernel()[1]
