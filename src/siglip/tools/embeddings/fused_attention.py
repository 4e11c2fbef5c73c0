"""siglip's fused attention kernel for CPUs with AVX-512 BF16 and no AMX (`kernels/attention.cpp`):
`softmax(q k^T * scale) v` for each head of each sequence, no mask, in bf16 (its dot-product instructions) or
float32, with float32 sums, the scores of a block of queries kept in the caches and one exponential a score.

Why: on such a CPU neither torch's SDPA kernel nor its flex attention uses the bf16 dot-product units
(100-140 GFLOP/s), and the attention as graph operations (two batched oneDNN products and a softmax inductor
fuses) still wrote and read every score and took each exponential twice: the last gap between a compiled
bf16 base image tower and OpenVINO's, which fuses it (BENCHMARKS.md). Here one layer of 32 images took 8.3 ms
against the graph's 12.6 (2 threads, Zen 5). In float32, for the `--compile` package only (eager fp32 keeps
transformers' kernels bit for bit), it replaces torch's SDPA kernel.

The kernel is built on first use (`siglip.tools.embeddings.native`: about a second, kept in
`compiled_cache()/kernels`) and loaded with its symbols global, so that packages compiled with it find their
call (`SHIM`). It is a torch custom op, `torch.ops.siglip.siglip_attention`: eager towers call it (through
ctypes, which lets other Python threads run meanwhile), `torch.export` records it, and AOTInductor compiles a
direct call to its C shim into a package (`PACKAGE_CONFIG`). `SIGLIP_FUSED_ATTENTION=0` turns it off; without
a compiler the towers keep the kernels of `siglip.tools.embeddings.attention`.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os

import torch

from .native import NativeKernel
from .precision import cpu_units

logger = logging.getLogger("siglip")

VARIABLE = "SIGLIP_FUSED_ATTENTION"
MAX_HEAD_SIZE = 128  # head sizes the kernel takes: even, up to this (SigLIP's are 64-96)
# the name AOTInductor gives the op's C shim (aoti_torch_<device>_<op>), which the package calls
SHIM = "aoti_torch_cpu_siglip_attention"
KERNEL = NativeKernel(
    "attention", ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma"), "fused attention"
)


@torch.library.custom_op("siglip::siglip_attention", mutates_args=())
def siglip_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, threads: int
) -> torch.Tensor:
    """The heads' outputs of `q`, `k`, `v` (batch, heads, positions, head size; bf16 or float32, each head's
    values contiguous) scaled by `scale` (positive), computed in their dtype on `threads` threads; laid out as
    (batch, positions, heads, head size), which a caller that concatenates the heads reads without a copy."""
    problem = _unreadable(q, k, v)
    if not (0 < ctypes.c_float(scale).value < math.inf) or threads < 1:  # the kernel takes a float32 scale
        problem = f"scale must be a positive float32 number and threads at least 1, got {scale} and {threads}"
    if problem:
        raise ValueError(f"siglip_attention: {problem}")
    batch, heads, length, dim = q.shape
    out = torch.empty(batch, length, heads, dim, dtype=q.dtype).transpose(1, 2)
    library, why = _loaded()
    if library is None:
        raise RuntimeError(why)
    kernel = library.siglip_attention_bf16 if q.dtype == torch.bfloat16 else library.siglip_attention_f32
    error = kernel(
        *(t.data_ptr() for t in (q, k, v, out)), batch, heads, length, dim,
        *(_strides(t) for t in (q, k, v, out)), scale, threads,
    )  # fmt: skip
    if error:
        raise ValueError(f"siglip_attention: the kernel refused head size {dim} or key stride {k.stride(2)}")
    return out


def _unreadable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """What keeps the kernel from reading `q`, `k`, `v`, in words (None: nothing)."""
    if q.dtype not in (torch.bfloat16, torch.float32) or not (q.dtype == k.dtype == v.dtype):
        return f"inputs must all be bf16 or all float32, got {q.dtype}, {k.dtype}, {v.dtype}"
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        return "each head's values must be contiguous"
    return _shape_problem(q, k, v)


def _shape_problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """What in the shapes or device of `q`, `k`, `v` the kernel does not take, in words (None: nothing)."""
    if q.dim() != 4 or not (q.shape == k.shape == v.shape) or not all(t.is_cpu for t in (q, k, v)):
        shapes = ", ".join(str(tuple(t.shape)) for t in (q, k, v))
        return f"q, k, v must be CPU tensors of one (batch, heads, positions, head size) shape, got {shapes}"
    if q.shape[-1] % 2 or not 0 < q.shape[-1] <= MAX_HEAD_SIZE:
        return f"the head size must be even and at most {MAX_HEAD_SIZE}, got {q.shape[-1]}"
    return None


@siglip_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, threads: int) -> torch.Tensor:
    batch, heads, length, dim = q.shape
    return q.new_empty(batch, length, heads, dim).transpose(1, 2)


# what `_compile_package` gives AOTInductor so that a package calls the kernel's C shim directly, with no
# Python (and none of torch's proxy executor, which siglip's package runner does not give it)
PACKAGE_CONFIG = {
    "aot_inductor.custom_ops_to_c_shims": {
        torch.ops.siglip.siglip_attention.default: [
            f"AOTITorchError {SHIM}(AtenTensorHandle q, AtenTensorHandle k, AtenTensorHandle v, "
            "double scale, int64_t threads, AtenTensorHandle* ret0)"
        ]
    }
}


def why_not() -> str | None:
    """Why the fused kernel does not run here, in words (None: it does): turned off, a CPU without AVX-512
    BF16 or with AMX (whose SDPA kernel runs on the tiles), or a kernel that could not be built."""
    if os.environ.get(VARIABLE, "").strip() == "0":
        return f"{VARIABLE}=0"
    units = cpu_units()  # the units oneDNN may use: an ISA cap in the environment hides them here too
    if not units.bf16 or units.amx:
        return "the CPU has no AVX-512 BF16 units, or has AMX"
    return _loaded()[1]


def takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the kernel computes SDPA of these inputs: CPU tensors of one shape (self-attention), an even
    head size up to `MAX_HEAD_SIZE`, no gradient wanted (`fused` takes care of dtypes and layout)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return False
    return _shape_problem(q, k, v) is None


def fused(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dtype: torch.dtype
) -> torch.Tensor:
    """`siglip_attention` of `q`, `k`, `v` (inputs `takes` accepts) in `dtype` (bf16 or float32; the inputs
    converted), on torch's threads (read when a package is traced: its kernels are laid out for them too),
    each head's values contiguous."""
    q, k, v = (_laid_out(t.to(dtype)) for t in (q, k, v))
    return torch.ops.siglip.siglip_attention(q, k, v, scale, torch.get_num_threads())


def _laid_out(t: torch.Tensor) -> torch.Tensor:
    """`t`, or a contiguous copy where a head's values are apart (the kernel reads them as vectors)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _strides(t: torch.Tensor) -> ctypes.Array:
    return (ctypes.c_int64 * 3)(*t.stride()[:3])


@functools.cache
def _loaded() -> tuple[ctypes.CDLL | None, str | None]:
    """The kernel's library, built if need be and loaded with its symbols global (AOTInductor packages
    resolve `SHIM` from them), or None and why it could not be (asked once a process): never on a CPU without
    AVX-512 BF16, whose code it is compiled to."""
    if not torch.cpu._is_avx512_bf16_supported():
        return None, "the CPU has no AVX-512 BF16 units"
    library, why = KERNEL.load()
    if library is None:
        logger.info("the fused attention kernel is not used: %s", why)
        return None, why
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    strides = ctypes.POINTER(ctypes.c_int64)
    for function in (library.siglip_attention_bf16, library.siglip_attention_f32):
        function.argtypes = [pointer] * 4 + [size] * 4 + [strides] * 4 + [ctypes.c_float, ctypes.c_int]
        function.restype = ctypes.c_int
    return library, None
