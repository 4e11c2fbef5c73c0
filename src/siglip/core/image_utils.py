"""transformers' `load_image`: one PIL image from a path, an http(s) URL, a base64 string or a PIL image.

    from siglip.image_utils import load_image
    image = load_image("http://images.cocodataset.org/val2017/000000039769.jpg", timeout=10)

As in transformers, the image comes back upright (its EXIF orientation applied) and in RGB, and a string that
is neither an existing file nor a URL is read as base64 (a `data:image/...;base64,` URI included). An image that
cannot be fetched or decoded raises `ImageInputError` (a `ValueError`, as transformers raises) in one line.

HEIC/HEIF photos decode when the `heif` extra (pillow-heif) is installed: `register_heif` teaches Pillow the
format once per process, on the first decode (here and in `open_image`); without it such a file is refused with
a line naming the extra (`heif_missing`). AVIF needs no extra: Pillow decodes it natively.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageInputError

__all__ = ["load_image", "load_images"]

HEIF_EXTRA = "pip install 'siglip[heif]'"
# ISO base-media brands of HEIF still images and sequences (ISO/IEC 23008-12); AVIF's own brands are Pillow's
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_heif_registered: bool | None = None  # None: not tried yet in this process

_SOURCES = (
    "Incorrect image source. Must be a valid URL starting with `http://` or `https://`, a valid path to an "
    "image file, or a base64 encoded string."
)


def load_image(image: str | Image.Image, timeout: float | None = None) -> Image.Image:
    """`image` as an upright RGB PIL image; `timeout` (seconds) bounds the request of a URL."""
    if isinstance(image, str):
        if image.startswith(("http://", "https://")):
            image = _open(_download(image, timeout), image)
        elif os.path.isfile(image):
            image = _open(image, image)
        else:
            encoded = image.split(",", 1)[1] if image.startswith("data:image/") else image
            try:
                data = base64.decodebytes(encoded.encode())
            except (binascii.Error, ValueError) as err:
                raise ImageInputError(f"{_SOURCES} Got {image[:80]!r}. Failed with {err}") from None
            image = _open(io.BytesIO(data), "the base64 string")
    elif not isinstance(image, Image.Image):
        raise TypeError(
            "Incorrect format used for image. Should be an url linking to an image, a base64 string, a local "
            "path, or a PIL image."
        )
    return ImageOps.exif_transpose(image).convert("RGB")


def load_images(images: Any, timeout: float | None = None) -> Any:
    """`load_image` over an image, a list of images or a list of lists of images (transformers' nesting)."""
    if isinstance(images, Sequence) and not isinstance(images, str):
        if len(images) and isinstance(images[0], Sequence) and not isinstance(images[0], str):
            return [[load_image(image, timeout) for image in group] for group in images]
        return [load_image(image, timeout) for image in images]
    return load_image(images, timeout)


def register_heif() -> bool:
    """Register pillow-heif's HEIC/HEIF opener with Pillow, once per process (a DataLoader worker included);
    False when the `heif` extra is not installed. Lazy, so that a collection without HEIC never imports it."""
    global _heif_registered
    if _heif_registered is None:
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            _heif_registered = False
        else:
            register_heif_opener()
            _heif_registered = True
    return _heif_registered


def heif_missing(source: str | os.PathLike | io.BytesIO, name: str) -> str | None:
    """The one-line reason Pillow cannot read `source` when it is a HEIF file and pillow-heif is missing
    (judged from its bytes, not its name); None otherwise."""
    if register_heif():
        return None
    try:
        if isinstance(source, io.BytesIO):
            head = source.getbuffer()[:12].tobytes()
        else:
            with open(source, "rb") as f:
                head = f.read(12)
    except OSError:
        return None
    if head[4:8] != b"ftyp" or head[8:12] not in _HEIF_BRANDS:
        return None
    return f"{name} is a HEIC/HEIF image, which needs the heif extra: {HEIF_EXTRA}"


def _download(url: str, timeout: float | None) -> io.BytesIO:
    """The body of `url` (redirects followed); a failed request or an HTTP error status is an ImageInputError."""
    request = urllib.request.Request(url, headers={"User-Agent": "siglip"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return io.BytesIO(response.read())
    except (
        urllib.error.URLError,
        OSError,
        ValueError,
    ) as err:  # HTTPError is a URLError; timeouts are OSError
        raise ImageInputError(f"cannot fetch image {url}: {getattr(err, 'reason', err)}") from None


def _open(source: str | io.BytesIO, name: str) -> Image.Image:
    register_heif()
    try:
        image = Image.open(source)
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        missing = heif_missing(source, name) if isinstance(err, UnidentifiedImageError) else None
        raise ImageInputError(missing or f"{name} is not a readable image: {err}") from None
    return image
