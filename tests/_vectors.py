"""Synthetic embeddings for the approximate-search tests and benchmarks (benchmarks/bench_ann.py)."""

from __future__ import annotations

import numpy as np


def clustered(
    n: int, dims: int, seed: int = 0, clusters: int = 100, rank: int = 32, part: int = 0
) -> np.ndarray:
    """Unit vectors in `clusters` clusters, each spread over its own `rank`-dimensional subspace plus
    isotropic noise: neighbourhoods with structure, as image embeddings have (IVF cells cut clusters).

    `seed` fixes the clusters; `part` the draws within them, so that a large set can be made part by part.
    """
    shapes = np.random.default_rng(seed)
    centres = shapes.standard_normal((clusters, dims), dtype=np.float32)
    spreads = shapes.standard_normal((clusters, rank, dims), dtype=np.float32) * 0.5
    rng = np.random.default_rng([seed, part])
    labels = rng.integers(0, clusters, n)
    x = centres[labels] + 0.3 * rng.standard_normal((n, dims), dtype=np.float32)
    latent = rng.standard_normal((n, rank), dtype=np.float32)
    for c in range(clusters):
        members = labels == c
        x[members] += latent[members] @ spreads[c]
    return x / np.linalg.norm(x, axis=1, keepdims=True)
