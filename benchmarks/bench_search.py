"""Search index speed: build throughput and query latency, on synthetic vectors and on real image files.

    python benchmarks/bench_search.py [--sizes 10000 1000000] [--dims 768] [--queries 20]
                                      [--model siglip-tiny-fashion --images 2000] [--dir /tmp/bench]

- Synthetic (no model): unit vectors written into an index batch by batch (256 per transaction, as a build
  writes them), then the faiss file derived from them, then single-text-query latency (k=10): warm (index
  in memory) and cold (open the index folder and answer the first query). Results are checked against a
  brute-force numpy ranking first: search is exact.
- Real files (with --model, or the bundled model when the package ships one): `SearchIndex.update` on a
  folder of JPEGs cut from scikit-image's photos, 256 to 640 pixels a side: decoding in worker processes,
  the model, and the writes together, in images per second; then a text query end to end (text embedding
  plus search).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from siglip import SearchIndex
from siglip.core.hub import bundled_models
from siglip.tools.search.index import RECORDS_FILE
from siglip.tools.search.store import FileState, VectorStore

BATCH = 256
CHUNK = 65_536  # vectors generated (and brute-forced) per chunk, so 1M x 768 never sits in memory twice


def synthetic_chunk(start: int, count: int, dims: int) -> np.ndarray:
    """Unit vectors [start, start + count) of a reproducible stream."""
    vectors = np.random.default_rng(start).standard_normal((count, dims), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def brute_force(size: int, dims: int, query: np.ndarray, k: int) -> list[str]:
    scores = np.concatenate(
        [synthetic_chunk(s, min(CHUNK, size - s), dims) @ query for s in range(0, size, CHUNK)]
    )
    return [f"/synthetic/{i:08d}.jpg" for i in np.argsort(-scores, kind="stable")[:k]]


def bench_synthetic(directory: Path, size: int, dims: int, queries: int) -> dict[str, float]:
    directory.mkdir(parents=True)
    start = time.perf_counter()
    with VectorStore(directory / RECORDS_FILE, "synthetic", dims) as store:
        for chunk_start in range(0, size, CHUNK):
            vectors = synthetic_chunk(chunk_start, min(CHUNK, size - chunk_start), dims)
            for b in range(0, len(vectors), BATCH):
                ids = range(chunk_start + b, chunk_start + min(b + BATCH, len(vectors)))
                store.record(
                    [FileState(f"/synthetic/{i:08d}.jpg", 1, 1) for i in ids], vectors[b : b + BATCH]
                )
    records = time.perf_counter() - start
    start = time.perf_counter()
    with SearchIndex(directory) as index:
        index.sync()
    derive = time.perf_counter() - start

    rng = np.random.default_rng(12345)
    probes = rng.standard_normal((queries, dims), dtype=np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    start = time.perf_counter()
    with SearchIndex(directory) as index:
        first = index.search(probes[0], k=10)[0]
        cold = time.perf_counter() - start
        assert [h.path for h in first] == brute_force(size, dims, probes[0], 10), "search is not exact"
        warm = []
        for probe in probes:
            start = time.perf_counter()
            index.search(probe, k=10)
            warm.append(time.perf_counter() - start)
    disk = sum(f.stat().st_size for f in directory.iterdir())
    return {
        "records/s": size / records,
        "derive s": derive,
        "build vectors/s": size / (records + derive),
        "warm ms": 1000 * statistics.median(warm),
        "cold s": cold,
        "disk GB": disk / 1e9,
    }


def make_photos(directory: Path, count: int) -> None:
    import skimage.data

    photos = [getattr(skimage.data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")]
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        top, left = rng.integers(0, h // 3), rng.integers(0, w // 3)
        crop = Image.fromarray(photo[top : top + 2 * h // 3, left : left + 2 * w // 3])
        side = int(rng.integers(256, 641))
        crop.resize((side, side * crop.height // crop.width)).save(directory / f"{i:06d}.jpg", quality=90)


def bench_files(directory: Path, model: str, count: int, queries: int) -> dict[str, float]:
    make_photos(directory / "photos", count)
    with SearchIndex(directory / "index", model) as index:
        start = time.perf_counter()
        report = index.update([directory / "photos"], progress=False)
        build = time.perf_counter() - start
        assert report.added == count, report
        index.search_text("warm up", k=10)
        latency = []
        for i in range(queries):
            start = time.perf_counter()
            index.search_text(f"a photo number {i}", k=10)
            latency.append(time.perf_counter() - start)
    return {"images/s": count / build, "text query ms": 1000 * statistics.median(latency)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 1_000_000])
    parser.add_argument("--dims", type=int, default=768, help="768 as base models; 1152 for so400m")
    parser.add_argument("--queries", type=int, default=20)
    default_model = "siglip-tiny-fashion" if "siglip-tiny-fashion" in bundled_models() else None
    parser.add_argument("--model", default=default_model, help="model for the real-file part (none: skipped)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        print(f"{os.cpu_count()} CPU cores; exact search (faiss IndexFlatIP), {args.dims}-d float32 vectors")
        print(
            f"{'vectors':>10} {'records/s':>10} {'derive s':>9} {'build/s':>9} {'warm ms':>8} {'cold s':>7} {'disk GB':>8}"
        )
        for size in args.sizes:
            r = bench_synthetic(Path(scratch) / f"synthetic-{size}", size, args.dims, args.queries)
            print(
                f"{size:>10,} {r['records/s']:>10,.0f} {r['derive s']:>9.1f} {r['build vectors/s']:>9,.0f} "
                f"{r['warm ms']:>8.1f} {r['cold s']:>7.2f} {r['disk GB']:>8.2f}"
            )
        if args.model:
            r = bench_files(Path(scratch) / "files", args.model, args.images, args.queries)
            print(
                f"\nreal files, model {args.model}: {args.images} JPEGs indexed at {r['images/s']:.1f} images/s; "
                f"text query (embedding + search) {r['text query ms']:.1f} ms"
            )


if __name__ == "__main__":
    main()
