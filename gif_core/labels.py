"""k-means pseudo-labels ``ℓ`` (FAISS): the classes the probe is trained to predict.

k-means (spherical, since embeddings are unit vectors) runs on a seeded subsample; every sample,
and later every query, gets the id of its nearest centroid.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from .config import LabelConfig
from .errors import CorpusError

log = logging.getLogger(__name__)


def fit_centroids(embeddings: np.ndarray, config: LabelConfig) -> np.ndarray:
    """Train C centroids on at most ``config.sample_size`` rows of ``embeddings`` (N, d).

    Returns:
        (C, d) float32 centroids, unit rows.
    """
    n, d = embeddings.shape
    c = config.resolve(n)
    if n < c:
        raise CorpusError(f"the corpus has {n} samples, fewer than the {c} clusters asked for. "
                          f"Pass --clusters {max(2, n // 4)} or fewer, or add samples.")
    if n < 2:
        raise CorpusError(f"the corpus has {n} sample(s); at least 2 are needed to build an index.")
    rng = np.random.default_rng(config.seed)
    take = rng.choice(n, size=min(n, config.sample_size), replace=False) if n > config.sample_size \
        else np.arange(n)
    x = np.ascontiguousarray(embeddings[np.sort(take)], dtype=np.float32)
    km = faiss.Kmeans(d, c, niter=config.niter, seed=config.seed, spherical=True,
                      min_points_per_centroid=1, max_points_per_centroid=1 << 20, verbose=False)
    km.train(x)
    log.info("k-means: %d clusters on %d of %d samples, objective %.4f", c, len(x), n,
             float(km.obj[-1]) if len(km.obj) else float("nan"))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid (by inner product, rows are unit) of each row; (N,) int64."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    _, ids = index.search(np.ascontiguousarray(embeddings, dtype=np.float32), 1)
    return ids[:, 0].astype(np.int64)
