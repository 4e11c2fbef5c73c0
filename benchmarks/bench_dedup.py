"""`siglip dedup` speed: near-duplicate groups among N synthetic unit vectors with planted near-copies.

    python benchmarks/bench_dedup.py [--sizes 10000 50000] [--dims 768] [--copies 500] [--threshold 0.95]

Random 768-d unit vectors (pairwise cosines near 0, as unrelated images are far below any threshold), plus
`--copies` near-copies of random originals (noise giving a cosine of ~0.98). Times `find_groups` (all pairs
by blockwise matrix products, then the groups) and checks it found exactly the planted pairs. Keeper choice
reads image headers; these rows have no files, so that part (one `open` per grouped image) is not timed.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from _common import cpu_flags, machine_line
from siglip.tools.search.dedup import find_groups


def planted(n: int, dims: int, copies: int, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """(n + copies, dims) unit vectors; the last `copies` rows are near-copies of distinct earlier rows."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n + copies, dims), dtype=np.float32)
    originals = rng.choice(n, copies, replace=False)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    noise = rng.standard_normal((copies, dims), dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    vectors[n:] = vectors[originals] + 0.2 * noise  # cosine ~ 1 / sqrt(1.04) = 0.98
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, {(int(o), n + c) for c, o in enumerate(originals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--copies", type=int, default=500)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{machine_line()}; flags: {' '.join(cpu_flags()) or 'none'}; load {os.getloadavg()[0]:.1f}")
    for n in args.sizes:
        vectors, pairs = planted(n, args.dims, args.copies)
        paths = [f"/nonexistent/{i:07d}.jpg" for i in range(len(vectors))]
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            groups = find_groups(paths, vectors, args.threshold)
            times.append(time.perf_counter() - start)
        row = {p: i for i, p in enumerate(paths)}
        found = {tuple(sorted((row[g.keeper], row[m.path]))) for g in groups for m in g.members}
        assert found == pairs, f"found {len(found)} pairs, planted {len(pairs)}"
        print(
            f"{len(vectors)} vectors x {args.dims}-d, {len(groups)} groups: "
            f"median {sorted(times)[len(times) // 2]:.2f} s (best {min(times):.2f} s); "
            f"load {os.getloadavg()[0]:.1f}"
        )


if __name__ == "__main__":
    main()
