"""siglip's fused attention kernel (`siglip.tools.embeddings.fused_attention`): its numbers against attention
computed in float64 on the same bf16 inputs, with a bound derived from its roundings; its independence of
threads and batch; the calls it leaves to the kernel below; how it is turned off or fails to build; and a
package that calls it, loaded by a fresh process."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _material import BUNDLED, fresh_kernel_cache, old_builds, use_broken_compiler
from siglip import SiglipModel
from siglip.core.two_tower.modeling import SiglipAttention, key_padding_mask
from siglip.tools.embeddings import attention, fused_attention
from siglip.tools.embeddings.attention import (
    FusedGroupedAttention,
    FusedGroupedBf16Attention,
    GroupedAttention,
    GroupedBf16Attention,
    use_bf16_mode_attention,
)
from siglip.tools.embeddings.inference import InferenceMode

needs_kernel = pytest.mark.skipif(
    fused_attention.why_not() is not None,
    reason=f"the fused kernel does not run here: {fused_attention.why_not()}",
)


def _qkv(
    batch: int, heads: int, length: int, dim: int, seed: int = 0, dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, ...]:
    """Queries, keys and values (batch, heads, length, dim) as a model makes them: views of one projection's
    output (batch, length, 3 x heads x dim), each head's values contiguous."""
    generator = torch.Generator().manual_seed(seed)
    packed = (torch.randn(batch, length, 3 * heads * dim, generator=generator) * 2).to(dtype)
    return tuple(t.view(batch, length, heads, dim).transpose(1, 2) for t in packed.chunk(3, -1))


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    q, k, v = (t.double() for t in (q, k, v))
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("length", [1, 2, 15, 16, 17, 64, 197])
@pytest.mark.parametrize("dim", [2, 18, 32, 64, 72, 96, 128])
def test_the_kernel_computes_attention_within_its_roundings(length, dim, dtype):
    """Against float64 attention of the same inputs, every output is within the kernel's roundings: in bf16
    two roundings to bf16 (relative 2^-9 each, doubled here), of the weights before they multiply the values
    (at most 2^-9 of the largest value's magnitude) and of the output itself, its float32 scores and
    exponential being far finer; in float32, those of float32 sums and the exponential's polynomial (~3e-6).
    Lengths below, at and past the 16 keys of a vector and odd (a key pair with one key); head sizes from
    one vector's pair to the largest taken, and ones that fill no whole vector."""
    q, k, v = _qkv(2, 3, length, dim, dtype=dtype)
    scale = dim**-0.5
    ours = fused_attention.fused(q, k, v, scale, dtype)
    assert ours.dtype == dtype and ours.shape == q.shape
    assert ours.transpose(1, 2).is_contiguous()  # heads concatenated without a copy
    expected = _reference(q, k, v, scale)
    largest = v.double().abs().amax(dim=2, keepdim=True)  # per head and output dimension
    relative = 2**-8 if dtype == torch.bfloat16 else 2e-5
    assert ((ours.double() - expected).abs() <= relative * (expected.abs() + largest)).all()


@needs_kernel
def test_the_kernels_numbers_do_not_depend_on_threads_or_batch():
    """Each query row is computed alone: the same bits on 1, 2 and 3 threads (a sequence of one head split
    into 4, 8 and 12 parts) and for a sequence alone or in a batch. Scores far apart (a scale of 10^6: gaps of
    millions below the maximum, where an unclamped exponential polynomial turns negative and overflows) give
    the one-hot weights float64 gives."""
    q, k, v = _qkv(1, 1, 200, 64, seed=1)
    op = torch.ops.siglip.siglip_attention
    one = op(q, k, v, 0.125, 1)
    for threads in (2, 3):
        assert torch.equal(op(q, k, v, 0.125, threads), one)
    q, k, v = _qkv(3, 2, 50, 64, seed=1)
    assert torch.equal(op(q[1:2], k[1:2], v[1:2], 0.125, 2), op(q, k, v, 0.125, 2)[1:2])
    for dtype in (torch.bfloat16, torch.float32):
        q, k, v = (t.to(dtype) for t in (q, k, v))
        hot = op(q, k, v, 1e6, 2)
        assert torch.isfinite(hot).all()
        torch.testing.assert_close(hot.double(), _reference(q, k, v, 1e6), atol=0, rtol=2**-8)


@needs_kernel
def test_any_layout_with_contiguous_heads_is_read_in_place():
    """Inputs at an odd offset or with odd strides are read where they are (bf16 pairs need no alignment);
    inputs whose head values are not contiguous are copied first: the same numbers as contiguous inputs."""
    q, k, v = (t.contiguous() for t in _qkv(2, 2, 20, 32, seed=2))
    expected = fused_attention.fused(q, k, v, 0.2, torch.bfloat16)
    columns = [t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in (q, k, v)]  # dim stride != 1
    assert torch.equal(fused_attention.fused(*columns, 0.2, torch.bfloat16), expected)
    shifted, odd = [], []
    for t in (q, k, v):
        flat = torch.empty(t.numel() + 1, dtype=t.dtype)
        flat[1:] = t.reshape(-1)
        shifted.append(flat[1:].view(t.shape))  # data at an odd offset
        wide = torch.zeros(*t.shape[:-1], 33, dtype=t.dtype)
        wide[..., :32] = t
        odd.append(wide[..., :32])  # odd strides
    assert shifted[0].storage_offset() == 1 and odd[0].stride(2) == 33
    assert torch.equal(torch.ops.siglip.siglip_attention(*shifted, 0.2, 2), expected)
    assert torch.equal(torch.ops.siglip.siglip_attention(*odd, 0.2, 2), expected)


