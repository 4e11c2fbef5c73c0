"""Approximate nearest-neighbour indexes over faiss: the index types, their automatic choice by size, and the
recall each build reaches against exact search.

Types (cosine similarity as the inner product of unit vectors):
- `flat`: exact search over every vector.
- `ivf`: an inverted file of `nlist` k-means cells (about 4 sqrt(N), a power of two; from 8,192 cells, about
  2 million vectors, the cells are found through an HNSW graph of their centroids, which explores at least
  `QUANTIZER_EF` candidates and at least `nprobe` when searching: fewer misplace vectors and miss cells); a
  query scans `nprobe` cells. Vectors added later join their cell without retraining; removals are in place.
- `hnsw`: a graph (32 links a node); fast at any size but it cannot remove vectors, so a removal rebuilds it.
- `ivfpq`: `ivf` over codes compressed by 4-bit fast-scan product quantization (dims/8 bytes: 96 at 768-d,
  16x smaller than fp16, scanned with SIMD; about sqrt(N) cells, 4x fewer and larger than `ivf`'s, as a
  code costs 16x less to scan than an fp16 vector while finding the cells costs the same), whose `k_factor`
  x k best candidates are re-ranked by exact inner products with the fp16 vectors (`Reranked`: one faiss call,
  `IndexRefine` over the memory-mapped rows). The compressed index is the vector file; its ids are ROWS of
  two append-only sidecar files beside it, `rerank-<generation>.f16` (the fp16 vectors, rows x dims) and
  `rerank-<generation>.ids` (the image id of each row, int64; -1 once removed), memory-mapped when searching:
  only the codes and their list ids (dims/8, held at `CODE_SLACK`, + 8 bytes a vector) need memory, a query reads k x k_factor rows
  from disk. Builds and additions append to the sidecars through buffered files (never all vectors in
  memory); removals are in place (the rows leave the inverted lists, their ids become -1), and a rebuild
  compacts once more than half the rows are dead. The type for tens of millions of vectors in bounded
  memory. (Indexes built before the sidecars, faiss `IndexRefine` inside the vector file, or before the
  re-ranking, `PQ96np`, keep searching; the next update rebuilds them as sidecars.)

A trained type (`ivf`, `ivfpq`) needs vectors to train on (1,000 and 10,000): asked for by name for fewer,
it is refused (`check_size`); an index of that type that shrinks below is `flat` until it grows back. `auto` (autofaiss-style, by size and a memory budget, 8 GiB unless set): `flat` below 50,000 vectors,
`ivf` while its fp16 vectors fit the budget (about 5.5 million at 768-d in 8 GiB), `ivfpq` above. The
budget holds `ivfpq` too (`plan`): its resident memory is its codes (held at `CODE_SLACK` their size, as
measured), their list ids and the centroids, 1.4 dims/8 + 8 bytes a vector (142 B at 768-d: 1.3 GiB at 10M,
13.3 GiB at 100M); where that exceeds the budget the codes shrink to dims/16 then dims/32 bytes (more
candidates re-ranked make up the recall: at 100M x 768-d in 8 GiB, `PQ96x4fs`, 75 B a vector, 7.0 GiB), and a
budget too small for the smallest is refused, naming both. Storage
`auto` keeps exact types in fp32 and approximate ones in fp16 (its rounding, about 1e-4, is far below their
approximation error).

Every build measures recall@10 against exact search on a held-out sample of the indexed vectors (added to
the index only after the measurement, so that they are queries it has not seen), after choosing the smallest search effort (`nprobe`, `efSearch`; for
`ivfpq` the cheapest `nprobe` and `k_factor` together) that reaches the target recall (plus a margin for the sample's error). faiss does the rest: `index_factory`, training, `ParameterSpace`, `ResultHeap`.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import DataError, UsageError
from ..deps import require

INDEX_TYPES = ("auto", "flat", "ivf", "hnsw", "ivfpq")
STORAGES = ("auto", "fp32", "fp16")
TARGET_RECALL = 0.95
TUNE_MARGIN = 0.01  # tune to the target plus this: the sample's recall is an estimate (+-0.01 at 500 queries)
RECALL_K = 10
FLAT_BELOW = 50_000  # auto: exact search up to here (about 5 ms a query at 768-d on one core)
MEMORY_BUDGET = 8 << 30  # auto: product quantization once the fp16 vectors would take more than this
RECALL_QUERIES = 500  # held-out queries per recall measurement
TRAIN_PER_CELL = 40  # k-means training points per IVF cell (faiss warns below 39)
HNSW_LINKS = 32
HNSW_QUANTIZER_FROM = 8192  # IVF cells from which a graph finds a vector's cells (from ~2.1M vectors)
# candidates that graph explores at least: with 16 (faiss's default) 2.7% of vectors were added to another cell
# than their nearest one's among 16,384 (0% with 64), and a search for 256 cells missed some of the nearest
QUANTIZER_EF = 64
SERIAL_BELOW = 16  # queries searched in one thread below this many (see `search`)
EXACT_AMONG_BELOW = 2_000  # a filter allowing fewer rows is searched exactly among them (~8 us a row)
TRAINS_FROM = {"ivf": 1_000, "ivfpq": 10_000}  # fewer vectors than this: such an index starts as `flat`

Chunks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # a fresh pass of (ids int64, vectors f32)


@dataclass(frozen=True)
class Plan:
    """What to build: the type, the storage precision and the faiss factory string."""

    kind: str
    storage: str
    factory: str

    @property
    def nlist(self) -> int:
        """IVF cells (0 for types without them)."""
        cells = re.search(r"(?:^|,)IVF(\d+)", self.factory)  # after a transform too (OPQ16,IVF...)
        return int(cells[1]) if cells else 0


@dataclass(frozen=True)
class BuildInfo:
    """How an index was built and the recall it reached: stored with the index, shown by `siglip info`."""

    kind: str
    storage: str
    factory: str
    search_params: str  # faiss ParameterSpace string, e.g. "nprobe=16"
    recall_at_10: float | None  # None: too few vectors to measure
    recall_queries: int
    vectors_at_build: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BuildInfo:
        return cls(**json.loads(text))


def check_options(kind: str, storage: str) -> None:
    """A `UsageError` naming the choices when `kind` or `storage` is not one."""
    if kind not in INDEX_TYPES:
        raise UsageError(f"index type must be one of {', '.join(INDEX_TYPES)}, got {kind!r}")
    if storage not in STORAGES:
        raise UsageError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")


def check_size(kind: str, n: int) -> None:
    """A `UsageError` naming the minimum when a type asked for by name cannot be trained on `n` vectors (a
    stored type keeps `plan`'s exact fallback instead: an index may shrink below its type's minimum)."""
    minimum = TRAINS_FROM.get(kind, 0)
    if n < minimum:
        raise UsageError(
            f"--index-type {kind} needs at least {minimum:,} images to train on, the index would hold {n:,}: "
            "use flat or hnsw, or auto (which picks by size)"
        )


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_memory(text: str) -> int:
    """Bytes from a size such as "8GiB", "512MiB", "8G" or "2000000000" (binary units; a `UsageError`
    naming the value otherwise)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not found or float(found[1]) <= 0:
        raise UsageError(f"memory budget must be a size such as 8GiB or 512MiB, got {text!r}")
    return int(float(found[1]) * _UNITS[found[2].lower()])


