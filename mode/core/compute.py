"""Numeric helpers shared by the steps: row normalisation and faiss nearest-centroid search."""

from __future__ import annotations

import numpy as np

METRICS = ("cosine", "euclidean")


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), in x's float dtype."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest(x: np.ndarray, centroids: np.ndarray, m: int = 1, metric: str = "cosine",
            batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cost [n, m], centroid ids [n, m]) of each row's m nearest centroids, nearest first.

    The cost is -inner product for `cosine` (rows and centroids as given: unit-norm makes it -cosine) and the
    squared L2 distance for `euclidean`. faiss, on every GPU when there are any; `batch_size` rows per search.
    """
    import faiss

    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: expected one of {METRICS}")
    d = centroids.shape[1]
    index = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    step = batch_size or max(1, len(x))
    cost, ids = np.empty((len(x), m), np.float32), np.empty((len(x), m), np.int64)
    for i in range(0, len(x), step):
        score, idx = index.search(np.ascontiguousarray(x[i:i + step], dtype=np.float32), m)
        cost[i:i + step], ids[i:i + step] = (-score if metric == "cosine" else score), idx
    return cost, ids
