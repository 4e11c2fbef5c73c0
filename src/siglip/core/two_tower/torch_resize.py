"""The torch image backend: transformers 5's default image processors (`SiglipImageProcessor`,
`Siglip2ImageProcessor`, built on torchvision) reproduced bit for bit with torch operations alone.

transformers 5 has two backends per image processor: the PIL one (`SiglipImageProcessorPil`, the historical
"slow" processor, which `siglip.core.two_tower.image_processing` reproduces) and the torchvision one (its
default where torchvision is installed, historically "Fast"). Their pixels differ by one 8-bit level on about
half the values. This module is the second without depending on torchvision; it replicates, step for step:

- `TorchvisionBackend.process_image` / `convert_to_rgb` (arrays and tensors: 1 channel repeated, 4 channels
  composited over white in float32 through `tvF.to_dtype` and back, which truncates rather than rounds);
- `tvF.resize` on tensors (`resize_image`): `torch.nn.functional.interpolate` with antialias, natively on
  uint8 where torchvision does so on the CPU (bicubic and Lanczos always, bilinear on AVX2/AVX512 and ARM
  CPUs), otherwise through float32 with clamping (bicubic, Lanczos) and rounding back to the integer dtype;
- `rescale_and_normalize`: rescale folded into the mean and std (`(x - 127.5) / 127.5` in float32 for SigLIP),
  or a plain `x * rescale_factor` without normalisation.

PIL images are converted to RGB exactly as for the PIL backend (transformers does the same), then resized as
uint8 tensors. The tests check every step against transformers with torchvision installed.
"""

from __future__ import annotations

import ctypes
import functools
import platform
from collections.abc import Sequence

import numpy as np
import PIL
import torch
from PIL import Image

from ...errors import ImageInputError

BACKENDS = ("pil", "torch")
# PIL filter -> torch interpolation mode, as transformers' `pil_torch_interpolation_mapping`; torch has no BOX
# or HAMMING filter (torchvision's resize fails on them as well)
_MODES = {
    Image.Resampling.NEAREST: "nearest-exact",
    Image.Resampling.BILINEAR: "bilinear",
    Image.Resampling.BICUBIC: "bicubic",
    Image.Resampling.LANCZOS: "lanczos",
}
_ANTIALIASED = ("bilinear", "bicubic", "lanczos")
_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def resolve_backend(backend: str | None = None, use_fast: bool | None = None) -> str | None:
    """The backend ("pil" or "torch") that transformers' `backend=` / `use_fast=` arguments ask for, or None
    when neither is given. `backend` may use transformers' name "torchvision" for "torch"; it wins over
    `use_fast` as in transformers."""
    if backend is None:
        return None if use_fast is None else ("torch" if use_fast else "pil")
    backend = "torch" if backend == "torchvision" else backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'pil' or 'torch' (transformers' 'torchvision'), got {backend!r}")
    return backend


def from_pil(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8 tensor of an RGB PIL image, laid out channels-last, which `resize` reads in place.

    Where Pillow exports the image as Arrow data (Pillow >= 13, rows in one block: images up to Pillow's
    16 MB block size), a view of Pillow's own memory, where each pixel is stored in 4 bytes (RGB and a
    padding byte): no copy, and the GIL is not held for one (the copy took a quarter of an image's
    preprocessing and kept the decoding threads waiting on each other). Otherwise a view of a copy of its
    (H, W, 3) pixels."""
    pixels = pillow_rgbx(image)
    if pixels is None:
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)
    return pixels.permute(2, 0, 1)[:3]


class _ArrowSchema(ctypes.Structure):
    """The Arrow C data interface's `ArrowSchema` (a stable ABI)."""


class _ArrowArray(ctypes.Structure):
    """The Arrow C data interface's `ArrowArray` (a stable ABI)."""


_ArrowSchema._fields_ = [
    ("format", ctypes.c_char_p),
    *[(name, ctypes.c_void_p) for name in ("name", "metadata")],
    *[(name, ctypes.c_int64) for name in ("flags", "n_children")],
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowSchema))),
    *[(name, ctypes.c_void_p) for name in ("dictionary", "release", "private_data")],
]
_ArrowArray._fields_ = [
    *[(name, ctypes.c_int64) for name in ("length", "null_count", "offset", "n_buffers", "n_children")],
    ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))),
    *[(name, ctypes.c_void_p) for name in ("dictionary", "release", "private_data")],
]
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype, _capsule_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
# Pillow 11.2-12 exported images whose rows are not one run of memory (PILLOW_ALIGNMENT) as if they were, and
# crashed on read-only ones; 13 refuses the first and exports the second
PILLOW_MAJOR = int(PIL.__version__.split(".")[0])
_PILLOW_EXPORTS_SAFELY = PILLOW_MAJOR >= 13


