"""`--where` filters: the cost of reading metadata as images are embedded, and filtered search by index type.

    python benchmarks/bench_filters.py                      # 50,000 vectors (768-d), flat, hnsw and ivf
    python benchmarks/bench_filters.py --n 200000 --types ivf

Metadata: `read_metadata` over 640x480 JPEGs with EXIF (date, camera, GPS), once warm (the OS caches the files,
as right after the embedding read them). Filtered search: synthetic clustered unit vectors (tests/_vectors.py)
with a `year` drawn uniformly from 10 values per vector; filters keeping 50%, 10%, 1% and 0.1% of the rows
(`year` in 5, 1 of them; 1% and 0.1% by a second draw); the allowed ids go to `ann.search(..., allowed=...)`
as `SearchIndex.search` sends them. Per type and share: query p50 (one query at a time, as a user searches),
the share of queries with k=10 results, and recall@10 against the exact top 10 among the allowed rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import cpu_flags, make_jpegs
from _vectors import clustered
from siglip.tools.metadata import read_metadata
from siglip.tools.search import ann


def machine() -> str:
    flags = cpu_flags()
    return f"{os.cpu_count()} cores, flags {' '.join(flags) or 'none'}, load {os.getloadavg()[0]:.1f}"


def bench_metadata(count: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        paths = make_jpegs(Path(folder), count)
        for path in paths:  # EXIF as a phone writes it
            exif = Image.Exif()
            exif[0x010F], exif[0x0110], exif[0x0112] = "Apple", "iPhone 12", 6
            exif.get_ifd(0x8769)[0x9003] = "2023:07:14 10:20:30"
            exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 29.0)})
            Image.open(path).save(path, exif=exif, quality=90)
        for path in paths:
            read_metadata(str(path))
        start = time.perf_counter()
        for path in paths:
            read_metadata(str(path))
        per = (time.perf_counter() - start) / count
    print(f"read_metadata: {per * 1e6:.0f} us an image over {count} JPEGs with EXIF ({machine()})")


def bench_search(n: int, kinds: list[str], queries: int) -> None:
    dims = 768
    vectors = clustered(n, dims)
    rng = np.random.default_rng(1)
    year, fine = rng.integers(0, 10, n), rng.integers(0, 1000, n)
    shares = {
        "50%": np.flatnonzero(year < 5),
        "10%": np.flatnonzero(year == 0),
        "1%": np.flatnonzero(fine < 10),
        "0.1%": np.flatnonzero(fine == 0),
    }
    asked = clustered(queries, dims, part=99)
    for kind in kinds:
        plan = ann.plan(kind, "auto", n, dims)
        start = time.perf_counter()
        index, info = ann.build(plan, dims, n, lambda: iter([(np.arange(n), vectors)]))
        ann.apply_search_params(index, info.search_params)
        print(f"{kind} ({plan.factory}, {info.search_params}): built in {time.perf_counter() - start:.1f} s")
        for share, allowed in shares.items():
            times, complete, recall = [], 0, []
            for query in asked:
                start = time.perf_counter()
                _, ids = ann.search(index, query[None], 10, allowed)
                times.append(time.perf_counter() - start)
                found = ids[0][ids[0] >= 0]
                complete += len(found) == min(10, len(allowed))
                truth = allowed[np.argsort(-(vectors[allowed] @ query))[:10]]
                recall.append(len(set(found) & set(truth)) / len(truth))
            print(
                f"  {share:>5} allowed ({len(allowed):>6} rows): p50 {statistics.median(times) * 1e3:7.2f} ms, "
                f"complete {complete / queries:.0%}, recall@10 {statistics.mean(recall):.3f}"
            )
    print(machine())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--types", nargs="+", default=["flat", "hnsw", "ivf"])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    bench_metadata(args.images)
    bench_search(args.n, args.types, args.queries)


if __name__ == "__main__":
    main()
