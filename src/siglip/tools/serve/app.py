"""The HTTP API of `siglip serve` (FastAPI), its dynamic batching, and the page at `/`.

    from siglip import Embedder
    from siglip.tools.serve import ServeSettings, create_app
    app = create_app(Embedder.from_pretrained("siglip-tiny-fashion"), index="photos.index")
    # uvicorn.run(app) -- or `siglip serve --model siglip-tiny-fashion --index photos.index`

Text and image embeddings go through two `Batcher`s, whose batches run one at a time on one model thread.
A request's images are decoded (by the core, within the request's pixel budget) and preprocessed on a
decoding thread, so an unreadable upload fails only its own request and decoding overlaps the model.
The search index lives on a thread of its own (its SQLite connection stays on the thread that opened it).

The routes live in `routes/` by purpose (embeddings, classification, search, operations, the page); what they
share is one `Service` (`service.py`); errors become JSON in `errors.py`; `metrics.Guard` wraps every request.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from ... import __version__
from ..embeddings.embedder import Embedder
from .errors import install_error_handlers
from .metrics import Guard
from .routes import classify, dedup, embed, operations, pages, search
from .service import Service
from .settings import ServeSettings


def create_app(
    embedder: Embedder, index: str | os.PathLike | None = None, settings: ServeSettings | None = None
) -> FastAPI:
    """The ASGI app serving `embedder` (and the search index in folder `index`, when given)."""
    service = Service(embedder, index, settings or ServeSettings())

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
    if service.settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(service.settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
        )
    app.add_middleware(
        Guard,
        metrics=service.metrics,
        max_body=service.settings.max_upload_bytes,
        body_timeout_s=service.settings.body_timeout_s,
    )
    app.include_router(pages.router)
    app.mount("/static", pages.static_files(), name="static")
    for routes in (operations, embed, classify, search, dedup):
        app.include_router(routes.router)
    app.router.routes[:0] = embed.DIRECT_ROUTES  # matched first; see routes/embed.py
    return app
