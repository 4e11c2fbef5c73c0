"""The state every route shares: the model, its batchers and threads, the optional index, the settings.

The routes reach it through the `service` dependency, and the API key through `check_key`.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import unquote

import numpy as np
import torch
from fastapi import Request

from ...core.cpu import usable_cores
from ...core.two_tower.processing import fixed_length_inputs_counted
from ...errors import InputNotFoundError
from ..embeddings.embedder import Embedder
from ..pipelines import ZeroShotImageClassificationPipeline
from ..search.index import SearchIndex
from .batcher import Batcher
from .errors import ApiError
from .images import model_inputs
from .inputs import Upload, parse_id
from .metrics import Metrics
from .settings import ServeSettings

API_KEY_COOKIE = "siglip_api_key"  # set by the page when the user types a key
T = TypeVar("T")


class Service:
    """The model, its batchers and threads, and the optional index."""

    def __init__(self, embedder: Embedder, index: str | os.PathLike | None, settings: ServeSettings) -> None:
        self.embedder = embedder
        self.settings = settings
        self.metrics = Metrics()
        self.classifier = ZeroShotImageClassificationPipeline(embedder)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="siglip-model")
        self.index_thread = ThreadPoolExecutor(1, thread_name_prefix="siglip-index")
        # decoding: one request's images on one thread, at most this many requests' at a time (memory)
        self.decode_threads = ThreadPoolExecutor(min(4, usable_cores()), thread_name_prefix="siglip-decode")
        self.index: SearchIndex | None = None
        if index is not None:
            if not SearchIndex.exists(index):
                raise InputNotFoundError(
                    f"no index at '{index}': build one with `siglip index FOLDER --index {index}`"
                )
            self.index = self.index_thread.submit(SearchIndex, index, embedder).result()
        batching = {
            "max_batch_size": settings.max_batch_size,
            "max_wait_s": None if settings.max_wait_ms is None else settings.max_wait_ms / 1000,
            "max_queue": settings.max_queue,
            "timeout_s": settings.timeout_s,
        }
        self.texts: Batcher[str, tuple[np.ndarray, int]] = Batcher(
            self._embed_texts, self.model_thread, on_batch=self.metrics.batch_observer("text"), **batching
        )
        self.images: Batcher[np.ndarray, np.ndarray] = Batcher(
            self._embed_pixels, self.model_thread, on_batch=self.metrics.batch_observer("image"), **batching
        )
        self.metrics.watch_queue("text", lambda: self.texts.depth)
        self.metrics.watch_queue("image", lambda: self.images.depth)
        self._labels = lru_cache(maxsize=64)(self.classifier.label_embeddings)
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
        for pool in (self.model_thread, self.index_thread, self.decode_threads):
            pool.shutdown()

    # model calls (on the model thread, through the batchers)
    def _embed_texts(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        """Each text's embedding and its token count, from one tokenization (the count is the `usage`)."""
        embedder = self.embedder
        inputs, counts = fixed_length_inputs_counted(
            embedder.processor.tokenizer, texts, embedder.model.config.text_config
        )
        return list(zip(embedder.embed_token_ids(inputs["input_ids"]), counts, strict=True))

    def _embed_pixels(self, images: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        inputs = {name: torch.from_numpy(np.stack([image[name] for image in images])) for name in images[0]}
        return list(self.embedder.embed_inputs(inputs))

    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of texts, batched with other requests' texts."""
        return (await self.embed_texts_counted(texts))[0]

    async def embed_texts_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """Embeddings of texts, batched with other requests' texts, and the tokens the model read of them."""
        self._check_count(len(texts), "texts")
        results = await self.texts.submit(list(texts))
        return np.stack([vector for vector, _ in results]), sum(count for _, count in results)

    async def embed_images(self, uploads: Sequence[Upload]) -> np.ndarray:
        """Embeddings of uploaded images: decoded within the request's pixel budget on a decoding thread,
        then batched with other requests' images."""
        if not uploads:
            raise ApiError(422, "no image: send one as a multipart 'file' part or as base64 JSON")
        self._check_count(len(uploads), "images")
        pixels = await asyncio.get_running_loop().run_in_executor(
            self.decode_threads,
            model_inputs,
            uploads,
            self.embedder.processor.image_processor,
            self.settings.max_image_pixels,
            self.settings.max_request_pixels,
        )
        return np.stack(await self.images.submit(pixels))

    async def label_embeddings(self, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """Class embeddings of `labels` (each label's prompts, averaged), at most `max_prompts` prompts."""
        prompts = len(labels) * len(templates)
        if prompts > self.settings.max_prompts:
            raise ApiError(
                413,
                f"{len(labels)} labels x {len(templates)} templates = {prompts} prompts, more than the limit of "
                f"{self.settings.max_prompts} per request",
            )
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

    def limits(self) -> dict[str, Any]:
        """What one request may ask for (shown by `/v1/info`)."""
        settings = self.settings
        return {
            "max_items": settings.max_items,
            "max_prompts": settings.max_prompts,
            "max_upload_bytes": settings.max_upload_bytes,
            "max_image_pixels": settings.max_image_pixels,
            "max_request_pixels": settings.max_request_pixels,
            "max_k": settings.max_k,
            "header_timeout_s": settings.header_timeout_s,
            "body_timeout_s": settings.body_timeout_s,
            "timeout_s": settings.timeout_s,
        }


# --- the dependencies of the routes -----------------------------------------------------------------------
# Both are `async def` though they never wait: FastAPI runs a plain `def` dependency on its worker-thread pool,
# a thread hop per request for a dictionary look-up and a constant-time compare (measured in BENCHMARKS.md).
async def service(request: Request) -> Service:
    """The app's `Service`."""
    return request.app.state.service


async def check_key(request: Request) -> None:
    """Every API route: the key as `Authorization: Bearer KEY`, `X-API-Key: KEY` or the page's cookie."""
    expected = request.app.state.service.settings.api_key
    if expected is None:
        return
    bearer = request.headers.get("authorization", "")
    given = (
        bearer[7:]
        if bearer[:7].lower() == "bearer "
        else request.headers.get("x-api-key") or unquote(request.cookies.get(API_KEY_COOKIE, ""))
    )
    if not hmac.compare_digest(given.encode(), expected.encode()):
        reason = "a wrong API key" if given else "no API key"
        raise ApiError(
            401,
            f"{reason}: send the server's key as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
            {"WWW-Authenticate": "Bearer"},
        )
