"""Search of the index by text, image or indexed image, and the indexed images and their thumbnails."""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response
from PIL import Image
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from ....core.image_utils import register_heif
from ....errors import UsageError
from ...inputs.media import media_fragment, split_address
from ...search.filters import as_filter
from ...search.thumbnails import thumbnail_jpeg
from ..errors import ApiError
from ..inputs import openapi_body, read_request
from ..service import Service, check_key, service
from .params import Params, Text

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[Depends(check_key)])
Served = Annotated[Service, Depends(service)]


class SearchParams(Params):
    text: Text | None = Field(None, description="search by this text")
    id: int | None = Field(None, description="search by this indexed image")
    k: int = Field(10, ge=1, description="number of results")
    where: str | None = Field(
        None, description="a metadata filter, e.g. \"year >= 2023 and orientation = 'landscape'\""
    )


@router.post("/search", openapi_extra=openapi_body(SearchParams, "image", "image: search by this image"))
async def search(served: Served, request: Request) -> dict[str, Any]:
    """The indexed images nearest a text, an uploaded image or an indexed image (by id), best first."""
    params, uploads = await read_request(request, SearchParams, "image", 1)
    index = served.require_index()
    present = {"text": params.text is not None, "image": bool(uploads), "id": params.id is not None}
    given = [name for name, there in present.items() if there]
    if len(given) != 1:
        raise ApiError(422, f"search by exactly one of text, image or id; got {', '.join(given) or 'none'}")
    if params.k > served.settings.max_k:
        raise ApiError(422, f"k: at most {served.settings.max_k}, got {params.k}")
    try:  # before any embedding; the index's own refusal (rows without metadata) comes from the search
        where = as_filter(params.where)
    except UsageError as err:
        raise ApiError(422, f"where: {err}") from err
    if params.text is not None:
        query, vector = {"text": params.text}, (await served.embed_texts([params.text]))[0]
    elif uploads:
        query, vector = {"image": uploads[0].name}, (await served.embed_images(uploads))[0]
    else:
        image_id, _, vector = await served.entry(str(params.id))
        query = {"id": image_id}
    try:
        hits = (await served.on_index(index.search, vector, params.k, where))[0]
    except UsageError as err:
        raise ApiError(422, f"where: {err}") from err
    return {
        "model": served.embedder.name,
        "query": query,
        "results": [
            {
                "id": hit.id,
                "score": hit.score,
                "name": Path(hit.path).name,
                "thumbnail_url": f"/v1/images/{hit.id}/thumbnail",
                "image_url": f"/v1/images/{hit.id}{media_fragment(hit.path)}",  # a frame: its video there
                "time": split_address(hit.path)[1],  # a video frame's time in seconds, None for an image
                "metadata": hit.metadata,
            }
            for hit in hits
        ],
    }


@router.get("/images/{image_id}/thumbnail", response_class=Response)
async def thumbnail(served: Served, image_id: str) -> Response:
    """A JPEG thumbnail of an indexed image."""
    number, path, _ = await served.entry(image_id)
    jpeg = await run_in_threadpool(thumbnail_jpeg, path, served.settings.thumbnail_size)
    if jpeg is None:
        raise ApiError(404, f"image {number} is in the index but its file can no longer be read")
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})


@router.get("/images/{image_id}", response_class=FileResponse)
async def full_image(served: Served, image_id: str) -> FileResponse:
    """The indexed image file itself, with its type judged from its bytes; for a video frame, its video."""
    number, path, _ = await served.entry(image_id)
    path, seconds = split_address(path)
    media_type = await run_in_threadpool(_image_type if seconds is None else _video_type, path)
    if media_type is None:
        raise ApiError(404, f"image {number} is in the index but its file can no longer be read")
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=300"})


def _video_type(path: str) -> str | None:
    """The MIME type of a video file from its name, or None when it is no longer a file."""
    return (mimetypes.guess_type(path)[0] or "application/octet-stream") if os.path.isfile(path) else None


def _image_type(path: str) -> str | None:
    """The MIME type of an image file from its bytes, or None when it cannot be read."""
    register_heif()
    try:
        with Image.open(path) as image:
            return Image.MIME.get(image.format or "", "application/octet-stream")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
