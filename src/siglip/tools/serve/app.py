"""The HTTP API of `siglip serve` (FastAPI), its dynamic batching, and the page at `/`.

    from siglip import Embedder
    from siglip.tools.serve import ServeSettings, create_app
    app = create_app(Embedder.from_pretrained("siglip-tiny-fashion"), index="photos.index")
    # uvicorn.run(app) -- or `siglip serve --model siglip-tiny-fashion --index photos.index`

Text and image embeddings go through two `Batcher`s, whose batches run one at a time on one model thread.
Images are checked (format from the bytes, pixel count from the header) and preprocessed in the request's
own worker thread, so an unreadable upload fails only its own request and decoding overlaps the model.
The search index lives on a thread of its own (its SQLite connection stays on the thread that opened it).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import os
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote

import numpy as np
import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ... import __version__
from ...errors import ImageInputError, InputNotFoundError
from ..embedder import Embedder
from ..index import SearchIndex, thumbnail_jpeg
from ..pipelines import ZeroShotImageClassificationPipeline
from ..zeroshot import DEFAULT_TEMPLATE
from .batcher import Batcher
from .errors import ApiError, install_error_handlers
from .inputs import Upload, check_image, parse_id, read_request
from .metrics import Guard, Metrics
from .settings import ServeSettings

API_KEY_COOKIE = "siglip_api_key"  # set by the page when the user types a key
MAX_TEXT_CHARS = 10_000
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
T = TypeVar("T")


# --- request and response bodies -------------------------------------------------------------------------
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextsRequest(_Params):
    texts: list[Text] = Field(min_length=1, description="texts to embed")


class EmbeddingsResponse(BaseModel):
    model: str
    dims: int
    embeddings: list[list[float]] = Field(description="one unit-length vector per input, in order")


class OpenAIEmbeddingsRequest(_Params):
    input: Text | list[Text] = Field(description="a text or a list of texts")
    model: str | None = Field(None, description="the served model's name (or its last path part), or nothing")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="must be the model's own size when given")
    user: str | None = None


class ClassifyParams(_Params):
    labels: list[Text] = Field(min_length=1, description="candidate labels")
    templates: list[Text] = Field(
        [DEFAULT_TEMPLATE], min_length=1, description="prompts with {} for the label"
    )


class SearchParams(_Params):
    text: Text | None = Field(None, description="search by this text")
    id: int | None = Field(None, description="search by this indexed image")
    k: int = Field(10, ge=1, description="number of results")


def _json_or_multipart(params: type[BaseModel], image_key: str, image_doc: str) -> dict[str, Any]:
    """OpenAPI text of a route that reads a JSON body (images as base64) or a multipart form."""
    json_schema = params.model_json_schema()
    json_schema.setdefault("properties", {})[image_key] = {"description": image_doc + " (base64)"}
    form_schema = params.model_json_schema()
    form_schema.setdefault("properties", {})["file"] = {"type": "string", "format": "binary"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema},
                "multipart/form-data": {"schema": form_schema},
            },
        }
    }


# --- the service behind the routes ----------------------------------------------------------------------
class Service:
    """The model, its batchers and threads, and the optional index."""

    def __init__(self, embedder: Embedder, index: str | os.PathLike | None, settings: ServeSettings) -> None:
        self.embedder = embedder
        self.settings = settings
        self.metrics = Metrics()
        self.classifier = ZeroShotImageClassificationPipeline(embedder)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="siglip-model")
        self.index_thread = ThreadPoolExecutor(1, thread_name_prefix="siglip-index")
        self.index: SearchIndex | None = None
        if index is not None:
            if not SearchIndex.exists(index):
                raise InputNotFoundError(
                    f"no index at '{index}': build one with `siglip index FOLDER --index {index}`"
                )
            self.index = self.index_thread.submit(SearchIndex, index, embedder).result()
        batching = {
            "max_batch_size": settings.max_batch_size,
            "max_wait_s": settings.max_wait_ms / 1000,
            "max_queue": settings.max_queue,
            "timeout_s": settings.timeout_s,
        }
        self.texts: Batcher[str, np.ndarray] = Batcher(
            self._embed_texts, self.model_thread, on_batch=self.metrics.batch_observer("text"), **batching
        )
        self.images: Batcher[np.ndarray, np.ndarray] = Batcher(
            self._embed_pixels, self.model_thread, on_batch=self.metrics.batch_observer("image"), **batching
        )
        self.metrics.watch_queue("text", lambda: self.texts.depth)
        self.metrics.watch_queue("image", lambda: self.images.depth)
        self._labels = lru_cache(maxsize=64)(self._label_embeddings)
        self.ready = False

    async def start(self) -> None:
        self.texts.start()
        self.images.start()
        self.ready = True

    async def stop(self) -> None:
        """Answer what is queued, then release the threads and the index."""
        self.ready = False
        await asyncio.gather(self.texts.stop(), self.images.stop())
        if self.index is not None:
            await self.on_index(self.index.close)
        self.model_thread.shutdown()
        self.index_thread.shutdown()

    # model calls (on the model thread, through the batchers)
    def _embed_texts(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.embedder.embed_texts(texts, batch_size=len(texts)))

    def _embed_pixels(self, images: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        inputs = {name: torch.from_numpy(np.stack([image[name] for image in images])) for name in images[0]}
        return list(self.embedder.embed_inputs(inputs))

    def _label_embeddings(self, labels: tuple[str, ...], templates: tuple[str, ...]) -> np.ndarray:
        return self.classifier.label_embeddings(labels, templates)

    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self._check_count(len(texts), "texts")
        return np.stack(await self.texts.submit(list(texts)))

    async def embed_images(self, uploads: Sequence[Upload]) -> np.ndarray:
        """Embeddings of uploaded images: checked and preprocessed here, then batched with other requests'."""
        if not uploads:
            raise ApiError(422, "no image: send one as a multipart 'file' part or as base64 JSON")
        self._check_count(len(uploads), "images")
        pixels = await asyncio.gather(*(run_in_threadpool(self._pixels, upload) for upload in uploads))
        return np.stack(await self.images.submit(list(pixels)))

    def _pixels(self, upload: Upload) -> dict[str, np.ndarray]:
        """The model inputs of one uploaded image, without the batch axis."""
        check_image(upload, self.settings.max_pixels)
        try:
            features = self.embedder.processor.image_processor(upload.data, return_tensors="np")
        except ImageInputError as err:  # it names the image "images[0] (bytes)"; the client's name is better
            raise ApiError(422, err.renamed(upload.name)) from None
        return {name: value[0] for name, value in features.items()}

    async def label_embeddings(self, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        return await self.on_model(self._labels, tuple(labels), tuple(templates))

    def _check_count(self, count: int, what: str) -> None:
        if count > self.settings.max_items:
            raise ApiError(
                413, f"{count} {what} in one request, more than the limit of {self.settings.max_items}"
            )

    async def on_model(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, function, *args)

    async def on_index(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.index_thread, function, *args)

    # the index
    def require_index(self) -> SearchIndex:
        if self.index is None:
            raise ApiError(404, "this server has no index: start it with `siglip serve --index DIR`")
        return self.index

    async def index_size(self) -> int | None:
        return None if self.index is None else await self.on_index(len, self.index)

    async def entry(self, image_id: str) -> tuple[int, str, np.ndarray]:
        """(id, path, embedding) of an indexed image by the id in a URL, or 404."""
        number = parse_id(image_id)
        found = await self.on_index(self.require_index().entry, number)
        if found is None:
            raise ApiError(404, f"no image with id {number} in the index")
        return number, *found


# --- the app --------------------------------------------------------------------------------------------
def create_app(
    embedder: Embedder, index: str | os.PathLike | None = None, settings: ServeSettings | None = None
) -> FastAPI:
    """The ASGI app serving `embedder` (and the search index in folder `index`, when given)."""
    settings = settings or ServeSettings()
    service = Service(embedder, index, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPIOffline(  # FastAPI whose /docs page ships its own Swagger UI files: no CDN
        title="siglip serve",
        summary="SigLIP embeddings, zero-shot classification and image search",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
        )
    app.add_middleware(Guard, metrics=service.metrics, max_body=settings.max_upload_bytes)

    def check_key(request: Request) -> None:
        """Every API route: the key as `Authorization: Bearer KEY`, `X-API-Key: KEY` or the page's cookie."""
        if settings.api_key is None:
            return
        bearer = request.headers.get("authorization", "")
        given = (
            bearer[7:]
            if bearer[:7].lower() == "bearer "
            else request.headers.get("x-api-key") or unquote(request.cookies.get(API_KEY_COOKIE, ""))
        )
        if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            reason = "a wrong API key" if given else "no API key"
            raise ApiError(
                401,
                f"{reason}: send the server's key as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                {"WWW-Authenticate": "Bearer"},
            )

    static = resources.files(__package__) / "static"

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(
            (static / "index.html").read_text(encoding="utf-8"), headers={"Content-Security-Policy": _CSP}
        )

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> JSONResponse:
        """The model is loaded and requests are taken (503 while starting or shutting down)."""
        if not service.ready:
            raise ApiError(503, "not ready: starting or shutting down", {"Retry-After": "1"})
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["operations"], dependencies=[Depends(check_key)])
    async def metrics() -> Response:
        """Prometheus metrics: requests, latency, batch sizes and times, queue depth."""
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    api = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    @api.get("/info", tags=["info"])
    async def info() -> dict[str, Any]:
        """The model, its embedding size, the index's size (null without an index) and the limits."""
        return {
            "model": embedder.name,
            "dims": embedder.dims,
            "precision": embedder.mode.precision,
            "index": None if service.index is None else {"size": await service.index_size()},
            "default_template": DEFAULT_TEMPLATE,
            "limits": {
                "max_items": settings.max_items,
                "max_upload_bytes": settings.max_upload_bytes,
                "max_pixels": settings.max_pixels,
                "max_k": settings.max_k,
            },
        }

    @api.post("/embed/text", tags=["embeddings"])
    async def embed_text(body: TextsRequest) -> EmbeddingsResponse:
        """Unit-length embeddings of texts, comparable with image embeddings by dot product."""
        vectors = await service.embed_texts(body.texts)
        return EmbeddingsResponse(model=embedder.name, dims=embedder.dims, embeddings=vectors.tolist())

    @api.post(
        "/embed/image",
        tags=["embeddings"],
        openapi_extra=_json_or_multipart(_Params, "images", "images: a list of base64 strings"),
    )
    async def embed_image(request: Request) -> EmbeddingsResponse:
        """Unit-length embeddings of images: multipart `file` parts, or JSON `{"images": [base64, ...]}`."""
        _, uploads = await read_request(request, _Params, "images", settings.max_items)
        vectors = await service.embed_images(uploads)
        return EmbeddingsResponse(model=embedder.name, dims=embedder.dims, embeddings=vectors.tolist())

    @api.post("/embeddings", tags=["embeddings"])
    async def openai_embeddings(body: OpenAIEmbeddingsRequest) -> dict[str, Any]:
        """Text embeddings in the shape of the OpenAI embeddings API."""
        if body.model not in (None, embedder.name, Path(embedder.name).name):
            raise ApiError(
                404, f"model '{body.model}' is not served here; this server serves '{embedder.name}'"
            )
        if body.dimensions not in (None, embedder.dims):
            raise ApiError(400, f"dimensions={body.dimensions}: this model's embeddings have {embedder.dims}")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise ApiError(422, "input: give at least one text")
        vectors = await service.embed_texts(texts)
        tokens = _token_count(embedder, texts)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(vector, body.encoding_format)}
                for i, vector in enumerate(vectors)
            ],
            "model": embedder.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @api.post(
        "/classify",
        tags=["classification"],
        openapi_extra=_json_or_multipart(ClassifyParams, "image", "image: the image"),
    )
    async def classify(request: Request) -> dict[str, Any]:
        """Zero-shot classification of one image: SigLIP's sigmoid probability per label, best first."""
        params, uploads = await read_request(request, ClassifyParams, "image", 1)
        if len(uploads) != 1:
            raise ApiError(422, f"classify takes exactly one image, got {len(uploads)}")
        classes, vectors = await asyncio.gather(
            service.label_embeddings(params.labels, params.templates), service.embed_images(uploads)
        )
        return {
            "model": embedder.name,
            "results": service.classifier.rank(vectors, classes, params.labels)[0],
        }

    @api.post(
        "/search",
        tags=["search"],
        openapi_extra=_json_or_multipart(SearchParams, "image", "image: search by this image"),
    )
    async def search(request: Request) -> dict[str, Any]:
        """The indexed images nearest a text, an uploaded image or an indexed image (by id), best first."""
        params, uploads = await read_request(request, SearchParams, "image", 1)
        index = service.require_index()
        given = [
            name
            for name, present in (
                ("text", params.text is not None),
                ("image", uploads),
                ("id", params.id is not None),
            )
            if present
        ]
        if len(given) != 1:
            raise ApiError(
                422, f"search by exactly one of text, image or id; got {', '.join(given) or 'none'}"
            )
        if params.k > settings.max_k:
            raise ApiError(422, f"k: at most {settings.max_k}, got {params.k}")
        if params.text is not None:
            query, vector = {"text": params.text}, (await service.embed_texts([params.text]))[0]
        elif uploads:
            query, vector = {"image": uploads[0].name}, (await service.embed_images(uploads))[0]
        else:
            image_id, _, vector = await service.entry(str(params.id))
            query = {"id": image_id}
        hits = (await service.on_index(index.search, vector, params.k))[0]
        return {
            "model": embedder.name,
            "query": query,
            "results": [
                {
                    "id": hit.id,
                    "score": hit.score,
                    "name": Path(hit.path).name,
                    "thumbnail_url": f"/v1/images/{hit.id}/thumbnail",
                    "image_url": f"/v1/images/{hit.id}",
                }
                for hit in hits
            ],
        }

    @api.get("/images/{image_id}/thumbnail", tags=["search"], response_class=Response)
    async def thumbnail(image_id: str) -> Response:
        """A JPEG thumbnail of an indexed image."""
        number, path, _ = await service.entry(image_id)
        jpeg = await run_in_threadpool(thumbnail_jpeg, path, settings.thumbnail_size)
        if jpeg is None:
            raise ApiError(404, f"image {number} is in the index but its file can no longer be read")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    @api.get("/images/{image_id}", tags=["search"], response_class=FileResponse)
    async def full_image(image_id: str) -> FileResponse:
        """The indexed image file itself, with its type judged from its bytes."""
        number, path, _ = await service.entry(image_id)
        media_type = await run_in_threadpool(_image_type, path)
        if media_type is None:
            raise ApiError(404, f"image {number} is in the index but its file can no longer be read")
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=300"})

    app.include_router(api)
    return app


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    """A vector as a JSON list, or as base64 of little-endian float32 (OpenAI's `encoding_format`)."""
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def _token_count(embedder: Embedder, texts: Sequence[str]) -> int:
    """Tokens the model read: each text's tokens, truncated to the model's text length."""
    length = embedder.model.config.text_config.max_position_embeddings
    ids = embedder.processor.tokenizer(list(texts), truncation=True, max_length=length)["input_ids"]
    return sum(len(row) for row in ids)


def _image_type(path: str) -> str | None:
    """The MIME type of an image file from its bytes, or None when it cannot be read."""
    try:
        with Image.open(path) as image:
            return Image.MIME.get(image.format or "", "application/octet-stream")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
