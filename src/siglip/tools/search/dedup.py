"""Near-duplicate images by embedding (`siglip dedup`, `/v1/dedup`): groups, their keepers, and safe moves.

Two images are near-duplicates when the cosine similarity of their embeddings is at least a threshold
(`DEFAULT_THRESHOLD`). All pairs above it are found exactly, a block of rows at a time (`similar_pairs`: one
matrix product per block, so 10k vectors take about two seconds on 2 cores and memory stays at block x N
scores); the cost grows as N squared, so for an index of millions `neighbour_pairs` takes each image's k
nearest through the index's own (approximate) search instead.

Groups are the connected components of that graph, with a guard against chaining: a burst A~B~C~D can link
A to D although they differ. So each component gets a keeper (`keeper_order`: largest resolution, then
oldest file, then path), only members within the threshold of the keeper itself stay in its group, and
the others are grouped again among themselves. Every duplicate is therefore at least `threshold` similar to
its group's keeper, not merely connected to it.

Nothing is deleted. `move_duplicates` moves the non-keepers into a folder the user names, keeping their
paths relative to the files' common folder, never overwriting, with a manifest written first so that
`undo_moves` can put every file back whatever point a move was interrupted at.
"""

from __future__ import annotations

import base64
import errno
import html
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import DataError, UsageError
from ..inputs.media import split_address
from . import ann
from .store import replace_atomically
from .thumbnails import THUMBNAIL_SIZE, thumbnail_jpeg

if TYPE_CHECKING:
    from ..embeddings.embedder import Embedder
    from .index import SearchIndex

# Calibrated on the bundled model and scikit-image's photos with planted copies (tests/test_dedup.py): resized,
# re-encoded (JPEG quality 60) and 2%-cropped copies score >= 0.976 with their original, the most similar
# distinct photos of that set 0.937 (a 5%-a-side crop falls to 0.93, so heavier edits need a lower value).
# The tiny 32-pixel model also puts some plain textures (brick, grass) at up to 0.98: on it the default suits
# photos only. Not calibrated on a released checkpoint (none is reachable from the test machines).
DEFAULT_THRESHOLD = 0.95
MANIFEST_NAME = "siglip-dedup-moves.json"


@dataclass
class Member:
    """A duplicate in a group: its path and its cosine similarity to the group's keeper."""

    path: str
    similarity: float


@dataclass
class Group:
    """Near-duplicates: the image to keep and the others, most similar first."""

    keeper: str
    members: list[Member] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "keeper": self.keeper,
            "members": [{"path": m.path, "similarity": round(m.similarity, 6)} for m in self.members],
        }


def check_threshold(threshold: float) -> float:
    """`threshold` when it is a cosine similarity in (0, 1], else a `UsageError`."""
    if not 0 < threshold <= 1:
        raise UsageError(f"the similarity threshold must be in (0, 1], got {threshold}")
    return float(threshold)


