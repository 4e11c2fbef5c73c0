"""Embeddings: of texts, of images, and of texts in the shape of the OpenAI embeddings API.

The three routes are also served by `DIRECT_ROUTES`, plain Starlette routes placed before every FastAPI route
(`app.create_app`): same key check, same body reading and the same route functions, without FastAPI's route
matching through the included routers, its dependency solving and its response model. They take a quarter of
the event loop's time per text request with them, and these are the routes a small model answers faster than
the request path (BENCHMARKS.md, "Where the server's CPU goes"); the FastAPI routes stay registered for the
OpenAPI docs.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from pydantic_core import to_json
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from ...embeddings.embedder import Embedder
from ..errors import ApiError
from ..inputs import json_params, openapi_body, read_request
from ..service import Service, check_key, service
from .params import Params, Text

router = APIRouter(prefix="/v1", tags=["embeddings"], dependencies=[Depends(check_key)])
Served = Annotated[Service, Depends(service)]


class TextsRequest(Params):
    texts: list[Text] = Field(min_length=1, description="texts to embed")


class EmbeddingsResponse(BaseModel):
    model: str
    dims: int
    embeddings: list[list[float]] = Field(description="one unit-length vector per input, in order")


class OpenAIEmbeddingsRequest(Params):
    input: Text | list[Text] = Field(description="a text or a list of texts")
    model: str | None = Field(None, description="the served model's name (or its last path part), or nothing")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="must be the model's own size when given")
    user: str | None = None


@router.post("/embed/text", openapi_extra=openapi_body(TextsRequest))
async def embed_text(
    served: Served, body: Annotated[TextsRequest, Depends(json_params(TextsRequest))]
) -> EmbeddingsResponse:
    """Unit-length embeddings of texts, comparable with image embeddings by dot product."""
    vectors = await served.embed_texts(body.texts)
    return _response(served.embedder, vectors)


@router.post("/embed/image", openapi_extra=openapi_body(Params, "images", "images: a list of base64 strings"))
async def embed_image(served: Served, request: Request) -> EmbeddingsResponse:
    """Unit-length embeddings of images: multipart `file` parts, or JSON `{"images": [base64, ...]}`."""
    _, uploads = await read_request(request, Params, "images", served.settings.max_items)
    vectors = await served.embed_images(uploads)
    return _response(served.embedder, vectors)


@router.post("/embeddings", openapi_extra=openapi_body(OpenAIEmbeddingsRequest))
async def openai_embeddings(
    served: Served, body: Annotated[OpenAIEmbeddingsRequest, Depends(json_params(OpenAIEmbeddingsRequest))]
) -> dict[str, Any]:
    """Text embeddings in the shape of the OpenAI embeddings API."""
    embedder = served.embedder
    if body.model not in (None, embedder.name, Path(embedder.name).name):
        raise ApiError(404, f"model '{body.model}' is not served here; this server serves '{embedder.name}'")
    if body.dimensions not in (None, embedder.dims):
        raise ApiError(400, f"dimensions={body.dimensions}: this model's embeddings have {embedder.dims}")
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise ApiError(422, "input: give at least one text")
    vectors, tokens = await served.embed_texts_counted(texts)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode(vector, body.encoding_format)}
            for i, vector in enumerate(vectors)
        ],
        "model": embedder.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _response(embedder: Embedder, vectors: np.ndarray) -> EmbeddingsResponse:
    return EmbeddingsResponse(model=embedder.name, dims=embedder.dims, embeddings=vectors.tolist())


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    """A vector as a JSON list, or as base64 of little-endian float32 (OpenAI's `encoding_format`)."""
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


class _JSONBytes(Response):
    media_type = "application/json"


class _DirectRoute(Route):
    """A Starlette route that names itself in the scope as FastAPI's do (the metrics label requests by it)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match != Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def _direct(
    path: str, route: Callable[[Service, Any], Awaitable[Any]], params: type[Params] | None = None
) -> Route:
    """A direct route answering POST `path` as the FastAPI `route` does: the key check, the body read as
    `params` (or the request itself for a route that reads it), the route function, its answer in pydantic's
    JSON encoding (FastAPI's)."""

    async def endpoint(request: Request) -> Response:
        await check_key(request)
        body = request if params is None else await json_params(params)(request)
        return _JSONBytes(to_json(await route(request.app.state.service, body)))

    return _DirectRoute(path, endpoint, methods=["POST"])


DIRECT_ROUTES = [
    _direct("/v1/embed/text", embed_text, TextsRequest),
    _direct("/v1/embeddings", openai_embeddings, OpenAIEmbeddingsRequest),
    _direct("/v1/embed/image", embed_image),
]
