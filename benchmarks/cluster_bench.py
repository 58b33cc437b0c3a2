"""Fine k-means: ours (faiss, spherical) vs scikit-learn MiniBatchKMeans, both unbalanced.

    python benchmarks/cluster_bench.py [--n 200000] [--k 1024] [--niter 20]

Data: unit vectors (d=384) drawn around 4k random centres, as caption embeddings cluster. Every method runs the
same number of iterations (MiniBatchKMeans: passes over the data) in its own process. Quality is the mean
cosine of each point to its nearest centroid (centroids normalised), which is its assigned one for both
unbalanced methods: inertia against unit centroids would penalise spherical k-means. Balanced k-means is
compared with balanced methods (MoDE's own and the balanced-kmeans package) in bkmeans_bench.py.
Needs: pip install scikit-learn.
"""

import argparse
import sys

import numpy as np
from common import Timer, in_child, report


def make_data(n: int, d: int = 384, centres: int = 4096, seed: int = 0, skewed: bool = False) -> np.ndarray:
    """Unit vectors around random centres; with `skewed` the centres' sizes follow a Zipf law."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d), dtype=np.float32)
    p = None
    if skewed:
        p = 1.0 / np.arange(1, centres + 1)
        p /= p.sum()
    x = np.empty((n, d), np.float32)
    for start in range(0, n, 10_000):  # in chunks, so that the data's temporaries do not dominate peak RSS
        m = min(10_000, n - start)
        picks = rng.choice(centres, size=m, p=p) if skewed else rng.integers(centres, size=m)
        x[start:start + m] = c[picks] + 0.6 * rng.standard_normal((m, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def mean_cosine(x: np.ndarray, centroids: np.ndarray) -> float:
    import faiss

    c = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(c.shape[1])
    index.add(np.ascontiguousarray(c, dtype=np.float32))
    sim, _ = index.search(x, 1)
    return float(sim.mean())


def child(method: str, n: int, k: int, niter: int) -> None:
    x = make_data(n)
    if method == "ours":
        from mode.prep.cluster import ClusterConfig, _kmeans

        with Timer() as t:
            km = _kmeans(x, k, ClusterConfig(fine=k, niter=niter), niter)
        centroids = km.centroids
    elif method == "sklearn":
        from sklearn.cluster import MiniBatchKMeans

        with Timer() as t:
            km = MiniBatchKMeans(n_clusters=k, batch_size=4096, max_iter=niter, n_init=1, random_state=0,
                                 max_no_improvement=None, tol=0.0).fit(x)
        centroids = km.cluster_centers_
    report(seconds=round(t.seconds, 3), mean_cosine=round(mean_cosine(x, centroids), 5))


def main() -> None:
    if "--child" in sys.argv:
        _, _, method, n, k, niter = sys.argv
        return child(method, int(n), int(k), int(niter))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--niter", type=int, default=20)
    a = ap.parse_args()
    rows = []
    for label, method, n, k in (("ours", "ours", a.n, a.k), ("sklearn MiniBatchKMeans", "sklearn", a.n, a.k)):
        r = in_child(__file__, method, str(n), str(k), str(a.niter))
        rows.append((label, n, k, r))
        print(f"{label:26s} n={n:7d} k={k:5d}: {r['seconds']:8.2f}s  mean cosine {r['mean_cosine']:.4f}  "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB", flush=True)
    ours, sk = (r for *_, r in rows)
    print(f"time ratio sklearn/ours {sk['seconds'] / ours['seconds']:.2f} (ours faster when > 1); "
          f"quality ours/sklearn {ours['mean_cosine'] / sk['mean_cosine']:.4f}")


if __name__ == "__main__":
    main()
