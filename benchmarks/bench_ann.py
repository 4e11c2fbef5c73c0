"""Search index types on synthetic clustered embeddings: build time, query p50/p99, recall@10, RAM and disk.

    python benchmarks/bench_ann.py --n 1000000                       # flat, ivf, ivfpq at 1M (768-d)
    python benchmarks/bench_ann.py --n 200000 --types hnsw           # one type at another size
    python benchmarks/bench_ann.py --n 1000000 --types hnsw --streamed
    python benchmarks/bench_ann.py --n 10000000 --types ivfpq --streamed  # 10M: the vectors never all in RAM
    python benchmarks/bench_ann.py --n 10000000 --types ivfpq --streamed --keep  # measure it again later
    python benchmarks/bench_ann.py --n 1000000 --types ivfpq --streamed --keep --stepwise  # re-ranked in numpy

The vectors (tests/_vectors.py: 100 clusters, each over its own 32-d subspace, plus noise) are made part by
part into a memory-mapped .npy under --work. Each type is built in its own process through `SearchIndex`
(the records, the drain into the vector file, recall measured at build) so that its peak memory is its own,
then reopened (memory-mapped) and asked 1,000 held-out queries one at a time; recall@10 is against an exact
ranking of the same queries by faiss.knn over all vectors.

`--streamed` (for sizes whose vectors must never all be in memory or on disk: 10M x 768 fp32 is 30 GB) makes
each part of the vectors again from its seed whenever the build reads it, and builds the vector file the way
`SearchIndex` does (`ann.build`: the held-out sample and training sample in a first pass, the adds in a
second) without the SQLite records; the exact top 10 of the queries is gathered part by part during the
second pass; an `ivfpq` build appends its vectors to its sidecar files as they come (`ann.Reranked`), so no
pass ever holds them all. The index is written with `faiss.write_index` and reopened as `SearchIndex` opens
it (memory-mapped; `ivfpq`: the codes in memory, the sidecars mapped) for the queries.

Memory: "build peak" is the child's peak RSS (`ru_maxrss`: it counts the page cache of mapped files it
touched, the input vectors.npy of the non-streamed path and the sidecars read while tuning); "search RAM" is
the anonymous memory (RssAnon, not the page cache of mapped files) that opening the index and the queries
added, after the build's freed memory was handed back (malloc_trim): what serving holds.

"p50 cold" (streamed `ivfpq`): 200 of the queries again, the sidecars dropped from the page cache before each
(`posix_fadvise(DONTNEED)`), so that every re-ranked row is read from the disk: what a query costs when the
fp16 vectors are far larger than memory (100M: 154 GB).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import cpu_flags
from _vectors import SPECTRUM_ALPHA, clustered, spectral

PART = 100_000
BATCH_ROUNDS = 5  # the batched path is timed this many times (median)
COLD_QUERIES = 200  # ivfpq queries timed with the sidecars out of the page cache
SETS = {"clustered": clustered, "spectral": spectral}  # tests/_vectors.py: uniform noise, decaying spectrum


def make_vectors(work: Path, n: int, dims: int, queries: int, make=clustered) -> None:
    """vectors.npy (n x dims, part by part), queries.npy and truth.npy (exact top 10 of each query)."""
    import faiss

    if (work / "truth.npy").exists() and np.load(work / "vectors.npy", mmap_mode="r").shape == (n, dims):
        return
    work.mkdir(parents=True, exist_ok=True)
    vectors = np.lib.format.open_memmap(work / "vectors.npy", "w+", np.float32, (n, dims))
    asked = make(queries, dims, part=10**6)
    heap = faiss.ResultHeap(queries, 10, keep_max=True)
    for start in range(0, n, PART):
        part = make(min(PART, n - start), dims, part=start // PART)
        vectors[start : start + len(part)] = part
        scores, ids = faiss.knn(asked, part, 10, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, ids + start)
    heap.finalize()
    vectors.flush()
    np.save(work / "queries.npy", asked)
    np.save(work / "truth.npy", heap.I)


def batch_seconds(index: object, queries: np.ndarray) -> float:
    """Median time of the batched path (`ann.search` over all queries at once: faiss's threads) over
    BATCH_ROUNDS calls: a call of 1,000 queries lasts tens of milliseconds at 1M, too short to time once."""
    from siglip.tools.search import ann

    times = []
    for _ in range(BATCH_ROUNDS):
        start = time.perf_counter()
        ann.search(index, queries, 10)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def child(work: Path, kind: str, storage: str) -> dict:
    """Build one index type from vectors.npy, reopen it and time single queries (runs in its own process)."""
    from siglip import SearchIndex
    from siglip.tools.search import ann
    from siglip.tools.search.index import RECORDS_FILE
    from siglip.tools.search.store import FileState, VectorStore
    from siglip.tools.serve.images import release_memory  # glibc's malloc_trim

    vectors = np.load(work / "vectors.npy", mmap_mode="r")
    n, dims = vectors.shape
    folder = work / f"index-{kind}-{storage}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    VectorStore(folder / RECORDS_FILE, "synthetic", dims).close()
    start = time.perf_counter()
    with SearchIndex(folder, index_type=kind, storage=storage) as index:
        for at in range(0, n, 20_000):
            part = np.asarray(vectors[at : at + 20_000])
            index.store.record([FileState(f"/v/{at + i}.jpg", 1, 1) for i in range(len(part))], part)
        index.sync()
        info = index.build_info
    build_s = time.perf_counter() - start
    build_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss is in KiB)
    del vectors
    release_memory()  # the build's freed memory back to the system: what follows counts the search's
    anon_before = _anon_gib()
    queries, truth = np.load(work / "queries.npy"), np.load(work / "truth.npy")
    with SearchIndex(folder) as index:
        index.search(queries[0], 10)  # opens the file (memory-mapped)
        times, found = [], []
        for query in queries:
            t = time.perf_counter()
            hits = index.search(query, 10)[0]
            times.append(time.perf_counter() - t)
            found.append([int(h.path[3:-4]) for h in hits])
        vectors_index = index.sync()
        batch_s = batch_seconds(vectors_index, queries)
    disk = sum(f.stat().st_size for f in folder.iterdir()) / 2**30
    result = {
        "type": kind,
        "factory": info.factory,
        "params": info.search_params,
        "n": n,
        "build_s": round(build_s, 1),
        "build_peak_gib": round(build_peak, 2),
        "search_anon_gib": round(_anon_gib() - anon_before, 3),
        "p50_ms": round(statistics.median(times) * 1e3, 2),
        "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 2),
        "recall_at_10": round(ann.recall_at_k(np.array(found), truth), 4),
        "recall_at_build": info.recall_at_10,
        "single_qps": round(len(times) / sum(times)),
        "batch_qps": round(len(queries) / batch_s),
        "disk_gib": round(disk, 3),
        "fp16_vectors_gib": round(n * dims * 2 / 2**30, 3),
    }
    shutil.rmtree(folder)
    return result


def streamed(
    work: Path,
    n: int,
    dims: int,
    kind: str,
    queries: int,
    factory: str | None,
    make=clustered,
    keep: bool = False,
) -> dict:
    """Build `kind` over `n` vectors made part by part as the build reads them (see the module doc);
    `factory` replaces the one `ann.plan` picks (to time at a small size the structure of a large one). With
    `keep`, the built index stays in `work` (with the build's figures and the queries' exact top 10) and a
    kept one of the same type, size, set, dimensions, queries and factory is measured again instead of built
    (its sidecars read once first, as a build leaves them in the page cache; `"kept": true` in the result)."""
    import faiss

    from siglip.tools.search import ann
    from siglip.tools.serve.images import release_memory

    asked = make(queries, dims, part=10**6)
    folder = work / f"streamed-{kind}-{make.__name__}-{n}"  # the vector file, and ivfpq's sidecars beside it
    kept = folder / "bench.json"  # the build's figures, when kept
    asked_for = {"dims": dims, "queries": len(asked), "factory_asked": factory}
    built = json.loads(kept.read_text()) if keep and kept.exists() else None
    if built is not None and {key: built.get(key) for key in asked_for} == asked_for:
        truth = np.load(folder / "truth.npy")
        built["kept"] = True  # its build figures are those of the run that built it
        for sidecar in folder.glob("rerank-*"):  # into the page cache, as a build leaves them (what fits)
            with open(sidecar, "rb") as f:
                while f.read(64 << 20):
                    pass
    else:
        built, truth = _build_streamed(folder, n, dims, kind, asked, factory, make)
        built.update(asked_for)
        if keep:
            np.save(folder / "truth.npy", truth)
            kept.write_text(json.dumps(built))
    release_memory()  # the build's freed memory back to the system: what follows counts the search's
    anon_before = _anon_gib()
    path = folder / "vectors.faiss"
    if "generation" in built:  # ivfpq, as `SearchIndex` opens it: the codes in memory, the sidecars mapped
        index = ann.Reranked.open(faiss.read_index(str(path)), folder, built["generation"], built["rows"])
    else:
        flags = faiss.IO_FLAG_MMAP if "IVF" in built["factory"] else faiss.IO_FLAG_MMAP_IFC
        index = faiss.read_index(str(path), flags)
    ann.apply_search_params(index, built["params"])
    times, found = [], []
    for query in asked:
        t = time.perf_counter()
        found.append(ann.search(index, query[None], 10)[1][0])
        times.append(time.perf_counter() - t)
    batch_s = batch_seconds(index, asked)
    reranked = isinstance(index, ann.Reranked)
    cold = []  # ivfpq: each query with the sidecars dropped from the page cache first (rows read from disk)
    for query in asked[: COLD_QUERIES if reranked else 0]:
        for sidecar in index.paths:
            _drop_cached(sidecar)
        t = time.perf_counter()
        ann.search(index, query[None], 10)
        cold.append(time.perf_counter() - t)
    result = {
        "type": kind,
        **{key: value for key, value in built.items() if key not in ("generation", "rows")},
        "n": n,
        "search_anon_gib": round(_anon_gib() - anon_before, 3),
        "p50_ms": round(statistics.median(times) * 1e3, 2),
        "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 2),
        "recall_at_10": round(ann.recall_at_k(np.array(found), truth), 4),
        "p50_cold_ms": round(statistics.median(cold) * 1e3, 2) if cold else None,
        "single_qps": round(len(times) / sum(times)),
        "batch_qps": round(len(asked) / batch_s),
        "disk_gib": round(sum(f.stat().st_size for f in folder.iterdir()) / 2**30, 3),
        "fp16_vectors_gib": round(n * dims * 2 / 2**30, 3),
    }
    del index
    if not keep:
        shutil.rmtree(folder)
    return result


def _build_streamed(
    folder: Path, n: int, dims: int, kind: str, asked: np.ndarray, factory: str | None, make
) -> tuple[dict, np.ndarray]:
    """`streamed`'s build into `folder`: the build's figures (and, for ivfpq, its sidecars' generation and
    rows) and the exact top 10 of the queries `asked`, gathered as the vectors pass."""
    import faiss

    from siglip.tools.search import ann

    plan = ann.plan(kind, "auto", n, dims)
    plan = ann.Plan(plan.kind, plan.storage, factory) if factory else plan
    heap = faiss.ResultHeap(len(asked), 10, keep_max=True)
    marks = []  # when each pass starts and ends

    def chunks():
        marks.append(time.perf_counter())
        for start in range(0, n, PART):
            part = make(min(PART, n - start), dims, part=start // PART)
            if len(marks) == 3:  # the adding pass: the exact top 10 of the queries, part by part
                scores, ids = faiss.knn(asked, part, 10, metric=faiss.METRIC_INNER_PRODUCT)
                heap.add_result(scores, ids + start)
            yield np.arange(start, start + len(part)), part
        marks.append(time.perf_counter())

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    index, info = ann.build(plan, dims, n, chunks, folder=folder)
    build_s = time.perf_counter() - start
    marks.append(time.perf_counter())
    heap.finalize()
    reranked = isinstance(index, ann.Reranked)
    built = {"generation": index.generation, "rows": index.rows} if reranked else {}
    faiss.write_index(index.base if reranked else index, str(folder / "vectors.faiss"))
    del index
    return {
        **built,
        "factory": info.factory,
        "params": info.search_params,
        "build_s": round(build_s, 1),
        # the steps: making the vectors and picking the samples; training; adding (and the exact top 10 of the
        # queries, with making the vectors again); tuning the search effort
        "steps_s": [round(b - a, 1) for a, b in itertools.pairwise(marks)],
        "build_peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "recall_at_build": info.recall_at_10,
    }, heap.I


def _drop_cached(path: Path) -> None:
    """Drop a file's pages from the page cache (clean pages only: it was fsynced when written)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _anon_gib() -> float:
    """Anonymous resident memory (not the page cache of mapped files) of this process, GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--types", default="flat,ivf,ivfpq", help="comma-separated kind[:storage]")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/siglip-bench-ann"))
    parser.add_argument(
        "--streamed", action="store_true", help="make the vectors part by part as the build reads them"
    )
    parser.add_argument(
        "--factory", help="with --streamed: this faiss factory instead of the automatic one (one type)"
    )
    parser.add_argument(
        "--set",
        choices=sorted(SETS),
        default="clustered",
        help=f"synthetic vectors: clustered (noise over all dimensions) or spectral (variance ~ i^-{SPECTRUM_ALPHA:g})",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="with --streamed: keep the built index in --work; one kept there of the same size and set is measured again, not built",
    )
    parser.add_argument(
        "--stepwise",
        action="store_true",
        help="ivfpq: every search re-ranks in numpy (`Reranked.rerank`), not in one faiss call: the path before",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, storage = args.child.split(":")
        if args.stepwise:
            from siglip.tools.search import ann

            ann.PROBE_EVERY = 1  # every search takes the candidates, then re-ranks them in `rerank`
        result = (
            streamed(
                args.work, args.n, args.dims, kind, args.queries, args.factory, SETS[args.set], args.keep
            )
            if args.streamed
            else child(args.work, kind, storage)
        )
        print(json.dumps(result))
        return
    if args.streamed:
        print(
            f"# {args.n:,} {args.set} {args.dims}-d vectors, streamed; {os.cpu_count()} CPU cores", flush=True
        )
    else:
        start = time.perf_counter()
        make_vectors(args.work, args.n, args.dims, args.queries, SETS[args.set])
        print(f"# {args.n:,} {args.set} {args.dims}-d vectors made in {time.perf_counter() - start:.0f} s; "
              f"{os.cpu_count()} CPU cores", flush=True)  # fmt: skip
    print("| type | factory | search | build s | build peak GiB | search RAM GiB | p50 ms | p99 ms | p50 cold ms | "
          "recall@10 | recall at build | single q/s | batch q/s | disk GiB | fp16 vectors GiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    print(f"# CPU flags: {' '.join(cpu_flags())}", flush=True)
    for spec in args.types.split(","):
        kind, _, storage = spec.partition(":")
        print(f"# load average before {spec}: {os.getloadavg()[0]:.2f}", flush=True)
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--work",
                str(args.work),
                "--child",
                f"{kind}:{storage or 'auto'}",
                "--n",
                str(args.n),
                "--dims",
                str(args.dims),
                "--queries",
                str(args.queries),
                *(["--streamed"] if args.streamed else []),
                *(["--keep"] if args.keep else []),
                *(["--stepwise"] if args.stepwise else []),
                "--set",
                args.set,
                *(["--factory", args.factory] if args.factory else []),
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode:
            reason = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
            print(f"| {spec} | failed: {reason} |", flush=True)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['type']} | {r['factory']} | {r['params'] or 'exact'} | {r['build_s']} | {r['build_peak_gib']} | "
              f"{r['search_anon_gib']} | {r['p50_ms']} | {r['p99_ms']} | {r.get('p50_cold_ms') or ''} | {r['recall_at_10']} | "
              f"{r['recall_at_build']} | {r.get('single_qps', '')} | {r.get('batch_qps', '')} | {r['disk_gib']} | {r['fp16_vectors_gib']} |", flush=True)  # fmt: skip
        print(f"<!-- {json.dumps(r)} -->", flush=True)  # all the figures (the build's steps among them)


if __name__ == "__main__":
    main()