def pillow_rgbx(image: Image.Image) -> torch.Tensor | None:
    """(H, W, 4) uint8 view of an RGB image's memory through its Arrow export, or None where Pillow has none
    for it. The tensor keeps the export alive (it holds a reference to the image's memory)."""
    if image.mode != "RGB" or not _PILLOW_EXPORTS_SAFELY:
        return None
    try:
        schema_capsule, capsule = image.__arrow_c_array__()
        schema = _ArrowSchema.from_address(_capsule_pointer(schema_capsule, b"arrow_schema"))
        export = _ArrowArray.from_address(_capsule_pointer(capsule, b"arrow_array"))
    except ValueError:  # rows in several blocks (a large image), or not an Arrow export
        return None
    size = image.width * image.height * 4
    # RGB: a fixed-size list of 4 bytes per pixel ("+w:4" of "C"), one run of memory
    if schema.format != b"+w:4" or schema.n_children != 1 or schema.children[0].contents.format != b"C":
        return None
    if export.n_children != 1 or export.offset != 0:
        return None
    values = export.children[0].contents
    if values.length != size or values.offset != 0 or values.n_buffers != 2:
        return None
    memory = (ctypes.c_uint8 * size).from_address(values.buffers[1])
    memory.export = capsule  # released with the last view of the memory
    return torch.from_numpy(np.frombuffer(memory, np.uint8)).view(image.height, image.width, 4)


def to_rgb(image: np.ndarray | torch.Tensor, name: str, data_format: str | None) -> torch.Tensor:
    """(3, H, W) tensor of an array or tensor image in its own dtype, as transformers' torchvision backend
    converts it: 2-D is grey, the channel axis is inferred from a first or last axis of 1, 3 or 4 entries
    (the first when both are), 1 channel is repeated, 4 are composited over white."""
    if isinstance(image, np.ndarray):
        # a read-only array (e.g. `np.asarray` of a PIL image) is copied: torch warns about sharing it
        image = torch.from_numpy(image if image.flags.writeable else image.copy())
    else:
        image = image.detach().cpu()
    if image.ndim == 2:
        image, data_format = image[None], "channels_first"
    elif image.ndim != 3:
        raise ImageInputError(
            f"{name} has shape {tuple(image.shape)}; expected (H, W), (H, W, C) or (C, H, W)"
        )
    if data_format is None:
        if image.shape[0] in (1, 3, 4):
            data_format = "channels_first"
        elif image.shape[-1] in (1, 3, 4):
            data_format = "channels_last"
        else:
            raise ImageInputError(f"{name} has shape {tuple(image.shape)}: expected 1, 3 or 4 channels")
    if data_format == "channels_last":
        image = image.permute(2, 0, 1)
    channels = image.shape[0]
    if channels == 1:
        image = image.repeat(3, 1, 1)
    elif channels == 4:
        image = _composite_over_white(image, name)
    elif channels != 3:
        raise ImageInputError(
            f"{name} has shape {tuple(image.shape)}: {channels} channels, expected 1, 3 or 4"
        )
    return image


def _composite_over_white(image: torch.Tensor, name: str) -> torch.Tensor:
    """RGB of a (4, H, W) RGBA tensor over white, with torchvision's `to_dtype(..., scale=True)` arithmetic:
    to float32 in [0, 1], blend, back to the input dtype (integers: times max + 1 - 1e-3, truncated)."""
    if image.is_floating_point() and image.numel() and (image.min() < 0 or image.max() > 1):
        raise ImageInputError(f"{name} is a float RGBA image with values outside [0, 1]")
    dtype = image.dtype
    pixels = image.movedim(0, -1)
    if dtype.is_floating_point:
        pixels = pixels.to(torch.float32)
    elif dtype == torch.uint8:
        pixels = pixels.to(torch.float32).mul_(1.0 / 255)
    else:
        raise ImageInputError(f"{name} is a 4-channel {dtype} image: RGBA images must be uint8 or float")
    blended = pixels[..., :3] * pixels[..., 3:] + (1 - pixels[..., 3:])
    blended = blended.to(dtype) if dtype.is_floating_point else blended.mul(255 + 1.0 - 1e-3).to(dtype)
    return blended.movedim(-1, 0)


