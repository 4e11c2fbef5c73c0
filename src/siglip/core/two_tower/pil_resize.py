"""Pillow's resize of 8-bit RGB images, pixel for pixel, in compiled loops the CPU runs on whole vectors (numba:
the `fast-resize` extra). The PIL backend's resize, ~5x faster than Pillow's on a 640x480 photo.

Pillow resamples in two passes, along each row and then along each column, in fixed point: each output
pixel is `(2**21 + sum of input pixels times integer coefficients) >> 22`, clipped to 0..255, the horizontal
pass's result rounded to 8 bits before the second (`libImaging/Resample.c`; from Pillow 13 the vertical pass
comes first where the height shrinks more than twice as much as the width). Integer sums do not
depend on the order of their terms, so a vectorised loop gives Pillow's pixels exactly, provided the
coefficients are Pillow's: `coefficients` computes them with Pillow's double-precision formulas, term by
term in its order, and the tests hold every filter, many sizes and upscaling to Pillow's own output. Each
pass here combines whole rows (the image is transposed for the horizontal one), which the compiler turns
into vector instructions; Pillow's C loops over one pixel's few inputs at a time.

The loops compile once per machine (numba's cache) and load in the background the first time a process
asks for them (`kernels`): until they are loaded, and wherever numba is missing, Pillow resizes, to the same
pixels. NEAREST is Pillow's (another algorithm).
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
import warnings
from functools import lru_cache
from types import ModuleType

import numpy as np
import PIL
from PIL import Image

from . import torch_resize

PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images
# Pillow's filters that resample by convolution, with their support (in input pixels at scale 1)
SUPPORT = {
    Image.Resampling.BOX: 0.5,
    Image.Resampling.BILINEAR: 1.0,
    Image.Resampling.HAMMING: 1.0,
    Image.Resampling.BICUBIC: 2.0,
    Image.Resampling.LANCZOS: 3.0,
}
# Pillow 13 chose the order of the passes by the sizes (before, always the horizontal pass first): the order
# changes the pixels (the first pass's result is rounded to 8 bits)
_VERTICAL_FIRST_RULE = int(PIL.__version__.split(".")[0]) >= 13
_HAMMING_A, _HAMMING_B = float(np.float32(0.54)), float(np.float32(0.46))  # single-precision constants in C


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _hamming(x: float) -> float:
    x = -x if x < 0.0 else x
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x = x * math.pi
    return math.sin(x) / x * (_HAMMING_A + _HAMMING_B * math.cos(x))


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


def _filter(resample: Image.Resampling, x: np.ndarray) -> np.ndarray:
    """Pillow's filter at each of `x` (float64), by its formulas operation for operation. The polynomial ones
    run on whole arrays (the same IEEE operations); the two with sines call the C library's `sin` and `cos`
    one value at a time, as Pillow does (numpy's vectorised sines may differ in the last bit)."""
    if resample == Image.Resampling.BOX:
        return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)
    if resample in (Image.Resampling.HAMMING, Image.Resampling.LANCZOS):
        function = _hamming if resample == Image.Resampling.HAMMING else _lanczos
        return np.array([function(v) for v in x.ravel().tolist()]).reshape(x.shape)
    a = np.abs(x)
    if resample == Image.Resampling.BILINEAR:
        return np.where(a < 1.0, 1.0 - a, 0.0)
    near = ((-0.5 + 2.0) * a - (-0.5 + 3.0)) * a * a + 1  # bicubic, a = -0.5
    far = (((a - 5) * a + 8) * a - 4) * -0.5
    return np.where(a < 1.0, near, np.where(a < 2.0, far, 0.0))


