"""Near-duplicate groups of the served index (`siglip dedup --index`, over HTTP)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from ...search.dedup import DEFAULT_THRESHOLD, find_groups, index_vectors
from ...search.index import SearchIndex
from ..service import Service, check_key, service

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[Depends(check_key)])
Served = Annotated[Service, Depends(service)]


@router.get("/dedup")
async def dedup(
    served: Served,
    threshold: Annotated[
        float, Query(gt=0, le=1, description="cosine similarity of duplicates")
    ] = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """Groups of near-duplicate indexed images: each group's keeper (largest resolution, then oldest file) and
    its members, with their cosine similarity to the keeper. Nothing is moved or deleted."""
    index = served.require_index()
    return await served.on_index(_groups, index, threshold)


def _groups(index: SearchIndex, threshold: float) -> dict[str, Any]:
    ids, paths, vectors = index_vectors(index)
    id_of = dict(zip(paths, ids, strict=True))
    groups = find_groups(paths, vectors, threshold)

    def image(path: str) -> dict[str, Any]:
        number = id_of[path]
        return {
            "id": number,
            "name": Path(path).name,
            "thumbnail_url": f"/v1/images/{number}/thumbnail",
            "image_url": f"/v1/images/{number}",
        }

    return {
        "threshold": threshold,
        "images": len(paths),
        "duplicates": sum(len(g.members) for g in groups),
        "groups": [
            {
                "keeper": image(g.keeper),
                "members": [{**image(m.path), "similarity": round(m.similarity, 6)} for m in g.members],
            }
            for g in groups
        ],
    }
