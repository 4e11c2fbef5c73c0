"""Health, readiness, Prometheus metrics, and what the server serves (`/v1/info`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ...embeddings.compiled import CompiledTower
from ...zeroshot import DEFAULT_TEMPLATE
from ..errors import ApiError
from ..service import Service, check_key, service

router = APIRouter()
Served = Annotated[Service, Depends(service)]


@router.api_route("/healthz", methods=["GET", "HEAD"], tags=["operations"])
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.api_route("/readyz", methods=["GET", "HEAD"], tags=["operations"])
async def readyz(served: Served) -> dict[str, str]:
    """The model is loaded and requests are taken (503 while starting or shutting down)."""
    if not served.ready:
        raise ApiError(503, "not ready: starting or shutting down", {"Retry-After": "1"})
    return {"status": "ready"}


@router.get("/metrics", tags=["operations"], dependencies=[Depends(check_key)])
async def metrics(served: Served) -> Response:
    """Prometheus metrics: requests, latency, batch sizes and times, queue depth."""
    return Response(generate_latest(served.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/info", tags=["info"], dependencies=[Depends(check_key)])
async def info(served: Served) -> dict[str, Any]:
    """The model, its embedding size, its precision and which of its towers are compiled, the index's size
    (null without an index), the server's worker processes (each answers with its own metrics) and the
    limits of a request."""
    embedder = served.embedder
    return {
        "model": embedder.name,
        "dims": embedder.dims,
        "precision": embedder.mode.precision,
        "compiled": {  # `siglip serve` compiles its towers in the background: false until they are in
            "text": isinstance(embedder.model.text_model, CompiledTower),
            "image": isinstance(embedder.model.vision_model, CompiledTower),
        },
        "index": None if served.index is None else {"size": await served.index_size()},
        "workers": served.settings.workers,
        "default_template": DEFAULT_TEMPLATE,
        "limits": served.limits(),
    }