def test_calls_the_kernel_does_not_take_go_to_the_kernel_below():
    """A mask, dropout, a wanted gradient, an odd head size or one over `MAX_HEAD_SIZE`, and (for eager bf16's
    class) float32 inputs: the class below computes them, bit for bit."""
    assert not fused_attention.takes(*_qkv(1, 1, 4, 7))
    assert not fused_attention.takes(*_qkv(1, 1, 4, fused_attention.MAX_HEAD_SIZE + 2))
    q, k, v = _qkv(1, 1, 4, 8)
    assert not fused_attention.takes(q.requires_grad_(), k, v)
    assert not fused_attention.takes(q[:, :, :2], k, v)  # queries and keys of different lengths
    op = torch.ops.siglip.siglip_attention  # the op itself refuses what it cannot read, naming it
    with pytest.raises(ValueError, match=r"must all be bf16 or all float32, got torch.float16"):
        op(*(t.half() for t in (q, k, v)), 0.5, 1)
    with pytest.raises(ValueError, match="contiguous"):
        op(*(t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in (q, k, v)), 0.5, 1)
    with pytest.raises(ValueError, match="head size must be even"):
        op(*(t[..., :7] for t in _qkv(1, 1, 4, 8, dtype=torch.float32)), 0.5, 1)
    for scale, threads in (
        (0.0, 1),
        (-0.5, 1),
        (math.inf, 1),
        (math.nan, 1),
        (1e39, 1),
        (1e-46, 1),
        (0.5, 0),
    ):
        with pytest.raises(ValueError, match="positive float32 number and threads at least 1"):
            op(q.detach(), k, v, scale, threads)
    plain = SiglipModel.from_pretrained(BUNDLED).text_model.encoder.layers[0].self_attn
    x = torch.randn(3, 12, plain.embed_dim, generator=torch.Generator().manual_seed(4))
    mask = key_padding_mask(torch.arange(12) < torch.tensor([[12], [5], [9]]), torch.float32)
    for fused, below, dtype in (
        (FusedGroupedBf16Attention, GroupedBf16Attention, torch.float32),
        (FusedGroupedAttention, GroupedAttention, torch.bfloat16),
    ):
        ours, theirs = copy.deepcopy(plain).to(dtype), copy.deepcopy(plain).to(dtype)
        ours.__class__, theirs.__class__ = fused, below
        with torch.inference_mode():
            assert torch.equal(
                ours.attend(x.to(dtype), mask.to(dtype))[0], theirs.attend(x.to(dtype), mask.to(dtype))[0]
            )
    float32 = copy.deepcopy(plain)
    float32.__class__ = FusedGroupedAttention  # eager bf16's class on a model moved to float32
    with torch.inference_mode():
        assert torch.equal(float32.attend(x)[0], plain.attend(x)[0])


@needs_kernel
def test_the_fused_classes_compute_with_the_kernel():
    """Without a mask the fused classes' heads are the kernel's (not the class below's, whose scores are
    rounded to bf16), in the inputs' dtype."""
    plain = SiglipModel.from_pretrained(BUNDLED).vision_model.encoder.layers[0].self_attn
    x = torch.randn(2, 49, plain.embed_dim, generator=torch.Generator().manual_seed(5))
    ours, theirs = copy.deepcopy(plain), copy.deepcopy(plain)
    ours.__class__, theirs.__class__ = FusedGroupedBf16Attention, GroupedBf16Attention
    with torch.inference_mode():
        fused, grouped = ours.attend(x)[0], theirs.attend(x)[0]
        q, k, v = (
            proj(x).view(2, 49, plain.num_heads, plain.head_dim).transpose(1, 2)
            for proj in (plain.q_proj, plain.k_proj, plain.v_proj)
        )
        kernel = (
            fused_attention.fused(q, k, v, plain.scale, torch.bfloat16).transpose(1, 2).reshape(2, 49, -1)
        )
    assert fused.dtype == torch.float32
    assert torch.equal(fused, kernel.float()) and not torch.equal(fused, grouped)


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """The kernel's library looked up anew (in a cache of this test's own), and again after the test."""
    yield from fresh_kernel_cache(monkeypatch, tmp_path, fused_attention._loaded)


