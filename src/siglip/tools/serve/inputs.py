"""Reading requests: images from multipart uploads or base64 JSON, checked from their bytes; ids; parameters."""

from __future__ import annotations

import base64
import binascii
import io
import json
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from .errors import ApiError, validation_message

# Formats an upload may be in, recognised from its bytes (Pillow's other readers, e.g. EPS, which runs
# Ghostscript, are never tried on client data).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
FILE_FIELD = "file"  # the multipart field of uploaded images

Params = TypeVar("Params", bound=BaseModel)


@dataclass
class Upload:
    """An image sent by a client: how to name it in a message, and its bytes."""

    name: str
    data: bytes


async def read_request(
    request: Request, params: type[Params], image_key: str, max_files: int
) -> tuple[Params, list[Upload]]:
    """The parameters and images of a JSON or multipart request.

    JSON: an object of `params` fields, with base64 images (or data: URLs) under `image_key` (one string or
    a list). Multipart: `params` fields as form fields (repeated for lists) and images as `file` parts.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            raw = json.loads(await request.body())
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(raw, dict):
            raise ApiError(400, "the request body must be a JSON object")
        images = raw.pop(image_key, None)
        images = [] if images is None else [images] if isinstance(images, str) else images
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise ApiError(422, f"{image_key}: must be a base64 string or a list of them")
        uploads = [
            Upload(f"{image_key}[{i}]", decode_base64(b64, f"{image_key}[{i}]"))
            for i, b64 in enumerate(images)
        ]
    elif kind == "multipart/form-data":
        form = await request.form(max_files=max_files, max_fields=100)
        uploads, raw = [], {}
        for key, value in form.multi_items():
            if key == FILE_FIELD:
                if not isinstance(value, UploadFile):
                    raise ApiError(422, f"form field '{FILE_FIELD}' must be a file upload")
                uploads.append(Upload(f"upload '{value.filename or FILE_FIELD}'", await value.read()))
            elif isinstance(value, str):
                multiple = _is_list(params, key)
                raw[key] = [*raw.get(key, []), value] if multiple else value
            else:
                raise ApiError(422, f"form field '{key}' must be text, not a file")
    else:
        raise ApiError(
            415, f"send the request as application/json or multipart/form-data, not '{kind or 'nothing'}'"
        )
    return validate(params, raw), uploads


def validate(params: type[Params], raw: dict[str, Any]) -> Params:
    """`raw` checked against `params`, or a 422 naming each wrong field."""
    try:
        return params.model_validate(raw)
    except ValidationError as err:
        raise ApiError(422, validation_message(list(err.errors()))) from None


def _is_list(params: type[BaseModel], key: str) -> bool:
    """Whether `key` is a list field of `params` (a multipart form repeats it)."""
    field = params.model_fields.get(key)
    return field is not None and typing.get_origin(field.annotation) is list


def decode_base64(text: str, name: str) -> bytes:
    """The bytes of a base64 string or a `data:...;base64,` URL."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{name} is not valid base64") from None


def check_image(upload: Upload, max_pixels: int) -> None:
    """Refuse an upload that is empty, not an image (judged by its bytes), or has more than `max_pixels`.

    Only the header is read: a decompression bomb is refused before a single pixel is decoded.
    """
    if not upload.data:
        raise ApiError(400, f"{upload.name} is empty")
    try:
        with Image.open(io.BytesIO(upload.data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
    except UnidentifiedImageError:
        raise ApiError(
            415,
            f"{upload.name} is not an image in a supported format ({', '.join(IMAGE_FORMATS)}); "
            "the content is what counts, not the file name",
        ) from None
    except Image.DecompressionBombError as err:
        raise ApiError(413, f"{upload.name} has too many pixels: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ApiError(422, f"{upload.name} cannot be read (truncated or corrupt?): {err}") from None
    if width * height > max_pixels:
        raise ApiError(
            413,
            f"{upload.name} is {width} x {height} = {width * height} pixels, more than the limit of "
            f"{max_pixels} (--max-pixels): refused as a possible decompression bomb",
        )


def parse_id(text: str) -> int:
    """An image id from a URL: decimal digits only, so a path or anything else is refused."""
    if not (text.isascii() and text.isdecimal()) or len(text) > 18:
        raise ApiError(400, f"image id {text!r} is not valid: ids are whole numbers, as search results give")
    return int(text)
