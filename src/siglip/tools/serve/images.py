"""Uploaded images to model inputs, at a bounded cost per request.

Decoding and the pixel limit have one owner, the core's image processing (`open_image`, `pil_to_rgb`): an upload
is decoded exactly as `embed_images` decodes bytes, and an image with more pixels than the limit is refused
from its header, before a pixel is decoded. The server adds two rules of its own:

- the formats a client may send (recognised by Pillow from the bytes, never from a name): Pillow's other
  readers (e.g. EPS, which runs Ghostscript) are never tried on a client's bytes;
- a pixel budget per request: its images are decoded one after another, each with the limit
  `min(max_image_pixels, pixels left)`, so many small files of huge dimensions are refused before the one
  that would pass the budget is decoded, and a request holds at most one decoded image at a time.

After a request whose images had `TRIM_PIXELS` or more, the memory they took is handed back to the system
(`release_memory`): glibc keeps freed blocks of this size in its heap, which is how one request used to leave
gigabytes resident. Smaller images' blocks are reused by the next ones; trimming the heap after each of them
took a tenth of a decoding thread's time at 224x224.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
from collections.abc import Callable, Sequence
from functools import cache

import numpy as np
import torch
from PIL import Image

from ...core.two_tower.image_processing import Steps, open_image, pil_to_rgb
from ...errors import ImageInputError
from .errors import ApiError
from .inputs import Upload

TRIM_PIXELS = 1_000_000  # decoded pixels of one request from which its memory is handed back (3 MB of RGB)

CLIENT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # what a client may send


def check_format(upload: Upload) -> None:
    """Refuse an empty upload, or one whose bytes are not in `CLIENT_FORMATS` (by Pillow's own signatures)."""
    if not upload.data:
        raise ApiError(400, f"{upload.name} is empty")
    Image.init()
    accepts = [Image.OPEN[name][1] for name in CLIENT_FORMATS if name in Image.OPEN]
    if not any(accept is not None and accept(upload.data[:16]) for accept in accepts):
        raise ApiError(
            415,
            f"{upload.name} is not an image in a supported format ({', '.join(CLIENT_FORMATS)}); "
            "the content is what counts, not the file name",
        )


def _decoding(image_processor: object, limit: int) -> Steps:
    """The core's decoding settings of `image_processor` (EXIF, reduced JPEG decoding, its image backend) with
    pixel limit `limit`."""
    reduced = bool(getattr(image_processor, "reduced_decode", False))
    size = getattr(image_processor, "size", None)
    return Steps(
        size=(size["height"], size["width"]) if reduced and size else None,
        resample=Image.Resampling.BICUBIC,  # the rest is preprocessing, which the processor itself does
        do_rescale=False,
        rescale_factor=1.0,
        do_normalize=False,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        exif_transpose=getattr(image_processor, "exif_transpose", None),
        input_data_format=None,
        reduced_decode=reduced,
        max_image_pixels=limit,
        backend=getattr(image_processor, "_backend", "pil"),
    )


def model_inputs(
    uploads: Sequence[Upload],
    image_processor: Callable[..., dict],
    max_image_pixels: int,
    max_request_pixels: int,
) -> list[dict[str, np.ndarray]]:
    """The model inputs of each upload (without the batch axis), decoded one after another within the budget.

    Raises `ApiError` (415 format, 413 budget) or the core's `ImageInputError` naming the upload.
    """
    for upload in uploads:  # every format first: a request with a non-image decodes nothing
        check_format(upload)
    left, results = max_request_pixels, []
    try:
        for upload in uploads:
            limit = min(max_image_pixels, left)
            try:
                image = open_image(io.BytesIO(upload.data), upload.name, _decoding(image_processor, limit))
            except ImageInputError as err:
                over = f"more than the limit of {limit}:"
                if limit < max_image_pixels and over in str(err):  # the budget's limit, not the image's
                    raise ApiError(
                        413,
                        f"{str(err).partition(over)[0]}more than the {limit} left of the {max_request_pixels} "
                        "pixels the images of one request may have (--max-request-pixels): refused before "
                        "decoding it",
                    ) from None
                raise
            # a JPEG's (3, H, W) RGB pixels (decoded by libjpeg-turbo, `open_image`), or a PIL image
            if isinstance(image, torch.Tensor):
                left -= image.shape[1] * image.shape[2]
                pixels, layout = image, "channels_first"
            else:
                left -= image.width * image.height
                pixels, layout = pil_to_rgb(image, upload.name)[0], None
            del image
            features = image_processor(pixels, input_data_format=layout, return_tensors="np")
            del pixels
            results.append({name: value[0] for name, value in features.items()})
    finally:
        if max_request_pixels - left >= TRIM_PIXELS:
            release_memory()
    return results


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none (macOS, Windows, musl)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Give the heap's free memory back to the system (no-op without glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
