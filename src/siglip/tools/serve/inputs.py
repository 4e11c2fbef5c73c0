"""Reading requests: JSON bodies, images from multipart uploads or base64 JSON, ids, parameters.

Every route reads its body here, so every route answers the same way to the same mistake: a body in another
content type is a 415 naming it, JSON that does not parse (or nests too deeply to parse) a 400, parameters
that do not fit a 422 naming each field.
"""

from __future__ import annotations

import base64
import binascii
import json
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from .errors import ApiError, validation_message

FILE_FIELD = "file"  # the multipart field of uploaded images
JSON = "application/json"
MULTIPART = "multipart/form-data"

Params = TypeVar("Params", bound=BaseModel)


@dataclass
class Upload:
    """An image sent by a client: how to name it in a message, and its bytes."""

    name: str
    data: bytes


def content_type(request: Request) -> str:
    """The media type of the request body, without its parameters (`charset`, `boundary`)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _refuse_content_type(kind: str, accepted: tuple[str, ...]) -> ApiError:
    return ApiError(415, f"send the request body as {' or '.join(accepted)}, not '{kind or 'nothing'}'")


async def read_json(request: Request) -> dict[str, Any]:
    """The JSON object of a request's body, or a 415 (another content type) or 400 (not a JSON object)."""
    kind = content_type(request)
    if kind != JSON:
        raise _refuse_content_type(kind, (JSON,))
    try:
        raw = json.loads(await request.body())
    except RecursionError:
        raise ApiError(400, "the request body nests JSON arrays or objects too deeply") from None
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(raw, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return raw


def json_params(params: type[Params]) -> Callable[[Request], Awaitable[Params]]:
    """A route dependency: the request's JSON body checked against `params`."""

    async def read(request: Request) -> Params:
        return validate(params, await read_json(request))

    return read


async def read_request(
    request: Request, params: type[Params], image_key: str, max_files: int
) -> tuple[Params, list[Upload]]:
    """The parameters and images of a JSON or multipart request.

    JSON: an object of `params` fields, with base64 images (or data: URLs) under `image_key` (one string or
    a list). Multipart: `params` fields as form fields (repeated for lists) and images as `file` parts.
    """
    kind = content_type(request)
    if kind == JSON:
        raw = await read_json(request)
        images = raw.pop(image_key, None)
        images = [] if images is None else [images] if isinstance(images, str) else images
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise ApiError(422, f"{image_key}: must be a base64 string or a list of them")
        uploads = [
            Upload(f"{image_key}[{i}]", decode_base64(b64, f"{image_key}[{i}]"))
            for i, b64 in enumerate(images)
        ]
    elif kind == MULTIPART:
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
        raise _refuse_content_type(kind, (JSON, MULTIPART))
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
    """The bytes of a base64 string or a `data:...;base64,` URL; line breaks and spaces (as the `base64`
    command and MIME wrap it) are ignored, any other character outside the alphabet is refused."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{name} is not valid base64") from None


def parse_id(text: str) -> int:
    """An image id from a URL: decimal digits only, so a path or anything else is refused."""
    if not (text.isascii() and text.isdecimal()) or len(text) > 18:
        raise ApiError(400, f"image id {text!r} is not valid: ids are whole numbers, as search results give")
    return int(text)


def openapi_body(
    params: type[BaseModel], image_key: str | None = None, image_doc: str = ""
) -> dict[str, Any]:
    """OpenAPI text of a route's body: JSON of `params`, and with `image_key` also a multipart form (images
    as base64 under `image_key` in JSON, as `file` parts in the form)."""
    json_schema = params.model_json_schema()
    content: dict[str, Any] = {JSON: {"schema": json_schema}}
    if image_key is not None:
        json_schema.setdefault("properties", {})[image_key] = {"description": image_doc + " (base64)"}
        form_schema = params.model_json_schema()
        form_schema.setdefault("properties", {})[FILE_FIELD] = {"type": "string", "format": "binary"}
        content[MULTIPART] = {"schema": form_schema}
    return {"requestBody": {"required": True, "content": content}}
