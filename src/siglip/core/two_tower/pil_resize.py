"""Pillow's resize of 8-bit RGB images, pixel for pixel, in compiled loops the CPU runs on whole vectors (numba:
the `fast-resize` extra). The PIL backend's resize: 3-5x faster than Pillow's (a 640x480 photo to 224x224 in
0.35 ms against 1.8 ms; 1.7x for a 12-megapixel one).

Pillow resamples in two passes, along each row and along each column, in fixed point: each output pixel is
`(2**21 + sum of input pixels times integer coefficients) >> 22`, clipped to 0..255, the first pass's result
rounded to 8 bits before the second (`libImaging/Resample.c`: the horizontal pass first, except from Pillow 13
where the height shrinks more than twice as much as the width). Integer sums do not depend on the order of
their terms, so a vectorised loop gives Pillow's pixels exactly, provided the coefficients are Pillow's:
`coefficients` computes them with Pillow's double-precision formulas, operation for operation, and the tests
hold every size, direction and filter here to Pillow's own output. Each pass combines whole rows (the image
is transposed for the horizontal one), which the compiler turns into vector instructions, where Pillow's C
loops over one pixel's few inputs at a time.

The filters are BOX, BILINEAR and BICUBIC (SigLIP's and SigLIP 2's): polynomials, whose coefficients numpy
computes with Pillow's arithmetic on whole arrays. HAMMING and LANCZOS (sines of the C library, one value at
a time) and NEAREST (another algorithm) stay Pillow's, as do PIL images Pillow cannot lend its memory for
(larger than its 16 MB blocks: copying them costs more than the loops save).

The loops compile once per machine (numba's cache; without a writable cache, once per process) and load on a
background thread the first time a process asks for them (`kernels`): until then, and wherever numba is
missing, Pillow resizes, to the same pixels.
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
from PIL import Image

from . import torch_resize

PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images
# the filters of Pillow's convolution resampling done here, with their support (in input pixels at scale 1)
SUPPORT = {Image.Resampling.BOX: 0.5, Image.Resampling.BILINEAR: 1.0, Image.Resampling.BICUBIC: 2.0}
# Pillow 13 chose the order of the passes by the sizes (before, always the horizontal pass first): the order
# changes the pixels (the first pass's result is rounded to 8 bits)
_VERTICAL_FIRST_RULE = torch_resize.PILLOW_MAJOR >= 13


def _filter(resample: Image.Resampling, x: np.ndarray) -> np.ndarray:
    """Pillow's filter at each of `x` (float64), by its formulas operation for operation (the same IEEE
    operations on whole arrays)."""
    if resample == Image.Resampling.BOX:
        return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)
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
_NUMBA = importlib.util.find_spec("numba") is not None
# how long a fork waits for a load in flight: the child inherits the loaded loops rather than a module its
# parent's loader thread had half imported (a child never loads them itself after such a fork)
FORK_WAITS_FOR_LOAD_S = 30.0


def kernels(wait: bool = False) -> ModuleType | None:
    """The compiled loops (`siglip.core.two_tower._resize_kernels`), or None: numba is not installed, they
    are still loading, or they failed to load (said once in a warning; not tried again). The first call
    starts loading them on a background thread (a few tenths of a second from numba's cache; the first time
    on a machine, a few seconds to compile) and returns at once, unless `wait` (tests, benchmarks)."""
    global _loader
    if _loader is None and _NUMBA:
        with _lock:
            if _loader is None:
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


def _before_fork() -> None:
    if _loader is not None and _loader.is_alive() and _loader is not threading.current_thread():
        _loader.join(FORK_WAITS_FOR_LOAD_S)


os.register_at_fork(before=_before_fork)


def resize(
    image: Image.Image | np.ndarray, size: tuple[int, int], resample: Image.Resampling
) -> np.ndarray | None:
    """Pillow's `image.resize(size[::-1], resample)` of an RGB PIL image or of (H, W, 3) uint8 pixels (any
    strides: a view of 4 bytes per pixel too), as a contiguous (height, width, 3) uint8 array of the same
    values; None where Pillow must resize it (the loops not loaded yet, numba missing, or another filter)."""
    loops = kernels()
    if loops is None or resample not in SUPPORT:
        return None
    pixels = image
    if isinstance(image, Image.Image):  # read in place, where Pillow lends its memory
        view = torch_resize.pillow_rgbx(image)
        if view is None:
            return None
        pixels = view[..., :3].numpy()
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
        loops.combine_rows(
            rows.reshape(len(rows), -1), first, *weights, PRECISION_BITS, pixels.reshape(height, -1)
        )
    if width != in_width and not horizontal_first:
        pixels = _horizontal_pass(loops, pixels, width, resample)
    return np.array(pixels) if pixels is image else np.ascontiguousarray(pixels)  # a copy, as Pillow's


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
    loops.combine_rows(columns.reshape(in_width, -1), 0, *weights, PRECISION_BITS, resized.reshape(width, -1))
    out = np.empty((rows, width, 3), np.uint8)
    loops.transpose_rgb(resized, out)
    return out