def resize(image: torch.Tensor, size: tuple[int, int], resample: Image.Resampling) -> torch.Tensor:
    """(C, height, width) resize of a (C, H, W) tensor, as torchvision's `resize` with antialias (the CPU path
    torchvision takes for the tensor's dtype: native uint8 kernels where it uses them).

    A uint8 image may be laid out channels-last (`from_pil`'s view): torch's uint8 kernels work in that layout,
    and read it in place for the same numbers that a contiguous copy gives, at a third of the time for a
    640x480 photo (BENCHMARKS.md, "Preprocessing")."""
    if resample not in _MODES:
        names = ", ".join(f"{r.name}={r.value}" for r in _MODES)
        raise ValueError(
            f"the torch image backend resamples with {names}; {resample.name} needs backend='pil'"
        )
    if tuple(image.shape[1:]) == tuple(size) or image.numel() == 0:
        return image
    padded = _all_four_channels(image)
    if padded is not None:
        return resize(padded, size, resample)[:3]
    mode = _MODES[resample]
    dtype = image.dtype
    native = [torch.float32, torch.float64]
    if mode.startswith("nearest") or _native_uint8(mode):
        native.append(torch.uint8)
    batch = image[None] if dtype in native else image[None].to(torch.float32)
    if batch.dtype != torch.uint8:  # float kernels as transformers calls them: on contiguous tensors
        batch = batch.contiguous()
    options = {"align_corners": False, "antialias": True} if mode in _ANTIALIASED else {}
    resized = torch.nn.functional.interpolate(batch, size=list(size), mode=mode, **options)[0]
    if dtype not in native:
        if mode in ("bicubic", "lanczos") and dtype == torch.uint8:
            resized = resized.clamp_(min=0, max=255)
        if dtype in _INTEGER_DTYPES:
            resized = resized.round_()
        resized = resized.to(dtype)
    return resized


def _all_four_channels(image: torch.Tensor) -> torch.Tensor | None:
    """`from_pil`'s (3, H, W) view of 4-byte pixels as the (4, H, W) view of all their bytes, which the uint8
    kernels resize in place, each channel on its own (3 channels 4 bytes apart they would copy first); None
    for another tensor, or where the 4th bytes are not all in its storage."""
    height, width = image.shape[1:]
    if image.dtype != torch.uint8 or image.shape[0] != 3 or image.stride() != (1, 4 * width, 4):
        return None
    if image.storage_offset() + 4 * height * width > image.untyped_storage().nbytes():
        return None
    return image.as_strided((4, height, width), image.stride())


def _native_uint8(mode: str) -> bool:
    """Whether torchvision resizes uint8 tensors without a float round trip on this CPU for `mode`."""
    if mode == "bilinear":
        return torch.compiler.is_compiling() or (
            torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
            or platform.machine() in ("aarch64", "arm64")
        )
    return mode in ("bicubic", "lanczos")


def rescale_normalize(
    image: torch.Tensor,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """transformers' fused rescale and normalise: with both, `(x - mean / f) / (std / f)` in float32 (mean and
    std scaled as float32 tensors); normalise alone in float32; rescale alone as `x * f` (uint8 -> float32,
    other dtypes kept)."""
    if do_normalize:
        factor = rescale_factor if do_rescale else None
        try:
            mean_t, std_t = _cached_normalizer(mean, std, factor, torch.get_default_dtype())
        except TypeError:  # settings that cannot be a cache key (e.g. a list set on the processor)
            mean_t, std_t = _normalizer(mean, std, factor)
        if mean_t.device != image.device:
            mean_t, std_t = mean_t.to(image.device), std_t.to(image.device)
        return image.to(torch.float32).sub(mean_t).div_(std_t)
    if do_rescale:
        return image * rescale_factor
    return image


def _normalizer(
    mean: Sequence[float], std: Sequence[float], rescale_factor: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (C, 1, 1) float32 CPU mean and std of `rescale_normalize`: made in torch's default dtype (as
    transformers makes them), divided by `rescale_factor` when given; ordinary tensors even when made under
    `torch.inference_mode` or a default-device context, as they may be kept for later calls."""
    with torch.inference_mode(False):
        mean_t, std_t = torch.tensor(mean, device="cpu"), torch.tensor(std, device="cpu")
        if rescale_factor is not None:
            mean_t, std_t = mean_t * (1.0 / rescale_factor), std_t * (1.0 / rescale_factor)
        return mean_t.to(torch.float32).view(-1, 1, 1), std_t.to(torch.float32).view(-1, 1, 1)


@functools.lru_cache(maxsize=32)
def _cached_normalizer(
    mean: Sequence[float], std: Sequence[float], rescale_factor: float | None, default_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_normalizer`, made once per setting and default dtype (making them took a fifth of a small image's time
    through the processor). Shared between calls and threads, so never written to."""
    return _normalizer(mean, std, rescale_factor)


def is_unit_float(image: torch.Tensor) -> bool:
    """Whether a tensor holds floats all within [0, 1] (pixels already rescaled)."""
    return image.is_floating_point() and image.numel() > 0 and bool(image.min() >= 0 and image.max() <= 1)
