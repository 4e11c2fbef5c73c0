"""The compiled loops of `pil_resize` (numba): imported by it only, in the background, when numba is installed.

Importing this module compiles both functions for the one signature each has (or loads them from numba's
cache on disk: a few tenths of a second), so a call never compiles.
"""

import numba
import numpy as np

# inputs are declared read-only: a writable array is accepted for them too (a read-only one, e.g. numpy's view
# of a PIL image, would not be for a writable parameter)
_PIXELS = numba.types.Array(numba.uint8, 3, "A", readonly=True)
_CONTIGUOUS_PIXELS = numba.types.Array(numba.uint8, 3, "C", readonly=True)
_ROWS = numba.types.Array(numba.uint8, 2, "C", readonly=True)
_BOUNDS = numba.types.Array(numba.int64, 2, "C", readonly=True)
_WEIGHTS = numba.types.Array(numba.int32, 2, "C", readonly=True)

# Pillow's fixed point: coefficients in units of 2**-22, sums rounded by adding half a unit, then shifted
PRECISION_BITS = 22
_HALF = np.int32(1 << (PRECISION_BITS - 1))


@numba.njit(
    [
        numba.void(layout, numba.uint8[:, :, ::1])
        for layout in (numba.uint8[:, :, ::1], _CONTIGUOUS_PIXELS, _PIXELS)
    ],
    nogil=True,
    cache=True,
)
def transpose_rgb(src: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """out[b, a] = src[a, b] for (A, B, 3) pixels in any strides (a view of 4 bytes per pixel too): what
    turns the horizontal pass into a combination of whole rows, which the compiler vectorises."""
    for a in range(src.shape[0]):
        for b in range(src.shape[1]):
            out[b, a, 0] = src[a, b, 0]
            out[b, a, 1] = src[a, b, 1]
            out[b, a, 2] = src[a, b, 2]


@numba.njit(numba.void(_ROWS, numba.int64, _BOUNDS, _WEIGHTS, numba.uint8[:, ::1]), nogil=True, cache=True)
def combine_rows(
    src: np.ndarray, first: int, bounds: np.ndarray, weights: np.ndarray, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Pillow's 8-bit resampling pass along the first axis of `src` (rows of pixels' bytes):
    out[j] = clip8((2**21 + sum_k weights[j, k] * src[bounds[j, 0] - first + k]) >> 22), k < bounds[j, 1].

    Integer arithmetic, as Pillow's: the result is exact whatever order the compiler sums the lanes in.
    """
    lanes = src.shape[1]
    acc = np.empty(lanes, np.int32)
    for j in range(out.shape[0]):
        start = bounds[j, 0] - first
        acc[:] = _HALF
        for k in range(bounds[j, 1]):
            weight = weights[j, k]
            row = src[start + k]
            for i in range(lanes):
                acc[i] += np.int32(row[i]) * weight
        row = out[j]
        for i in range(lanes):
            value = acc[i] >> PRECISION_BITS
            row[i] = 0 if value < 0 else (255 if value > 255 else value)
