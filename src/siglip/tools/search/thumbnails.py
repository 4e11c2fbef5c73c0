"""Small upright JPEG copies of indexed images, for the results page and `siglip serve`."""

from __future__ import annotations

import io

from ...core.image_utils import register_heif
from ...core.two_tower.image_processing import pil_to_rgb
from ...errors import ImageInputError
from ..inputs.media import split_address
from ..inputs.video import VideoError, read_frame

THUMBNAIL_SIZE = 256


def thumbnail_jpeg(path: str, size: int = THUMBNAIL_SIZE) -> bytes | None:
    """A JPEG of an upright copy of the image at most `size` pixels a side, or None when it cannot be read.
    `path` is a row's address: a video frame's (`<video>#t=<seconds>`) gives that frame."""
    from PIL import Image, ImageOps

    register_heif()
    video, seconds = split_address(path)
    try:
        if seconds is None:
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image)  # a copy, loaded
        else:
            image = read_frame(video, seconds)
        image.thumbnail((size, size))
        rgb, _ = pil_to_rgb(image, path)  # as the model sees it: 16-bit grey scaled, not clipped to white
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=80)
    except (OSError, ValueError, Image.DecompressionBombError, ImageInputError, VideoError, ImportError):
        return None  # ImportError: a frame, without the video extra
    return buffer.getvalue()