def plan(kind: str, storage: str, n: int, dims: int, memory_budget: int = MEMORY_BUDGET) -> Plan:
    """The index to build for `n` vectors of `dims` dimensions (see the module doc for `auto`, which keeps
    the fp16 vectors in memory only while they fit `memory_budget` bytes, and for the codes of `ivfpq`, which
    keep to it too: a `UsageError` naming both when even the smallest do not)."""
    check_options(kind, storage)
    if kind == "auto":
        kind = "flat" if n < FLAT_BELOW else "ivf" if n * dims * 2 <= memory_budget else "ivfpq"
    if n < TRAINS_FROM.get(kind, 0):  # too few vectors to train on: exact until there are enough
        kind = "flat"
    if storage == "auto":
        storage = "fp32" if kind == "flat" else "fp16"
    codes = "Flat" if storage == "fp32" else "SQfp16"
    per_sqrt = 1 if kind == "ivfpq" else 4  # ivfpq's codes cost 16x less to scan: fewer, larger cells
    nlist = 2 ** min(  # about 4 sqrt(n) cells (ivfpq: sqrt(n)), with enough training points for each
        round(math.log2(per_sqrt * math.sqrt(max(n, 1)))), int(math.log2(max(n // TRAIN_PER_CELL, 1)))
    )
    # from HNSW_QUANTIZER_FROM cells, the cells are found through an HNSW graph of their centroids (as autofaiss
    # does): exact assignment costs n x nlist dot products (10M x 16,384 at 768-d: ~45 min on 2 cores), in
    # the k-means training as in the adding
    ivf = f"IVF{nlist}" + (f"_HNSW{HNSW_LINKS}" if nlist >= HNSW_QUANTIZER_FROM else "")
    if kind == "ivfpq":  # 4-bit codes, re-ranked from the sidecar files (`Reranked`)
        return Plan(kind, "pq", f"{ivf},PQ{_pq_quantizers(dims, n, nlist, memory_budget)}x4fs")
    factory = {"flat": codes, "ivf": f"{ivf},{codes}", "hnsw": f"HNSW{HNSW_LINKS},{codes}"}[kind]
    return Plan(kind, storage, factory)


def resident_bytes(m: int, n: int, nlist: int, dims: int) -> int:
    """Memory an `ivfpq` index of `n` vectors with `m` 4-bit sub-quantizers holds while searching: its codes
    (m/2 bytes, held with `CODE_SLACK`), their ids in the inverted lists (8 bytes) and the fp32 centroids
    (with their HNSW graph's links from `HNSW_QUANTIZER_FROM` cells); the fp16 vectors and row ids are
    memory-mapped, not counted."""
    graph = 2 * HNSW_LINKS * 4 if nlist >= HNSW_QUANTIZER_FROM else 0
    return round(n * (m // 2 * CODE_SLACK + 8)) + nlist * (dims * 4 + graph)


def _pq_quantizers(dims: int, n: int = 0, nlist: int = 0, memory_budget: int = MEMORY_BUDGET) -> int:
    """4-bit PQ sub-quantizers: dims/4 (4 dimensions each), else dims/8 or dims/16 where the codes of `n`
    vectors would not fit `memory_budget` (`resident_bytes`); rounded down to an even divisor of dims
    (fast-scan wants an even count; at least 2)."""
    for share in (4, 8, 16):
        m = max(2, dims // share)
        while m > 2 and (dims % m or m % 2):
            m -= 1
        need = resident_bytes(m, n, nlist, dims)
        if need <= memory_budget:
            return m
    raise UsageError(
        f"{n:,} vectors of {dims} dimensions need {need / 2**30:.2f} GiB of memory for ivfpq's smallest codes "
        f"(PQ{m}x4fs, with their ids and centroids), over the memory budget of {memory_budget / 2**30:.2f} "
        "GiB: raise --memory-budget"
    )


def refines(factory: str) -> bool:
    """Whether an index of this factory string is the previous `ivfpq` layout, faiss `IndexRefine` with the
    fp16 vectors inside the vector file (searched still; the next update rebuilds it with sidecars)."""
    return "Refine(" in factory


def still_fits(current: Plan, wanted: Plan) -> bool:
    """Whether an index built as `current` may keep growing instead of being rebuilt as `wanted`: same type,
    storage and codes, and for IVF types a cell count within 2x of the one this size calls for."""
    if (current.kind, current.storage) != (wanted.kind, wanted.storage):
        return False
    if current.factory.split(",")[1:] != wanted.factory.split(",")[1:]:  # other codes, or an older layout
        return False
    return current.nlist == wanted.nlist or (current.nlist > 0 and 0.5 <= wanted.nlist / current.nlist <= 2)


def can_remove(plan: Plan) -> bool:
    """Whether vectors can be removed in place (HNSW graphs and the older `IndexRefine` layout of `ivfpq`
    cannot: a removal rebuilds)."""
    return plan.kind != "hnsw" and not refines(plan.factory)


def needs_compaction(index: Any) -> bool:
    """Whether a rebuild should drop the dead rows of a `Reranked` index (more than half its rows)."""
    return isinstance(index, Reranked) and index.rows > 2 * index.ntotal


SIDECAR_PREFIX = "rerank-"  # rerank-<generation>.f16 and .ids: the rows of a `Reranked` index
_WILLNEED = getattr(mmap, "MADV_WILLNEED", None)  # not on Windows: reads then fault one by one
# rows read slower than this on average came partly from disk: prefetch the next ones (a cached page costs
# ~1 us to map, a disk read 10-100 us; half the rows on disk already double the average: BENCHMARKS.md)
COLD_ROW_S = 2e-6
RERANK_BLOCK = 4 << 20  # bytes of fp32 candidate vectors re-ranked at a time
PROBE_EVERY = 32  # one search in this many re-ranks in `rerank`, whose timing tells rows read from disk
# the fast-scan lists hold their codes in blocks whose tables take more than the codes: serving memory measured
# 1.37-1.44x the codes with PQ192x4fs at 10M and 30M, and fits PQ48-PQ192 at 1M (BENCHMARKS.md)
CODE_SLACK = 1.4
PQ_TRAIN = 65_536  # training vectors for PQ codes at least (the IVF cells may want more)


class SidecarError(DataError):
    """A sidecar file of a `Reranked` index is missing or shorter than its index says (one line, naming it)."""


class Reranked:
    """`ivfpq`'s index: a compressed faiss IVF index (`base`) whose ids are rows of two sidecar files in
    `folder`, the fp16 vectors (`rerank-<generation>.f16`, rows x dims) and the image id of each row
    (`rerank-<generation>.ids`, int64, -1 once removed). A search takes k x `k_factor` candidate rows from the
    base and re-ranks them by exact inner products with their vectors, read from the memory-mapped file.

    Rows are only appended (`add_with_ids`, through buffered files) or marked dead (`remove_ids`); `flush`
    makes them durable, to be called before a vector file that counts them (`rows`) replaces the last one.
    A generation's files belong to one build: a rebuild writes a new generation, so that no vector file is
    ever paired with another build's rows. Quacks like the faiss indexes it stands beside (`ntotal`, `d`,
    `search`, `add_with_ids`, `remove_ids`, `reconstruct`).
    """

    def __init__(self, base: Any, folder: Path, generation: str, rows: int) -> None:
        self.base, self.folder, self.generation = base, Path(folder), generation
        self.d = base.d
        self.k_factor = K_FACTORS[2]
        self.rows = rows  # rows the files hold (and the vector file counts, once saved)
        self._appending: tuple[Any, Any] | None = None
        self._cold = False  # whether the last re-ranking's rows came from disk rather than the page cache
        self._searches = -1  # counts searches for `PROBE_EVERY` (the first one probes)
        self._map()

    @classmethod
    def create(cls, base: Any, folder: Path) -> Reranked:
        """A new generation of empty sidecars in `folder` around an empty `base`."""
        index = cls(base, folder, uuid.uuid4().hex, 0)
        for path in index.paths:
            path.write_bytes(b"")
        return index

    @classmethod
    def open(cls, base: Any, folder: Path, generation: str, rows: int) -> Reranked:
        """The index of a saved `base` whose sidecars hold (at least) `rows` rows; a `SidecarError` when a
        sidecar is missing or shorter (rows past `rows` are a killed update's, cut at the next append)."""
        for path, row_bytes in zip(_sidecar_paths(folder, generation), _row_bytes(base.d), strict=True):
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise SidecarError(
                    f"'{path}', the re-ranking sidecar of its vector file, is missing"
                ) from None
            if size < rows * row_bytes:
                raise SidecarError(
                    f"'{path}' is truncated: it holds {size // row_bytes:,} of the {rows:,} rows its vector "
                    "file refers to"
                )
        return cls(base, folder, generation, rows)

    @property
    def paths(self) -> tuple[Path, Path]:
        """(vectors, ids) sidecar files of this generation."""
        return _sidecar_paths(self.folder, self.generation)

    @property
    def ntotal(self) -> int:
        """Live vectors (rows in the base index)."""
        return self.base.ntotal

    def _map(self) -> None:
        self._maps: tuple[mmap.mmap, ...] = ()
        self._by_id: tuple[np.ndarray, ...] | None = None  # `rows_of`'s lookup: (ids it sorted, sorted, rows)
        self._refine: tuple[Any, ...] | None = None  # `_fused`'s (vectors, ids, IndexRefine, its fp16 rows)
        if not self.rows:
            self._mapped = np.empty((0, self.d), np.float16), np.empty(0, np.int64)
            return
        maps = []
        for path, row_bytes in zip(self.paths, _row_bytes(self.d), strict=True):
            with open(path, "rb") as f:  # the map outlives the descriptor
                maps.append(mmap.mmap(f.fileno(), self.rows * row_bytes, access=mmap.ACCESS_READ))
            if _WILLNEED is not None:  # re-ranking reads scattered rows: no read-ahead of 128 KiB around each
                maps[-1].madvise(mmap.MADV_RANDOM)
        self._maps = tuple(maps)  # plain arrays over them (a np.memmap's own indexing is slower)
        # one attribute, so that a search never pairs one generation's vectors with another's ids
        self._mapped = (
            np.frombuffer(maps[0], np.float16).reshape(self.rows, self.d),
            np.frombuffer(maps[1], np.int64),
        )

    @property
    def vectors(self) -> np.ndarray:
        """The fp16 vectors of the rows (rows x d), memory-mapped."""
        return self._mapped[0]

    @property
    def ids(self) -> np.ndarray:
        """The image id of each row (-1 once removed), memory-mapped."""
        return self._mapped[1]

    def prefetch(self, rows: np.ndarray) -> None:
        """Ask the kernel to read the pages of these rows (ascending) of both sidecars now, all at once
        (`madvise(MADV_WILLNEED)`, asynchronous): rows not in the page cache then cost about one disk read
        together instead of one read each, one after another, as the gather's page faults would."""
        if _WILLNEED is None or not len(rows):
            return
        for mapped, row_bytes in zip(self._maps, _row_bytes(self.d), strict=True):
            first, end = rows * row_bytes // mmap.PAGESIZE, ((rows + 1) * row_bytes - 1) // mmap.PAGESIZE + 1
            reach = np.maximum.accumulate(end)  # merge overlapping and adjacent page runs
            new = np.flatnonzero(first[1:] > reach[:-1]) + 1
            starts, ends = first[np.r_[0, new]], reach[np.r_[new - 1, len(rows) - 1]]
            for start, stop in zip(starts.tolist(), ends.tolist(), strict=True):
                offset = start * mmap.PAGESIZE
                mapped.madvise(_WILLNEED, offset, min(stop * mmap.PAGESIZE, len(mapped)) - offset)

    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Append rows (not searchable until `flush`) and add them to the base; returns their row numbers."""
        rows = self.append(vectors, ids)
        self.base.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), rows)
        return rows

    def append(self, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Append rows to the sidecars only (a build adds its held-out queries to the base later)."""
        if self._appending is None:
            for path, row_bytes in zip(self.paths, _row_bytes(self.d), strict=True):
                os.truncate(path, self.rows * row_bytes)  # a killed update's rows, never referenced
            self._appending = tuple(open(path, "ab") for path in self.paths)  # noqa: SIM115 (closed by flush)
        self._appending[0].write(np.ascontiguousarray(vectors, dtype=np.float16).tobytes())
        self._appending[1].write(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
        rows = np.arange(self.rows, self.rows + len(ids), dtype=np.int64)
        self.rows += len(ids)
        return rows

    def flush(self) -> None:
        """Make the appended rows durable (fsync) and searchable."""
        if self._appending is not None:
            for f in self._appending:
                f.flush()
                os.fsync(f.fileno())
                f.close()
            self._appending = None
            self._map()

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows (ascending) holding any of `ids` (an id lives in one row at most): binary searches in the ids
        sorted once per generation of the rows, so that a filtered query costs O(m log n) for m allowed ids,
        not a scan of the id sidecar. The sorted copy (8 bytes a row while ids fit int32, else 12; 0.75 GiB
        at 100M) is kept until rows are appended; a removal keeps it, its rows checked against the sidecar."""
        ids = np.sort(np.asarray(ids, dtype=np.int64).ravel())  # np.unique took 10x a sort (numpy 2.4)
        ids = ids[(ids >= 0) & np.r_[True, ids[1:] != ids[:-1]]]  # each once; -1 marks the removed rows
        current = self.ids
        if self._by_id is None or self._by_id[0] is not current:  # built for other rows (an append since)
            order = np.argsort(current, kind="stable")
            small = (
                np.int32 if len(current) < 2**31 and (not len(current) or current.max() < 2**31) else np.int64
            )
            self._by_id = current, current[order].astype(small), order.astype(small)
        _, sorted_ids, order = self._by_id
        at = np.searchsorted(sorted_ids, ids)
        held = at < len(sorted_ids)
        held[held] &= sorted_ids[at[held]] == ids[held]
        rows = order[at[held]].astype(np.int64)
        return np.sort(rows[current[rows] == ids[held]])  # a row removed since the sort holds -1 now

    def remove_ids(self, ids: np.ndarray) -> None:
        """Remove vectors by image id in place: their rows leave the base's lists and their ids become -1."""
        self.flush()
        rows = self.rows_of(ids)
        if not len(rows):
            return
        _remove_rows(self.base, rows)
        marks = np.memmap(self.paths[1], np.int64, "r+", shape=(self.rows,))
        marks[rows] = -1
        marks.flush()
        del marks

    def reconstruct(self, image_id: int) -> np.ndarray:
        """The fp16 vector of an image id, as fp32."""
        rows = self.rows_of(np.array([image_id]))
        if not len(rows):
            raise KeyError(f"id {image_id} is not in the index")
        return np.asarray(self.vectors[rows[0]], dtype=np.float32)

    def search(self, queries: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, image ids) of the k best of each query: k x `k_factor` candidates from the base (searched
        with `params`, whose selector is of rows), re-ranked exactly; -inf and -1 where fewer are found.

        Most searches are one faiss call (`_fused`). The first, one in `PROBE_EVERY` after it, and every one
        after a search found its rows on disk take the candidates from the base and re-rank them here
        (`rerank`), which times its reads and then asks the kernel for all the rows of the next searches at
        once (so a page cache emptied meanwhile is noticed within `PROBE_EVERY` searches). So do searches
        while appended rows await `flush`, and a query whose best k hold a row whose id is -1 while the base
        still holds it (removed by another process, its vector file not yet saved): `rerank` drops such rows
        before taking the best k."""
        self._searches += 1
        fused = self._fused()
        if fused is None or self._cold or self._appending is not None or self._searches % PROBE_EVERY == 0:
            return self._search_stepwise(queries, k, params)
        _, ids, refine, _ = fused
        refine_params = _faiss().IndexRefineSearchParameters()
        refine_params.k_factor, refine_params.base_index_params = self.k_factor, params
        scores, rows = refine.search(queries, k, params=refine_params)  # best first, -1 rows last
        found = ids.take(np.maximum(rows, 0))  # -1 (no candidate) reads row 0
        dead = ((found < 0) & (rows >= 0)).any(axis=1)
        found[rows < 0], scores[rows < 0] = -1, -np.inf
        if dead.any():
            scores[dead], found[dead] = self._search_stepwise(queries[dead], k, params)
        return scores, found

    def _search_stepwise(self, queries: np.ndarray, k: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
        """`search` in two steps: the candidate rows from the base, then `rerank`."""
        _, rows = self.base.search(queries, k * self.k_factor, params=params)
        return self.rerank(queries, rows, k)

    def _fused(self) -> tuple[Any, ...] | None:
        """(vectors, ids, refine, rows) for the one-call search, None without rows: faiss's `IndexRefine`
        over the base and `rows`, an `IndexScalarQuantizer` (fp16) whose codes are the mapped vectors
        themselves, not a copy. It finds the candidates and re-ranks them in C++, a query per OpenMP thread,
        converting each row as it reads it: no fp32 copy and no Python between the blocks (768-d, 320-640
        candidates a query: 1.3-1.6x the single queries a second of `rerank`, 1.7-4.5x batched;
        BENCHMARKS.md). Made again for each generation of the mapped rows, which the tuple keeps alive while
        a search uses it."""
        vectors, ids = self._mapped
        made = self._refine
        if made is not None and made[0] is vectors:
            return made
        if not len(vectors):
            return None
        faiss = _faiss()
        rows = faiss.IndexScalarQuantizer(self.d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        # the view `MaybeOwnedVector::create_view` makes, field by field: its owner argument cannot be made in
        # Python, and the mapping it would own is kept alive by `vectors` here. Read-only: nothing may add to
        # `rows` or `refine` (faiss refuses to resize a view)
        codes, address = rows.codes, faiss.swig_ptr(vectors.reshape(-1).view(np.uint8))
        codes.is_owned, codes.view_data, codes.view_size = False, address, vectors.nbytes
        codes.c_ptr, codes.c_size = address, vectors.nbytes
        rows.ntotal = self.base.ntotal  # IndexRefine wants both sizes equal, then holds its candidates to
        refine = faiss.IndexRefine(self.base, rows)  # below its own `ntotal`: every row, dead ones included
        rows.ntotal = refine.ntotal = len(vectors)
        self._refine = vectors, ids, refine, rows
        return self._refine

    def rerank(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best of each query's candidate `rows` (-1: none) by exact inner product with their fp16
        vectors, a block of queries at a time (bounded memory)."""
        n, candidates = rows.shape
        scores = np.full((n, candidates), -np.inf, dtype=np.float32)
        found = np.full((n, candidates), -1, dtype=np.int64)
        block = max(1, RERANK_BLOCK // max(candidates * self.d * 4, 1))
        vectors, ids_of_rows = self._mapped

        def rerank_block(start: int) -> None:
            part = rows[start : start + block]
            held = np.maximum(part.ravel(), 0)  # -1 (no candidate) reads row 0, masked below
            if self._cold:  # ask for all the rows at once (costs ~3 us a row when they are in memory)
                self.prefetch(np.unique(held))
            # gathered in the candidates' order, not sorted first: from the page cache the order costs
            # nothing, and reading each row once (then spreading it) cost a second gather of the block
            reading = time.perf_counter()
            half, ids = vectors.take(held, axis=0), ids_of_rows.take(held)
            # per candidate row: the -1 slots read row 0 (cached) and would dilute the average
            self._cold = time.perf_counter() - reading > max(np.count_nonzero(part >= 0), 1) * COLD_ROW_S
            gathered = _widen(half).reshape(*part.shape, self.d)
            inner = np.matmul(gathered, queries[start : start + block, :, None])[..., 0]
            ids = ids.reshape(part.shape)
            scores[start : start + block] = np.where((part >= 0) & (ids >= 0), inner, -np.inf)
            found[start : start + block] = ids

        starts = range(0, n, block)
        threads = min(_faiss().omp_get_max_threads(), len(starts))  # `search`: 1 for a few queries
        if threads > 1:  # numpy's reads and products release the GIL: the blocks run in parallel
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(rerank_block, starts))
        else:
            for start in starts:
                rerank_block(start)
        return _ranked(scores, found, k)


def _ranked(scores: np.ndarray, found: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (scores, ids) of each row of candidates, best first; -1 where the score is -inf."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, found = np.take_along_axis(scores, best, axis=1), np.take_along_axis(found, best, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    scores, found = np.take_along_axis(scores, order, axis=1), np.take_along_axis(found, order, axis=1)
    found[~np.isfinite(scores)] = -1
    return scores, found


def _remove_rows(base: Any, rows: np.ndarray) -> None:
    """Remove `rows` (ids) from `base`. For an IVF fast-scan base, the 4-bit codes left past the end of each
    shortened list are then set to zero: faiss moves a list's last entries into the removed slots without
    clearing the slots they leave in the list's last block, and its next add ORs the new codes into that block
    as if it were zeros (faiss 1.15; in a test, vectors added after a removal found their own vector first
    29-34% of the time, against 99% on an index without removals)."""
    faiss = _faiss()
    ivf = faiss.try_extract_index_ivf(base)
    fast_scan = faiss.downcast_index(ivf) if ivf is not None else None
    lists = fast_scan.invlists if isinstance(fast_scan, faiss.IndexIVFFastScan) else None
    sizes = [lists.list_size(i) for i in range(fast_scan.nlist)] if lists is not None else []
    base.remove_ids(faiss.IDSelectorBatch(len(rows), faiss.swig_ptr(rows)))
    if lists is None:
        return
    packer, zero = fast_scan.get_CodePacker(), np.zeros(fast_scan.code_size, np.uint8)
    for number, size_before in enumerate(sizes):
        size = lists.list_size(number)
        if size == size_before:
            continue
        codes = lists.get_codes(number)
        for slot in range(size, min(size_before, -(-size // packer.nvec) * packer.nvec)):
            packer.pack_1_c(faiss.swig_ptr(zero), slot, codes)  # sets the slot's 4-bit codes (no OR)
        lists.release_codes(number, codes)


def _sidecar_paths(folder: Path, generation: str) -> tuple[Path, Path]:
    """(vectors, ids) sidecar files of a `Reranked` generation in `folder`."""
    stem = Path(folder) / f"{SIDECAR_PREFIX}{generation}"
    return stem.with_suffix(".f16"), stem.with_suffix(".ids")


def _row_bytes(dims: int) -> tuple[int, int]:
    """Bytes a row takes in the (vectors, ids) sidecars: fp16 vector, int64 id."""
    return dims * 2, 8


def _widen(half: np.ndarray) -> np.ndarray:
    """fp16 rows as fp32, through torch's SIMD conversion (numpy's astype costs ~10x: most of a query's time),
    in pieces below torch's grain size: a larger one wakes its thread pool, ~5 ms on a busy machine."""
    out = np.empty(half.shape, np.float32)
    step = max(1, 32768 // max(half.shape[1], 1))
    for start in range(0, len(half), step):
        torch.from_numpy(out[start : start + step]).copy_(torch.from_numpy(half[start : start + step]))
    return out


def remove_sidecars(folder: Path, keep: str | None = None) -> None:
    """Delete the sidecar files in `folder` of every generation but `keep` (older builds', or a killed
    rebuild's): call once the vector file that names `keep` (or none) is in place."""
    for path in Path(folder).glob(f"{SIDECAR_PREFIX}*"):
        if path.suffix in (".f16", ".ids") and path.stem != f"{SIDECAR_PREFIX}{keep}":
            path.unlink(missing_ok=True)


def new_index(plan: Plan, dims: int) -> Any:
    """An empty faiss index for `plan`, addressed by int64 ids and able to give back vectors by id (for
    `ivfpq`, the base of a `Reranked`: its ids are rows)."""
    faiss = _faiss()
    index = faiss.index_factory(dims, plan.factory, faiss.METRIC_INNER_PRODUCT)
    _set_quantizer_ef(faiss, faiss.try_extract_index_ivf(index), 0)
    if plan.kind == "ivfpq":
        return index
    if plan.nlist:
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # ids in the lists; reconstruct by id
        return index
    return faiss.IndexIDMap2(index)


def ids_of(index: Any) -> np.ndarray:
    """The ids an index holds (int64, sorted)."""
    faiss = _faiss()
    if isinstance(index, Reranked):
        return np.sort(index.ids[index.ids >= 0])  # the mask's copy is the only one
    if isinstance(index, faiss.IndexIDMap2):
        return np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))
    invlists = faiss.extract_index_ivf(index).invlists
    ids = [
        faiss.rev_swig_ptr(invlists.get_ids(cell), invlists.list_size(cell)).copy()
        for cell in range(invlists.nlist)
        if invlists.list_size(cell)
    ]
    return np.sort(np.concatenate(ids).astype(np.int64)) if ids else np.empty(0, np.int64)


def remove_ids(index: Any, ids: np.ndarray) -> None:
    """Remove vectors by id (not for `hnsw`: see `can_remove`)."""
    faiss = _faiss()
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if isinstance(index, Reranked):
        index.remove_ids(ids)
        return
    index.remove_ids(
        faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))
    )  # IVF's id hashtable needs an array


def vectors_of(index: Any, ids: np.ndarray, chunk: int = 16384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) chunks of the vectors an index holds for `ids` (fp16-rounded for `ivfpq`, which keeps them
    for re-ranking, in row order; approximate for one built before the re-ranking)."""
    if isinstance(index, Reranked):
        wanted = np.unique(np.asarray(ids, dtype=np.int64))
        for start in range(0, index.rows, chunk):
            held = np.asarray(index.ids[start : start + chunk])
            keep = np.flatnonzero(np.isin(held, wanted))
            if len(keep):
                yield held[keep], np.asarray(index.vectors[start + keep], dtype=np.float32)
        return
    for start in range(0, len(ids), chunk):
        part = np.ascontiguousarray(ids[start : start + chunk], dtype=np.int64)
        yield part, index.reconstruct_batch(part)


def apply_search_params(index: Any, params: str) -> None:
    """Set search-time parameters (e.g. "nprobe=16") on an index, as faiss's ParameterSpace reads them (and
    the effort of an HNSW graph finding the cells, `quantizer_ef`)."""
    faiss = _faiss()
    if isinstance(index, Reranked):  # k_factor is the re-ranking's, the rest the base's
        values = dict(part.split("=") for part in params.split(",") if part)
        index.k_factor = int(values.pop("k_factor", index.k_factor))
        index, params = index.base, ",".join(f"{key}={value}" for key, value in values.items())
    if params:
        faiss.ParameterSpace().set_index_parameters(index, params)
    ivf = faiss.try_extract_index_ivf(index)
    _set_quantizer_ef(faiss, ivf, ivf.nprobe if ivf is not None else 0)


def quantizer_ef(nprobe: int) -> int:
    """Candidates an HNSW graph of IVF centroids explores to find `nprobe` cells (0: to add a vector)."""
    return max(QUANTIZER_EF, nprobe)


def _graph_quantizer(faiss: Any, ivf: Any) -> Any:
    """The HNSW graph finding the cells of IVF index `ivf`, None when they are found exactly (or no IVF)."""
    quantizer = faiss.downcast_index(ivf.quantizer) if ivf is not None else None
    return quantizer if isinstance(quantizer, faiss.IndexHNSW) else None


def _set_quantizer_ef(faiss: Any, ivf: Any, nprobe: int) -> None:
    """The stored effort of an IVF index's HNSW quantizer (if it has one), used when adding and by searches
    that pass no quantizer parameters of their own."""
    graph = _graph_quantizer(faiss, ivf)
    if graph is not None:
        graph.hnsw.efSearch = quantizer_ef(nprobe)


def cell_params(faiss: Any, ivf: Any, nprobe: int, selector: Any = None) -> Any:
    """faiss search parameters probing `nprobe` cells of `ivf` (with `quantizer_ef` for an HNSW quantizer),
    among the ids `selector` admits (all if None)."""
    params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
    if _graph_quantizer(faiss, ivf) is not None:
        params.quantizer_params = faiss.SearchParametersHNSW(efSearch=quantizer_ef(nprobe))
    return params


def search(
    index: Any, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best (scores, ids) of each query, as many as the index holds up to `k`.

    The tuned search effort finds the top 10; a larger `k` needs more: HNSW explores at least `k` candidates
    (`efSearch`), and an IVF query short of results probes twice the cells until it has them (at most all).
    A re-ranked `ivfpq` re-ranks k x `k_factor` candidates, so it returns k whenever its cells hold k.
    The effort goes with the call (faiss `SearchParameters`), so concurrent searches never see another's.
    Single-threaded for a few queries: waking OpenMP threads for one query costs more than the query (about
    12 ms against 0.02 ms for HNSW on a busy 2-core machine); batches stay parallel.

    `allowed` (ids; a `--where` filter's rows) restricts the search to those ids, inside it (faiss
    `IDSelector`), and `k` results come back whenever as many are allowed: exact types are masked, IVF
    probes more cells as above, and a query the approximate search leaves short (an HNSW graph may not
    reach enough allowed nodes), or a filter allowing fewer than `EXACT_AMONG_BELOW` rows, is answered by
    exact search among the allowed vectors.
    """
    faiss = _faiss()
    threads = faiss.omp_get_max_threads()
    if len(queries) < SERIAL_BELOW:
        faiss.omp_set_num_threads(1)
    try:
        if allowed is None:
            return _search_complete(faiss, index, queries, k)
        allowed = np.ascontiguousarray(allowed, dtype=np.int64)
        k = min(k, len(allowed))
        if k == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        exact = isinstance(index, faiss.IndexIDMap2) and isinstance(
            faiss.downcast_index(index.index), faiss.IndexFlat
        )
        if not exact and len(allowed) < EXACT_AMONG_BELOW:
            return _search_among(index, queries, k, allowed)
        scores, ids = _search_complete(faiss, index, queries, k, allowed, len(allowed) / max(index.ntotal, 1))
        short = (ids < 0).any(axis=1)  # k is at most the allowed count here
        if short.any():
            scores[short], ids[short] = _search_among(index, queries[short], k, allowed)
        return scores, ids
    finally:
        faiss.omp_set_num_threads(threads)


def _search_among(
    index: Any, queries: np.ndarray, k: int, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top `k` (scores, ids; padded with -inf and -1) of `queries` among the vectors of the `allowed`
    ids, read back from the index a chunk at a time (approximate for `ivfpq`, fp16-rounded for fp16)."""
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    for chunk_ids, vectors in vectors_of(index, allowed):
        both_ids = np.concatenate([ids, np.broadcast_to(chunk_ids, (len(queries), len(chunk_ids)))], axis=1)
        scores, ids = _ranked(np.concatenate([scores, queries @ vectors.T], axis=1), both_ids, k)
    return scores, ids


def _search_complete(
    faiss: Any, index: Any, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, share: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """`index.search` with the effort `search` describes, among the `allowed` ids (all if None), a `share` of
    the index: HNSW then explores that many times more candidates and IVF probes that many times more cells, as
    most vectors they meet are not admitted."""
    wanted = min(k, index.ntotal)
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else None
    if isinstance(index, Reranked) and allowed is not None:
        allowed = index.rows_of(allowed)  # the base's ids are rows (kept alive here while it searches)
    selector = None if allowed is None else faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
    if isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=selector)
        params.efSearch = min(max(index.ntotal, k), math.ceil(max(inner.hnsw.efSearch, k) / share))
        return index.search(queries, k, params=params)
    refine = inner if isinstance(inner, faiss.IndexRefine) else None  # the previous `ivfpq` layout
    base = index.base if isinstance(index, Reranked) else refine.base_index if refine else index
    ivf = faiss.try_extract_index_ivf(base) if inner is None or refine else None
    if refine is not None and allowed is not None:
        # IndexRefine ignores a selector of its own and IndexIDMap2 translates ids for the top level only: the
        # base index takes the selector, of positions in the id map (kept alive here while it searches).
        positions = np.flatnonzero(np.isin(faiss.vector_to_array(index.id_map), allowed)).astype(np.int64)
        selector = faiss.IDSelectorBatch(len(positions), faiss.swig_ptr(positions))

    def params_for(nprobe: int) -> Any:
        if ivf is None:
            return None if selector is None else faiss.SearchParameters(sel=selector)
        cells = cell_params(faiss, ivf, nprobe, selector)
        if refine is None:
            return cells
        params = (
            faiss.IndexRefineSearchParameters()
        )  # the cells go to the base index; re-ranking keeps k_factor
        params.k_factor = refine.k_factor
        params.base_index_params = cells
        return params

    # as HNSW's candidates, the cells probed grow by 1 / share: as many admitted vectors met as without a filter
    nprobe = min(ivf.nlist, math.ceil(ivf.nprobe / share)) if ivf is not None else 0
    scores, ids = index.search(queries, k, params=params_for(nprobe))
    short = (ids[:, :wanted] < 0).any(axis=1)
    while short.any() and 0 < nprobe < ivf.nlist:
        nprobe = min(2 * nprobe, ivf.nlist)
        scores[short], ids[short] = index.search(queries[short], k, params=params_for(nprobe))
        short = (ids[:, :wanted] < 0).any(axis=1)
    return scores, ids


def build(
    plan: Plan, dims: int, n: int, chunks: Chunks, target: float = TARGET_RECALL, folder: Path | None = None
) -> tuple[Any, BuildInfo]:
    """Build a `plan` index of the `n` vectors `chunks()` yields, tune it to `target` recall@10 and measure.

    `chunks` is called once per pass (two passes: the held-out queries and the training sample, then the
    rest); memory holds one chunk, the training sample and the queries, never all vectors: an `ivfpq` index
    (a `Reranked`) appends them to a new generation of sidecar files in `folder` as they come, flushed.
    """
    faiss = _faiss()
    rng = np.random.default_rng(0)
    queries = min(RECALL_QUERIES, n // 10) if n > RECALL_K * 10 else 0
    trains = plan.kind != "flat" and plan.kind != "hnsw"
    train = min(n - queries, max(TRAIN_PER_CELL * plan.nlist, PQ_TRAIN if plan.kind == "ivfpq" else 0))
    picked = rng.choice(n, size=queries + (train if trains else 0), replace=False)
    role = np.zeros(n, np.int8)  # 1: held-out query, 2: training sample
    role[picked[:queries]] = 1
    role[picked[queries:]] = 2
    index = new_index(plan, dims)
    if plan.kind == "ivfpq":
        if folder is None:
            raise ValueError("an ivfpq build needs a folder for its sidecar files")
        index = Reranked.create(index, folder)
    base = index.base if isinstance(index, Reranked) else index
    picks = [(ids[role[at] == 1], v[role[at] == 1], v[role[at] == 2]) for at, ids, v in _positions(chunks())]
    query_ids = np.concatenate([i for i, _, _ in picks]) if picks else np.empty(0, np.int64)
    query_vectors, sample = (np.concatenate([p[j] for p in picks]) if picks else None for j in (1, 2))
    del picks
    if trains:
        base.train(sample)
    del sample
    heap = faiss.ResultHeap(len(query_ids), RECALL_K, keep_max=True) if queries else None
    query_rows = []  # a `Reranked`'s rows of the held-out queries: in the sidecars, joining the base last
    for at, ids, vectors in _positions(chunks()):
        rest = role[at] != 1
        if isinstance(index, Reranked):  # every row in stream order; the base addresses them by row
            rows = index.append(vectors, ids)
            base.add_with_ids(vectors[rest], rows[rest])
            query_rows.append(rows[~rest])
        else:
            index.add_with_ids(vectors[rest], ids[rest])
        ids, vectors = ids[rest], vectors[rest]
        if heap is not None and len(ids):
            scores, positions = _exact(query_vectors, vectors)
            heap.add_result(scores, np.where(positions >= 0, ids[positions], -1))
    if isinstance(index, Reranked):
        index.flush()
    if heap is None:
        return index, BuildInfo(plan.kind, plan.storage, plan.factory, "", None, 0, n)
    heap.finalize()
    params, recall = _tune(index, plan.kind, query_vectors, heap.I, target)
    if isinstance(index, Reranked):  # measured: now they join the index
        base.add_with_ids(query_vectors, np.concatenate(query_rows))
    else:
        index.add_with_ids(query_vectors, query_ids)
    return index, BuildInfo(plan.kind, plan.storage, plan.factory, params, recall, queries, n)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of `truth` (the exact top k) that `found` (top k) contains."""
    k = truth.shape[1]
    found = np.asarray(found)[:, :k]
    hit = (truth[:, :, None] == found[:, None, :]).any(axis=2) & (truth >= 0)  # an exact id in the found ones
    return float(hit.sum(axis=1).mean() / k) if len(truth) else 0.0


def _tune(index: Any, kind: str, queries: np.ndarray, truth: np.ndarray, target: float) -> tuple[str, float]:
    """The smallest search effort reaching `target` recall@10 with a margin (else the largest tried) and its
    recall."""
    if kind == "flat":
        efforts = [""]
    elif kind == "hnsw":
        efforts = [f"efSearch={e}" for e in (16, 32, 64, 128, 256, 512)]
    elif isinstance(index, Reranked):
        return _tune_reranked(index, queries, truth, target)
    else:
        nlist = _faiss().extract_index_ivf(index).nlist
        efforts = [f"nprobe={p}" for p in (1, 2, 4, 8, 16, 32, 64, 128, 256) if p <= nlist]
        efforts += [] if nlist <= 256 or kind == "ivfpq" else [f"nprobe={min(nlist, 512)}"]
    recall = 0.0
    for params in efforts:
        apply_search_params(index, params)
        _, found = index.search(queries, RECALL_K)
        recall = recall_at_k(found, truth)
        if recall >= target + TUNE_MARGIN:
            break
    return params, round(recall, 4)


K_FACTORS = (2, 4, 8, 16, 32, 64)  # re-ranked candidates per result tried by `_tune_reranked`


def _tune_reranked(
    index: Reranked, queries: np.ndarray, truth: np.ndarray, target: float
) -> tuple[str, float]:
    """`_tune` for a re-ranked index: the cheapest (`nprobe`, `k_factor`) reaching the target with a margin,
    else the best recall found. Cost in bytes touched a query: the codes of the cells scanned (in memory) plus
    4x the fp16 vectors re-ranked (random reads from a memory-mapped file cost more than a sequential scan).
    One base search a `nprobe` for the most candidates tried; each k_factor re-ranks its best k x k_factor
    (the same candidates a search with that k_factor gets). An HNSW quantizer adds the centroids its
    `quantizer_ef` candidates link to. The recall returned is measured again by a search with the pair
    chosen."""
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(index.base)
    per_cell = max(1, index.ntotal // ivf.nlist) * ivf.code_size
    graph = _graph_quantizer(faiss, ivf) is not None
    best, passing = ("", -1.0), []
    for nprobe in (p for p in (4, 8, 16, 32, 64, 128, 256) if p <= ivf.nlist):
        params = cell_params(faiss, ivf, nprobe)
        rows = index.base.search(queries, RECALL_K * K_FACTORS[-1], params=params)[1]
        cells = nprobe * per_cell + (quantizer_ef(nprobe) * 2 * HNSW_LINKS * index.d * 4 if graph else 0)
        for k_factor in K_FACTORS:
            found = index.rerank(queries, rows[:, : RECALL_K * k_factor], RECALL_K)[1]
            tried = f"nprobe={nprobe},k_factor={k_factor}", recall_at_k(found, truth)
            best = max(best, tried, key=lambda pair: pair[1])
            if tried[1] >= target + TUNE_MARGIN:
                passing.append((cells + 4 * RECALL_K * k_factor * index.d * 2, *tried))
                break  # a larger k_factor at this nprobe only costs more
        if passing and passing[-1][1].endswith(f"k_factor={K_FACTORS[0]}"):
            break  # the fewest candidates already pass here: more cells only cost more
    params = min(passing)[1] if passing else best[0]
    apply_search_params(index, params)
    return params, round(recall_at_k(index.search(queries, RECALL_K)[1], truth), 4)


def _exact(queries: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact top RECALL_K (scores, positions) of `queries` within one chunk (padded with -1 when short)."""
    k = min(RECALL_K, len(vectors))
    scores, positions = _faiss().knn(queries, vectors, k, metric=_faiss().METRIC_INNER_PRODUCT)
    pad = RECALL_K - k
    return np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf), np.pad(
        positions, ((0, 0), (0, pad)), constant_values=-1
    )


def _positions(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(positions in the whole stream, ids, vectors) of each chunk."""
    offset = 0
    for ids, vectors in chunks:
        yield np.arange(offset, offset + len(ids)), ids, np.ascontiguousarray(vectors, dtype=np.float32)
        offset += len(ids)


def _faiss() -> Any:
    return require("faiss", "search", "the search index")