@lru_cache(maxsize=512)
def coefficients(in_size: int, out_size: int, resample: Image.Resampling) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's 8-bit resampling of `in_size` pixels to `out_size` along one axis: `bounds` (out_size, 2),
    each output's first input and number of inputs, and `weights` (out_size, taps), their integer
    coefficients in units of 2**-22 (Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc`)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = SUPPORT[resample] * filterscale
    taps = math.ceil(support) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - first
    inputs = np.arange(taps)
    weight = _filter(resample, ((inputs + first[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))
    weight[inputs >= count[:, None]] = 0.0
    total = np.cumsum(weight, axis=1)[:, -1:]  # summed in order, as Pillow does (adding the zeros is exact)
    weight = np.divide(weight, total, out=weight, where=total != 0.0)
    unit = float(1 << PRECISION_BITS)
    fixed = np.trunc(np.where(weight < 0, -0.5 + weight * unit, 0.5 + weight * unit)).astype(np.int32)
    return np.stack([first, count], axis=1), fixed


_lock = threading.Lock()
_loader: threading.Thread | None = None
_kernels: ModuleType | None = None


def kernels(wait: bool = False) -> ModuleType | None:
    """The compiled loops (`siglip.core.two_tower._resize_kernels`), or None: numba is not installed, or they
    are still loading. The first call starts loading them on a background thread (a few tenths of a second
    from numba's cache; the first time on a machine, a second or two to compile) and returns at once, unless
    `wait` (tests, benchmarks)."""
    global _loader
    if _kernels is None and _loader is None:
        with _lock:
            if _loader is None and importlib.util.find_spec("numba") is not None:
                _loader = threading.Thread(target=_load, name="siglip-resize-load", daemon=True)
                _loader.start()
    if wait and _loader is not None:
        _loader.join()
    return _kernels


def _load() -> None:
    global _kernels
    try:
        from . import _resize_kernels
    except Exception as err:  # a numba that cannot compile here (an unsupported CPU, a broken install)
        warnings.warn(f"siglip: Pillow keeps resizing: the compiled resize did not load: {err}", stacklevel=1)
        return
    _kernels = _resize_kernels


def _forget_loader() -> None:
    """In a forked child: a loader thread of the parent's does not exist here; load again if asked."""
    global _loader
    if _kernels is None:
        _loader = None


os.register_at_fork(after_in_child=_forget_loader)


def resize(
    image: Image.Image | np.ndarray, size: tuple[int, int], resample: Image.Resampling
) -> np.ndarray | None:
    """Pillow's `image.resize(size[::-1], resample)` of an RGB PIL image or of (H, W, 3) uint8 pixels (any
    strides: a view of 4 bytes per pixel too), as a contiguous (height, width, 3) uint8 array of the same
    values; None where Pillow must resize it (the loops not loaded yet, numba missing, or another filter)."""
    loops = kernels()
    if loops is None or resample not in SUPPORT:
        return None
    # a PIL image is read in place where Pillow exports its memory
    pixels = (
        torch_resize.from_pil(image).permute(1, 2, 0).numpy() if isinstance(image, Image.Image) else image
    )
    height, width = size
    in_height, in_width = pixels.shape[:2]
    first = 0
    horizontal_first = width != in_width and not (
        # Pillow 13 runs the vertical pass first where the height shrinks more than twice as much as the width
        _VERTICAL_FIRST_RULE and in_height - height > 0 and in_height - height > (in_width - width) * 2
    )
    if horizontal_first:  # on the rows the vertical pass reads only
        if height != in_height:
            bounds = coefficients(in_height, height, resample)[0]
            first, last = int(bounds[0, 0]), int(bounds[-1, 0] + bounds[-1, 1])
            pixels = pixels[first:last]
        pixels = _horizontal_pass(loops, pixels, width, resample)
    if height != in_height:
        rows = np.ascontiguousarray(pixels)
        pixels = np.empty((height, rows.shape[1], 3), np.uint8)
        weights = coefficients(in_height, height, resample)
        loops.combine_rows(rows.reshape(len(rows), -1), first, *weights, pixels.reshape(height, -1))
    if width != in_width and not horizontal_first:
        pixels = _horizontal_pass(loops, pixels, width, resample)
    return np.ascontiguousarray(pixels)


def _horizontal_pass(
    loops: ModuleType, pixels: np.ndarray, width: int, resample: Image.Resampling
) -> np.ndarray:
    """Pillow's horizontal pass of (rows, W, 3) pixels to (rows, width, 3): on the transposed pixels, as a
    combination of whole rows, then transposed back."""
    rows, in_width = pixels.shape[:2]
    columns = np.empty((in_width, rows, 3), np.uint8)
    loops.transpose_rgb(pixels, columns)
    resized = np.empty((width, rows, 3), np.uint8)
    weights = coefficients(in_width, width, resample)
    loops.combine_rows(columns.reshape(in_width, -1), 0, *weights, resized.reshape(width, -1))
    out = np.empty((rows, width, 3), np.uint8)
    loops.transpose_rgb(resized, out)
    return out
