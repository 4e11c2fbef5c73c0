"""JPEG files decoded straight to pixels by libjpeg-turbo (through simplejpeg), without Pillow's decoder.

Pillow decodes JPEGs with the same library and the same settings (the accurate integer IDCT, fancy chroma
upsampling), but through a Python loop over the file's chunks and its own pixel unpacking: from files, a
640x480 photo's preprocessing ran 1.2-1.3x faster with this decoder (BENCHMARKS.md, "Preprocessing"). The
pixels are Pillow's, bit for bit, where Pillow's own JPEG library is libjpeg-turbo (`tests/test_jpeg.py`:
baseline and progressive files, 4:4:4, 4:2:2, 4:2:0, 4:4:0 and 4:1:1 chroma, grey, odd sizes, restart markers,
MPO photos, every EXIF orientation). Pillow keeps decoding everything else: other libraries (IJG libjpeg 9
upsamples chroma otherwise), CMYK files, reduced (draft) decoding, and every JPEG when simplejpeg is not
installed. A file libjpeg-turbo warns about (corrupt or truncated data) is decoded again by Pillow, whose
rules then decide (it fails, or decodes what it can under `ImageFile.LOAD_TRUNCATED_IMAGES`), as before.

The file is mapped rather than read (a JPEG followed by a phone's motion-photo video, or by anything else,
costs what its JPEG costs).
"""

from __future__ import annotations

import io
import mmap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import IO

import numpy as np
import torch
from PIL import ExifTags, Image, features

# EXIF orientation -> the same transposition as `ImageOps.exif_transpose`, on (H, W, C) arrays
_ORIENTED = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda a: np.rot90(a, -1),  # ROTATE_270 (counter-clockwise)
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # TRANSVERSE
    8: lambda a: np.rot90(a, 1),  # ROTATE_90
}


@cache
def _decoder() -> Callable[..., np.ndarray] | None:
    """simplejpeg's `decode_jpeg` where it gives Pillow's pixels: installed, and Pillow built on libjpeg-turbo."""
    if not features.check_feature("libjpeg_turbo"):
        return None
    try:
        from simplejpeg import decode_jpeg
    except ImportError:
        return None
    return decode_jpeg


def decode(image: Image.Image, exif_transpose: bool, padded: bool = True) -> torch.Tensor | None:
    """(3, H, W) uint8 pixels of `image` (opened by Pillow, neither loaded nor drafted) as Pillow would decode
    and convert them to RGB, or None where Pillow must decode it (see the module). The tensor is a view of
    (H, W, 4) pixels with `padded`, laid out as `torch_resize.from_pil`'s, which `torch_resize.resize` reads
    in place; else of (H, W, 3) pixels, which the PIL backend's resize transposes faster (`pil_resize`).
    `exif_transpose`: turn the pixels as the file's EXIF orientation says (`ImageOps.exif_transpose`)."""
    decode_jpeg = _decoder()
    if decode_jpeg is None or image.format not in ("JPEG", "MPO") or image.mode not in ("RGB", "L"):
        return None
    try:
        with _contents(image.fp) as data:  # a JPEG's (or MPO's first) image starts at the file's first byte
            pixels = decode_jpeg(data, colorspace="RGBX" if padded else "RGB")
    except ValueError:  # anything libjpeg-turbo warns about: Pillow's decoder decides
        return None
    if pixels.shape[:2] != (image.height, image.width):
        return None
    if exif_transpose:
        turn = _ORIENTED.get(image.getexif().get(ExifTags.Base.Orientation, 1))
        if turn is not None:
            pixels = np.ascontiguousarray(turn(pixels))
    return torch.from_numpy(pixels).permute(2, 0, 1)[:3]


@contextmanager
def _contents(fp: IO[bytes]) -> Iterator[memoryview | mmap.mmap | bytes]:
    """The whole of the file `fp` without copying it: a view of an in-memory file, a map of one on disk (a
    file that cannot be mapped, e.g. on some network file systems, is read)."""
    if isinstance(fp, io.BytesIO):
        with fp.getbuffer() as view:
            yield view
        return
    try:
        mapped = mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        mapped = None
    if mapped is None:
        fp.seek(0)
        yield fp.read()
        return
    with mapped:
        yield mapped
