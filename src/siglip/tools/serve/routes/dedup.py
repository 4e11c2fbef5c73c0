"""Near-duplicate groups of the served index (`siglip dedup --index`, over HTTP)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from ...search.dedup import DEFAULT_THRESHOLD, find_groups, index_vectors, neighbour_pairs
from ...search.index import SearchIndex
from ..service import Service, check_key, service

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[Depends(check_key)])
Served = Annotated[Service, Depends(service)]
EXACT_UP_TO = 20_000  # all pairs up to here (~10 s on 2 cores holding the index thread); above, k-NN
NEIGHBOURS = 32


@router.get("/dedup")
async def dedup(
    served: Served,
    threshold: Annotated[
        float, Query(gt=0, le=1, description="cosine similarity of duplicates")
    ] = DEFAULT_THRESHOLD,
    neighbours: Annotated[
        int | None,
        Query(
            ge=1,
            le=1000,
            description="look among each image's k nearest through the index's search (default: all pairs "
            f"exactly up to {EXACT_UP_TO} images, else {NEIGHBOURS})",
        ),
    ] = None,
) -> dict[str, Any]:
    """Groups of near-duplicate indexed images: each group's keeper (largest resolution, then oldest file) and
    its members, with their cosine similarity to the keeper. Nothing is moved or deleted."""
    index = served.require_index()
    return await served.on_index(_groups, index, threshold, neighbours)


def _groups(index: SearchIndex, threshold: float, neighbours: int | None) -> dict[str, Any]:
    ids, paths, vectors = index_vectors(index)
    id_of = dict(zip(paths, ids, strict=True))
    if neighbours is None and len(ids) > EXACT_UP_TO:  # all pairs would hold the index thread for minutes
        neighbours = NEIGHBOURS
    pairs = None if neighbours is None else neighbour_pairs(index, ids, vectors, threshold, neighbours)
    groups = find_groups(paths, vectors, threshold, pairs=pairs)

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
        "neighbours": neighbours,
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