def similar_pairs(
    vectors: np.ndarray, threshold: float, block: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j), i < j, of rows of `vectors` (unit length) with cosine similarity >= `threshold`, and
    those similarities: exact, one (block x N) matrix product at a time (only the upper triangle)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    block = max(64, min(block, 2**26 // max(len(vectors), 1)))  # block x N scores: at most 256 MB
    firsts, seconds, scores = [], [], []
    for start in range(0, len(vectors), block):
        rows = vectors[start : start + block]
        sims = rows @ vectors[start:].T  # columns from `start`: pairs below the diagonal are never computed
        i, j = np.nonzero(sims >= threshold)
        keep = j > i  # column j is row start + j: above the diagonal
        i, j = i[keep], j[keep]
        firsts.append(i + start)
        seconds.append(j + start)
        scores.append(sims[i, j])
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(scores)


def keeper_order(address: str) -> tuple[int, float, str, float]:
    """The sort key choosing a group's keeper (smallest first): largest resolution (width x height, read
    from the file's header), then oldest modification time, then path (a video's frames: earliest first, by
    their file's time; their resolution is not read). An unreadable file sorts last."""
    from PIL import Image

    path, seconds = split_address(address)
    try:
        pixels = 0
        if seconds is None:
            with Image.open(path) as image:
                pixels = image.width * image.height
        mtime = os.stat(path).st_mtime
    except (OSError, ValueError, Image.DecompressionBombError):
        return (1, 0.0, path, seconds or 0.0)
    return (-pixels, mtime, path, seconds or 0.0)


def neighbour_pairs(
    index: SearchIndex, ids: Sequence[int], vectors: np.ndarray, threshold: float, k: int, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, of rows of `vectors` (the images `ids` of `index`, as `index_vectors` gives them)
    with cosine similarity >= `threshold` among each row's `k` nearest neighbours, found through the index's
    own search (faiss; approximate for ANN indexes): for indexes too large for `similar_pairs`' all-pairs
    products. A group of more than k + 1 copies may come out split."""
    check_threshold(threshold)
    faiss_index = index.sync()
    order = np.argsort(np.asarray(ids, dtype=np.int64))
    sorted_ids = np.asarray(ids, dtype=np.int64)[order]
    firsts, seconds = [], []
    for start in range(0, len(vectors), chunk):
        queries = np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32)
        scores, found = ann.search(faiss_index, queries, min(k + 1, len(vectors)))
        rows = np.repeat(np.arange(start, start + len(queries)), found.shape[1]).reshape(found.shape)
        at = np.clip(np.searchsorted(sorted_ids, found), 0, len(sorted_ids) - 1)
        known = (found >= 0) & (sorted_ids[at] == found) & (scores >= threshold)
        columns = order[at[known]]
        rows = rows[known]
        other = columns != rows
        firsts.append(np.minimum(rows, columns)[other])
        seconds.append(np.maximum(rows, columns)[other])
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    unique = np.unique(np.stack([np.concatenate(firsts), np.concatenate(seconds)], axis=1), axis=0)
    return unique[:, 0], unique[:, 1]


def find_groups(
    paths: Sequence[str],
    vectors: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    block: int = 2048,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Group]:
    """Groups of near-duplicates among `paths` (rows of unit-length `vectors`), largest first, each member
    within `threshold` of its keeper (see the module doc); images without a duplicate are in no group.
    `pairs`: the candidate pairs (`neighbour_pairs`), instead of all pairs at or above the threshold."""
    check_threshold(threshold)
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(paths) != len(vectors):
        raise ValueError(f"{len(paths)} paths but {len(vectors)} vectors")
    first, second = similar_pairs(vectors, threshold, block)[:2] if pairs is None else pairs
    neighbours: dict[int, set[int]] = {}
    for i, j in zip(first.tolist(), second.tolist(), strict=True):
        neighbours.setdefault(i, set()).add(j)
        neighbours.setdefault(j, set()).add(i)
    order = {i: keeper_order(paths[i]) for i in neighbours}
    groups = []
    pending = _components(set(neighbours), neighbours)
    while pending:
        component = pending.pop()
        keeper = min(component, key=order.__getitem__)
        sims = vectors[sorted(component)] @ vectors[keeper]
        close = {i for i, s in zip(sorted(component), sims.tolist(), strict=True) if s >= threshold}
        members = sorted(close - {keeper}, key=lambda i: (-float(vectors[i] @ vectors[keeper]), paths[i]))
        if members:  # none only when a pair sat on the threshold and its recomputed cosine fell below it
            groups.append(
                Group(paths[keeper], [Member(paths[i], float(vectors[i] @ vectors[keeper])) for i in members])
            )
        # chained on through members that are not the keeper's duplicates: grouped again among themselves
        pending.extend(c for c in _components(component - close, neighbours) if len(c) > 1)
    return sorted(groups, key=lambda g: (-len(g.members), g.keeper))


def _components(nodes: set[int], neighbours: dict[int, set[int]]) -> list[set[int]]:
    """Connected components of the graph `neighbours` restricted to `nodes`."""
    left, components = set(nodes), []
    while left:
        start = left.pop()
        component, stack = {start}, [start]
        while stack:
            for other in neighbours[stack.pop()] & left:
                left.discard(other)
                component.add(other)
                stack.append(other)
        components.append(component)
    return components


def index_vectors(index: SearchIndex) -> tuple[list[int], list[str], np.ndarray]:
    """(ids, paths, unit-length vectors) of every image of `index`, read from its vector file (fp16-rounded
    with fp16 storage, approximate for `ivfpq`, hence normalised again)."""
    faiss_index = index.sync()
    ids = ann.ids_of(faiss_index)
    names = index.store.paths_of(ids)
    kept, paths, chunks = [], [], []
    for part, vectors in ann.vectors_of(faiss_index, ids):
        keep = np.array([int(i) in names for i in part], dtype=bool)
        kept += [int(i) for i in part[keep]]
        paths += [names[int(i)] for i in part[keep]]
        chunks.append(vectors[keep])
    vectors = np.concatenate(chunks) if chunks else np.empty((0, index.store.dims), np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return kept, paths, vectors / np.maximum(norms, 1e-12)


def embed_folder(
    embedder: Embedder,
    files: Sequence[str],
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool | None = None,
) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """(paths, vectors, skipped) of image `files` embedded by `embedder`; unreadable files are skipped with
    their reason (`Embedder.embed_files`)."""
    paths, chunks, skipped = [], [], []
    for batch in embedder.embed_files(files, batch_size, workers, progress):
        paths += [f.path for f in batch.files]
        chunks.append(batch.vectors)
        skipped += [(f.path, reason) for f, reason in batch.failed]
    vectors = np.concatenate(chunks) if chunks else np.empty((0, embedder.dims), np.float32)
    return paths, vectors, skipped


def report_json(groups: Sequence[Group], threshold: float, model: str, count: int) -> dict[str, Any]:
    """The JSON report: threshold, model, images compared, duplicates (non-keepers) and the groups."""
    return {
        "threshold": threshold,
        "model": model,
        "images": count,
        "duplicates": sum(len(g.members) for g in groups),
        "groups": [g.as_json() for g in groups],
    }


def report_html(groups: Sequence[Group], threshold: float) -> str:
    """A self-contained page of the groups (thumbnails embedded as JPEG data, every path escaped)."""
    sections = "\n".join(_group_html(n, g) for n, g in enumerate(groups, start=1))
    duplicates = sum(len(g.members) for g in groups)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>siglip dedup: {len(groups)} groups</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; }}
section {{ margin-bottom: 1.5rem; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax({THUMBNAIL_SIZE // 2}px, 1fr)); gap: .75rem; }}
figure {{ margin: 0; background: #fff; border-radius: 6px; padding: .5rem; box-shadow: 0 1px 3px #0002; }}
figure.keeper {{ outline: 3px solid #2a7; }}
img {{ width: 100%; height: {THUMBNAIL_SIZE // 2}px; object-fit: contain; background: #eee; }}
figcaption {{ font-size: .75rem; overflow-wrap: anywhere; }}
</style></head><body>
<h1>Near-duplicates</h1>
<p>{len(groups)} groups, {duplicates} duplicates at cosine similarity &ge; {threshold}; the keeper of each group
(largest resolution, then oldest file) is outlined, the others show their similarity to it.</p>
{sections}
</body></html>
"""


def _group_html(number: int, group: Group) -> str:
    cards = [_card(group.keeper, "keeper", "keeper")]
    cards += [_card(m.path, f"{m.similarity:.4f}") for m in group.members]
    return f'<section><h2>Group {number}</h2><div class="grid">\n{"".join(cards)}\n</div></section>'


def _card(path: str, label: str, css: str = "") -> str:
    shown = html.escape(path)
    link = html.escape(Path(path).absolute().as_uri())
    jpeg = thumbnail_jpeg(path, THUMBNAIL_SIZE // 2)
    image = (
        f'<img src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode("ascii")}" alt="{shown}">'
        if jpeg
        else "<p>(cannot be read)</p>"
    )
    return (
        f'<figure class="{css}"><a href="{link}">{image}</a>'
        f"<figcaption><b>{html.escape(label)}</b><br>{shown}</figcaption></figure>"
    )


# --- moving duplicates -------------------------------------------------------------------------------------
def move_duplicates(groups: Sequence[Group], folder: str | os.PathLike) -> Path:
    """Move every group's members (never a keeper) into `folder`, at their paths relative to the common
    folder of all the groups' files; returns the manifest (`folder/MANIFEST_NAME`), which `undo_moves` reads.

    Refused before anything moves when a destination exists (nothing is overwritten), when `folder` already
    holds a manifest (undo or move it first). The
    manifest is written before the first move; each move is a rename (or, across file systems, a copy to a
    temporary name renamed into place, then the removal of the original), so an interruption leaves each
    file whole at its source, its destination, or both.
    """
    folder = Path(os.path.abspath(folder))
    manifest = folder / MANIFEST_NAME
    if manifest.exists():
        raise UsageError(
            f"'{manifest}' exists: undo that move first (`siglip dedup --undo`) or use another folder"
        )
    moves = _planned_moves(groups, folder)
    taken = [dst for _, dst in moves if os.path.lexists(dst)]
    if taken:
        raise UsageError(
            f"'{taken[0]}' exists: duplicates are never moved over a file; choose an empty folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "moves": [{"from": s, "to": d} for s, d in moves],
    }
    replace_atomically(manifest, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    for source, destination in moves:
        _move(source, destination)
    return manifest


def _planned_moves(groups: Sequence[Group], folder: Path) -> list[tuple[str, str]]:
    everything = [os.path.abspath(p) for g in groups for p in (g.keeper, *(m.path for m in g.members))]
    if not everything:
        return []
    root = os.path.commonpath([os.path.dirname(p) for p in everything])
    moves = []
    for group in groups:
        for member in group.members:
            source = os.path.abspath(member.path)
            if not os.path.isfile(source):  # a video frame (path#t=...), a shard's sample, a URI, or gone
                raise UsageError(
                    f"'{member.path}' is not a file here: it cannot be moved (nothing was moved)"
                )
            moves.append((source, str(folder / os.path.relpath(source, root))))
    return moves


def _move(source: str, destination: str) -> None:
    """Move one file without ever replacing an existing one (see `move_duplicates`)."""
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    try:
        os.link(source, destination)  # fails if the destination exists: no overwrite, even in a race
    except FileExistsError as err:
        raise UsageError(f"'{destination}' exists: duplicates are never moved over a file") from err
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        partial = f"{destination}.siglip-partial"
        shutil.copy2(source, partial)
        if os.path.lexists(destination):
            os.unlink(partial)
            raise UsageError(f"'{destination}' exists: duplicates are never moved over a file") from err
        os.replace(partial, destination)
    os.unlink(source)


def undo_moves(manifest: str | os.PathLike) -> int:
    """Put back the files moved by `move_duplicates` as `manifest` records; returns how many were moved back.

    A file found at both places (a move interrupted after its copy) keeps its original and drops the copy; a
    file found at neither is an error naming it, after every other file was put back."""
    manifest = Path(manifest)
    try:
        moves = json.loads(manifest.read_text())["moves"]
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"'{manifest}' is not a manifest of `siglip dedup --move-to`") from err
    restored, missing = 0, []
    for move in moves:
        source, destination = move["from"], move["to"]
        if os.path.lexists(source):
            if os.path.lexists(destination):
                os.unlink(destination)
            continue
        if not os.path.lexists(destination):
            missing.append(destination)
            continue
        _move(destination, source)
        restored += 1
    if missing:
        raise DataError(f"{len(missing)} moved file(s) are gone from their folder, e.g. '{missing[0]}'")
    manifest.unlink()
    return restored