def test_the_kernel_can_be_turned_off_and_a_failed_build_leaves_the_kernels_below(
    monkeypatch, tmp_path, fresh_kernel
):
    """`SIGLIP_FUSED_ATTENTION=0` turns the kernel off; a compiler that fails is said (its last line of
    errors), leaves no file, and the towers keep the kernels below."""
    monkeypatch.setenv(fused_attention.VARIABLE, "0")
    assert fused_attention.why_not() == "SIGLIP_FUSED_ATTENTION=0"
    model = SiglipModel.from_pretrained(BUNDLED).bfloat16()
    use_bf16_mode_attention(model)
    assert not any(isinstance(m, attention.FusedAttention) for m in model.modules())
    monkeypatch.delenv(fused_attention.VARIABLE)
    use_broken_compiler(monkeypatch, tmp_path)
    why = fused_attention.why_not()
    assert why is not None
    if "AVX-512 BF16" in why:  # nothing to build on this CPU (or under an ISA cap)
        return
    assert "could not be built" in why and "unrecognized option" in why
    assert list(fresh_kernel.iterdir()) == []  # no half-written library
    model = SiglipModel.from_pretrained(BUNDLED).bfloat16()
    use_bf16_mode_attention(model)
    kinds = {type(m) for m in model.modules() if isinstance(m, SiglipAttention)}
    assert kinds == {GroupedAttention}


@needs_kernel
def test_a_build_is_reused_without_a_compiler_and_old_builds_go(monkeypatch, tmp_path, fresh_kernel):
    """The kernel is built once into the cache's `kernels` folder; a later process finds it there with no
    compiler (a container image's cache built ahead); a build removes the builds of other sources not
    loaded for an hour, and keeps a recent one (another version in use)."""
    (old,) = old_builds(fresh_kernel, "attention-0123456789abcdef.so")
    recent = fresh_kernel / "attention-fedcba9876543210.so"
    recent.write_bytes(b"another version's build")
    assert fused_attention.why_not() is None
    (built,) = set(fresh_kernel.glob("attention-*.so")) - {recent}
    assert not old.exists() and recent.exists()
    fused_attention._loaded.cache_clear()
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert fused_attention.why_not() is None  # found, not built
    assert set(fresh_kernel.glob("attention-*.so")) == {built, recent}


def test_a_cpu_without_avx512_bf16_never_runs_the_kernel(monkeypatch, fresh_kernel):
    """Where the CPU lacks AVX-512 BF16 (the code the library is compiled to) the op raises, naming it,
    rather than loading the library (a call would stop the process on an illegal instruction)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert "AVX-512 BF16" in fused_attention.why_not()
    with pytest.raises(RuntimeError, match="no AVX-512 BF16"):
        torch.ops.siglip.siglip_attention(*_qkv(1, 1, 4, 8), 0.5, 1)
    assert not fresh_kernel.exists()


@needs_kernel
def test_a_package_calls_the_kernel_and_a_fresh_process_loads_it(monkeypatch, tmp_path):
    """A compiled bf16 tower's package calls the kernel's C shim (no Python, no proxy executor); a fresh
    process loads that package from the cache (the kernel's library loaded first, its symbols global) and
    gets the same features, bit for bit, without compiling."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SIGLIP_COMPILED_CACHE", str(cache))
    model = InferenceMode("bf16", compile=True).apply(SiglipModel.from_pretrained(BUNDLED))
    pixels = torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(7)) * 2 - 1
    with torch.inference_mode():
        images = model.get_image_features(pixels)
        eager = InferenceMode("bf16").apply(SiglipModel.from_pretrained(BUNDLED)).get_image_features(pixels)
    assert F.cosine_similarity(images.float(), eager.float()).min() > 0.9999
    (package,) = cache.glob("bf16-SiglipVisionTransformer-*.pt2")
    (library,) = cache.glob("bf16-SiglipVisionTransformer-*.so")
    assert fused_attention.SHIM.encode() in library.read_bytes()
    torch.save(pixels, tmp_path / "pixels.pt")
    script = f"""
import sys, torch
from pathlib import Path
from siglip.tools.embeddings.compiled import PackageRunner
pixels = torch.load({str(tmp_path / "pixels.pt")!r})
with torch.inference_mode():  # nothing has loaded the kernel's library yet: the runner does
    direct = PackageRunner(Path({str(package)!r}))(pixels)[1]
torch.save(direct, {str(tmp_path / "direct.pt")!r})
from siglip import SiglipModel
from siglip.tools.embeddings import compiled
from siglip.tools.embeddings.inference import InferenceMode
def refuse(*args):
    raise SystemExit("compiled although the cache holds the package")
compiled._compile_package = refuse
model = InferenceMode("bf16", compile=True).apply(SiglipModel.from_pretrained({str(BUNDLED)!r}))
with torch.inference_mode():
    features = model.get_image_features(torch.load({str(tmp_path / "pixels.pt")!r}))
torch.save(features.as_subclass(torch.Tensor), {str(tmp_path / "out.pt")!r})
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy(), timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), images)
    with torch.inference_mode():
        assert torch.equal(torch.load(tmp_path / "direct.pt"), model.vision_model._compiled(pixels)[1])
    assert Path(package).exists() and len(list(cache.glob("*.pt2"))) == 1
