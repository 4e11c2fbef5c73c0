"""Zero-shot classification of one image."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from ...zeroshot import DEFAULT_TEMPLATE
from ..errors import ApiError
from ..inputs import openapi_body, read_request
from ..service import Service, check_key, service
from .params import Params, Text

router = APIRouter(prefix="/v1", tags=["classification"], dependencies=[Depends(check_key)])


class ClassifyParams(Params):
    labels: list[Text] = Field(min_length=1, description="candidate labels")
    templates: list[Text] = Field(
        [DEFAULT_TEMPLATE], min_length=1, description="prompts with {} where the label goes (no other braces)"
    )


@router.post("/classify", openapi_extra=openapi_body(ClassifyParams, "image", "image: the image"))
async def classify(served: Annotated[Service, Depends(service)], request: Request) -> dict[str, Any]:
    """Zero-shot classification of one image: SigLIP's sigmoid probability per label, best first.

    At most `limits.max_prompts` prompts (labels x templates) per request (see `/v1/info`).
    """
    params, uploads = await read_request(request, ClassifyParams, "image", 1)
    if len(uploads) != 1:
        raise ApiError(422, f"classify takes exactly one image, got {len(uploads)}")
    classes, vectors = await asyncio.gather(
        served.label_embeddings(params.labels, params.templates), served.embed_images(uploads)
    )
    return {
        "model": served.embedder.name,
        "results": served.classifier.rank(vectors, classes, params.labels)[0],
    }
