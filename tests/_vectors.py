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


SPECTRUM_ALPHA = 1.0


def spectral(
    n: int, dims: int, seed: int = 0, clusters: int = 100, alpha: float = SPECTRUM_ALPHA, part: int = 0
) -> np.ndarray:
    """Unit vectors whose variance decays like real image embeddings': the i-th principal direction carries
    variance ~ i^-alpha (alpha 1 puts 68% of the variance of 768-d vectors in the top 77 directions, a
    power law as CLIP-like embedding spectra follow; the exponent is an assumption, not fitted to a model).
    The directions are a fixed random rotation (not the axes, which would favour PQ's sub-spaces), and the
    vectors gather around `clusters` centres drawn from the same spectrum, as photos of alike things do.

    `seed` fixes the rotation and centres; `part` the draws, so that a large set can be made part by part.
    """
    shapes = np.random.default_rng([seed, 1])
    scale = np.arange(1, dims + 1, dtype=np.float32) ** (-alpha / 2)
    rotation = np.linalg.qr(shapes.standard_normal((dims, dims)))[0].astype(np.float32)
    centres = shapes.standard_normal((clusters, dims), dtype=np.float32) * scale
    rng = np.random.default_rng([seed, 1, part])
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dims), dtype=np.float32) * scale
    x = x @ rotation
    return x / np.linalg.norm(x, axis=1, keepdims=True)
