"""The PIL backend's compiled loops (numba): `pil_resize`'s two passes, and the normalising table's lookup
(`image_processing._apply_table`). Imported by `pil_resize.kernels` only, in the background, when numba is
installed.

Importing this module compiles each function for its signatures (or loads them from numba's cache on disk: a
few tenths of a second), so a call never compiles.
"""

from collections.abc import Callable

import numba
import numpy as np

# inputs are declared read-only: a writable array is accepted for them too (a read-only one, e.g. numpy's view
# of a PIL image, would not be for a writable parameter)
_PIXELS = numba.types.Array(numba.uint8, 3, "A", readonly=True)
_CONTIGUOUS_PIXELS = numba.types.Array(numba.uint8, 3, "C", readonly=True)
_ROWS = numba.types.Array(numba.uint8, 2, "C", readonly=True)
_BOUNDS = numba.types.Array(numba.int64, 2, "C", readonly=True)
_WEIGHTS = numba.types.Array(numba.int32, 2, "C", readonly=True)


def _compiled(signatures: list) -> Callable[[Callable], Callable]:
    """numba's compiler for `signatures`, caching the machine code on disk, or, where numba finds no folder
    it may write its cache in (a read-only install and home), compiling in each process."""

    def compile_(function: Callable) -> Callable:
        try:
            return numba.njit(signatures, nogil=True, cache=True)(function)
        except RuntimeError as err:
            if "cannot cache" not in str(err):
                raise
            return numba.njit(signatures, nogil=True)(function)

    return compile_


# (H, W, 3) pixels in any layout: a writable contiguous array matches the first exactly (else it would match
# the next two equally well)
_ANY_PIXELS = (numba.uint8[:, :, ::1], _CONTIGUOUS_PIXELS, _PIXELS)


@_compiled([numba.void(layout, numba.uint8[:, :, ::1]) for layout in _ANY_PIXELS])
def transpose_rgb(src: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """out[b, a] = src[a, b] for (A, B, 3) pixels in any strides (a view of 4 bytes per pixel too): what
    turns the horizontal pass into a combination of whole rows, which the compiler vectorises."""
    for a in range(src.shape[0]):
        for b in range(src.shape[1]):
            out[b, a, 0] = src[a, b, 0]
            out[b, a, 1] = src[a, b, 1]
            out[b, a, 2] = src[a, b, 2]


@_compiled([numba.void(_ROWS, numba.int64, _BOUNDS, _WEIGHTS, numba.int32, numba.uint8[:, ::1])])
def combine_rows(
    src: np.ndarray, first: int, bounds: np.ndarray, weights: np.ndarray, bits: int, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Pillow's 8-bit resampling pass along the first axis of `src` (rows of pixels' bytes), its coefficients
    in units of 2**-bits: out[j] = clip8((2**(bits-1) + sum_k weights[j, k] * src[bounds[j, 0] - first + k])
    >> bits), k < bounds[j, 1].

    Integer arithmetic, as Pillow's: the result is exact whatever order the compiler sums the lanes in.
    """
    lanes = src.shape[1]
    acc = np.empty(lanes, np.int32)
    half = np.int32(1 << (bits - 1))
    for j in range(out.shape[0]):
        start = bounds[j, 0] - first
        acc[:] = half
        for k in range(bounds[j, 1]):
            weight = weights[j, k]
            row = src[start + k]
            for i in range(lanes):
                acc[i] += np.int32(row[i]) * weight
        row = out[j]
        for i in range(lanes):
            value = acc[i] >> bits
            row[i] = 0 if value < 0 else (255 if value > 255 else value)


_TABLE = numba.types.Array(numba.float32, 2, "C", readonly=True)


@_compiled([numba.void(layout, _TABLE, numba.float32[:, :, ::1]) for layout in _ANY_PIXELS])
def apply_table(src: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """out[c, y, x] = table[c, src[y, x, c]] for (H, W, 3) uint8 pixels and a (3, 256) table: the rescaled and
    normalised values in one pass (numpy's `take` needs a planar copy first and runs 4x slower here)."""
    for c in range(3):
        values = table[c]
        plane = out[c]
        for y in range(src.shape[0]):
            for x in range(src.shape[1]):
                plane[y, x] = values[src[y, x, c]]
