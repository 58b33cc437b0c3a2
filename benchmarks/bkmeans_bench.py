"""Balanced k-means: ours (mode.prep.bkmeans) vs unbalanced faiss k-means, vs MoDE's own balanced k-means and the
`balanced-kmeans` package on a size they can run.

    python benchmarks/bkmeans_bench.py [--n 262144 --k 1024] [--small-n 19200 --small-k 64] [--niter 20]
        [--mode-kmeans-src DIR] [--skewed]

Large problem: ours vs faiss's unbalanced k-means (what `mode cluster` runs without --balance) on the same
data and iterations: cluster sizes against N/K, quality (mean cosine of each point to its centroid, centroids
normalised), time. Small problem: ours vs the balanced k-means MoDE ran (kernelmachine/balanced-kmeans's
`kmeans_pytorch.KMeans(balanced=True)`, an auction over the full distance matrix; run from a fetched copy of
that repository given with --mode-kmeans-src, which holds its `kmeans_pytorch/` folder; it imports numba) and
vs PyPI `balanced-kmeans` (`kmeans_equal`). Every method runs in its own process, seeded.
Data: cluster_bench.py's unit vectors (d=384) around 4096 random centres; with --skewed the centres' sizes
follow a Zipf law (caption topics are long-tailed), which is where balancing costs quality.
Needs: pip install balanced-kmeans numba.
"""

import argparse
import sys

import numpy as np
from cluster_bench import fit_kmeans_equal, make_data
from common import Timer, in_child, report


def quality(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    c = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return float(np.mean(np.sum(x * c[labels], axis=1)))


def child(method: str, n: int, k: int, niter: int, skewed: bool, src: str) -> None:
    x = make_data(n, skewed=skewed)
    if method == "ours":
        from mode.prep.bkmeans import balanced_kmeans

        with Timer() as t:
            r = balanced_kmeans(x, k, metric="cosine", niter=niter, seed=0)
        centroids, labels, seconds = r.centroids, r.labels, t.seconds
    elif method == "faiss":
        from mode.core.compute import nearest
        from mode.prep.bkmeans import faiss_kmeans

        with Timer() as t:
            centroids = faiss_kmeans(x, k, "cosine", niter, seed=0).centroids
            labels = nearest(x, centroids, 1, "cosine")[1][:, 0]
        seconds = t.seconds
    elif method == "mode":
        sys.path.insert(0, src)
        import torch
        from kmeans_pytorch import KMeans

        np.random.seed(0)
        torch.manual_seed(0)
        km = KMeans(n_clusters=k, device=torch.device("cpu"), balanced=True)
        with Timer() as t:  # as MoDE's prep_hrchy.py calls it for the coarse level (euclidean, not online)
            labels = km.fit(torch.from_numpy(x), distance="euclidean", iter_limit=niter, tqdm_flag=False).numpy()
        centroids, seconds = km.cluster_centers.numpy(), t.seconds
    else:
        centroids, labels, seconds = fit_kmeans_equal(x, k, niter)
    sizes = np.bincount(labels, minlength=k)
    report(seconds=round(seconds, 3), mean_cosine=round(quality(x, centroids, labels), 5),
           size_min=int(sizes.min()), size_max=int(sizes.max()))


def main() -> None:
    if "--child" in sys.argv:
        _, _, method, n, k, niter, skewed, src = sys.argv
        return child(method, int(n), int(k), int(niter), skewed == "1", src)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=262_144)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--small-n", type=int, default=19_200)
    ap.add_argument("--small-k", type=int, default=64)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--mode-kmeans-src", default=None, help="folder holding kernelmachine's kmeans_pytorch/")
    ap.add_argument("--skewed", action="store_true")
    a = ap.parse_args()
    runs = [("ours (balanced)", "ours", a.n, a.k), ("faiss k-means (unbalanced)", "faiss", a.n, a.k),
            ("ours (balanced)", "ours", a.small_n, a.small_k)]
    if a.mode_kmeans_src:
        runs.append(("MoDE's kmeans_pytorch (balanced)", "mode", a.small_n, a.small_k))
    runs.append(("balanced-kmeans kmeans_equal", "package", a.small_n, a.small_k))
    rows = []
    for label, method, n, k in runs:
        r = in_child(__file__, method, str(n), str(k), str(a.niter), "1" if a.skewed else "0",
                     a.mode_kmeans_src or "")
        rows.append((label, n, k, r))
        print(f"{label:34s} n={n:7d} k={k:5d}: {r['seconds']:8.2f}s  mean cosine {r['mean_cosine']:.4f}  "
              f"sizes {r['size_min']}..{r['size_max']} (N/K {n / k:.1f})  peak RSS {r['peak_rss_mb']:7.0f} MB",
              flush=True)
    ours, free, small = rows[0][3], rows[1][3], rows[2][3]
    print(f"large: sizes within {max(a.k * ours['size_max'] / a.n - 1, 1 - a.k * ours['size_min'] / a.n):.2%} "
          f"of N/K; quality ours/faiss {ours['mean_cosine'] / free['mean_cosine']:.4f}; time ours/faiss "
          f"{ours['seconds'] / free['seconds']:.2f}")
    for label, _, _, r in rows[3:]:
        print(f"small: time {label}/ours {r['seconds'] / small['seconds']:.1f} (ours faster when > 1); quality "
              f"ours/{label} {small['mean_cosine'] / r['mean_cosine']:.4f}")


if __name__ == "__main__":
    main()
