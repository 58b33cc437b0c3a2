"""Step 2 (global, world size 1): two-level k-means over the caption embeddings.

1. Fine k-means (faiss; GPU when present) on a seeded sample of the features: `--fine` centroids, spherical
   (cosine) by default as MoDE clusters unit-norm SimCSE features, or plain Euclidean.
2. Coarse k-means over the fine centroids, each weighted by its fine cluster's size so that experts are
   sized by data, best of 10 restarts (cheap: it clusters Kf points). `--balance` then reassigns fine
   clusters so that the coarse clusters hold near-equal numbers of pairs (MoDE trains on balanced clusters).

Writes clusters/fine.npy [Kf, d], coarse.npy [Kc, d] (float32, unit norm), fine_to_coarse.npy [Kf] and
summary.json (config, sizes, mean cosine to centroid, iterations, seconds, max/min expert size).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mode.errors import UserError
from mode.layout import WorkDir
from mode.runner import read_complete_summary
from mode.shards import atomic_write, expand, rank_and_world, shard_ids, write_json

log = logging.getLogger(__name__)
METRICS = ("cosine", "euclidean")


@dataclass(frozen=True)
class ClusterConfig:
    """Everything that determines a clustering; read back by assign, route and ensemble from summary.json."""

    fine: int = 1024
    coarse: int = 4
    metric: str = "cosine"
    balance: bool = False
    sample_fraction: float | None = None
    max_samples: int | None = None  # default: 256 points per fine centroid
    niter: int = 20
    coarse_niter: int = 50
    coarse_nredo: int = 10  # restarts of the (cheap) coarse k-means; the best objective wins
    seed: int = 0


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def sample_features(paths: list[Path], n_total: int, n_sample: int, seed: int) -> np.ndarray:
    """A uniform sample without replacement of `n_sample` rows from the shards' features, as float32."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n_total, size=n_sample, replace=False))
    out, offset, at = [], 0, 0
    for p in paths:
        feats = np.load(p, mmap_mode="r")
        end = offset + len(feats)
        stop = np.searchsorted(chosen, end, side="left")
        if stop > at:
            out.append(np.asarray(feats[chosen[at:stop] - offset], dtype=np.float32))
        at, offset = stop, end
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _kmeans(x: np.ndarray, k: int, cfg: ClusterConfig, niter: int, weights: np.ndarray | None = None,
            nredo: int = 1):
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=nredo, seed=cfg.seed, spherical=cfg.metric == "cosine",
                      gpu=faiss.get_num_gpus() > 0, max_points_per_centroid=max(256, len(x) // k + 1),
                      min_points_per_centroid=1, verbose=False)
    km.train(np.ascontiguousarray(x, dtype=np.float32), weights=weights)
    return km


def _nearest(x: np.ndarray, centroids: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid and its score (cosine for 'cosine', squared L2 for 'euclidean') for each row."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    score, idx = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return idx[:, 0], score[:, 0]


def balanced_assign(sim: np.ndarray, weights: np.ndarray, slack: float = 0.05) -> np.ndarray:
    """Assign items (fine clusters) to groups (coarse clusters) so that group weights stay near-equal.

    Greedy: the items with the most to lose (best minus second-best similarity) choose first, each taking its
    most similar group that still has room; room is total weight / groups * (1 + slack), and an item heavier
    than any room left goes to the emptiest group.

    Args:
        sim: [items, groups] similarity (higher is closer).
        weights: [items] pairs per item.
        slack: how far above the equal share a group may grow.
    """
    n_items, n_groups = sim.shape
    cap = weights.sum() / n_groups * (1 + slack)
    order_sim = np.sort(sim, axis=1)
    regret = order_sim[:, -1] - (order_sim[:, -2] if n_groups > 1 else 0)
    load = np.zeros(n_groups)
    out = np.empty(n_items, np.int64)
    for i in np.lexsort((-weights, -regret)):
        for g in np.argsort(-sim[i], kind="stable"):
            if load[g] + weights[i] <= cap:
                break
        else:
            g = int(np.argmin(load))
        out[i] = g
        load[g] += weights[i]
    return out


def coarse_cluster(fine: np.ndarray, fine_sizes: np.ndarray, cfg: ClusterConfig):
    """Coarse centroids [Kc, d] and fine_to_coarse [Kf] from the fine centroids weighted by their sizes."""
    km = _kmeans(fine, cfg.coarse, cfg, cfg.coarse_niter, weights=fine_sizes.astype(np.float32),
                 nredo=cfg.coarse_nredo)
    centroids = km.centroids
    f2c, _ = _nearest(fine, centroids, cfg.metric)
    if cfg.balance:
        for _ in range(10):  # alternate balanced assignment and centroid update until stable
            sim = fine @ centroids.T if cfg.metric == "cosine" else -(
                (fine[:, None, :] - centroids[None]) ** 2).sum(-1)
            new = balanced_assign(sim, fine_sizes.astype(np.float64))
            centroids = np.stack([np.average(fine[new == g], axis=0, weights=fine_sizes[new == g] + 1e-9)
                                  if (new == g).any() else centroids[g] for g in range(cfg.coarse)])
            if cfg.metric == "cosine":
                centroids = _normalise(centroids)
            if np.array_equal(new, f2c):
                break
            f2c = new
    return centroids.astype(np.float32), f2c.astype(np.int64), len(km.iteration_stats)


def run(shards: str, work_dir: str, cfg: ClusterConfig, world_size: int | None = None) -> dict:
    """Cluster the features of every shard; write clusters/ and return its summary."""
    _, world = rank_and_world(0, world_size)
    if world != 1:
        raise UserError(f"mode cluster is a global step: run it once, not with world size {world}")
    if cfg.metric not in METRICS:
        raise UserError(f"--metric {cfg.metric!r}: expected one of {', '.join(METRICS)}")
    if cfg.coarse < 1 or cfg.fine < cfg.coarse:
        raise UserError(f"need 1 <= --coarse ({cfg.coarse}) <= --fine ({cfg.fine})")
    start = time.perf_counter()
    wd = WorkDir(Path(work_dir))
    if WorkDir.summary(wd.clusters_dir).exists():
        with open(WorkDir.summary(wd.clusters_dir)) as f:
            done = json.load(f)
        if done["config"] == asdict(cfg):
            log.info(f"cluster: {wd.clusters_dir} already holds this clustering, skipped")
            return done
        raise UserError(f"{wd.clusters_dir} holds a clustering with another config; use a new --work-dir")
    read_complete_summary(wd.features_dir, "embed", "cluster")
    paths = [wd.features(i) for i in shard_ids(expand(shards)).values()]
    n_total = sum(np.load(p, mmap_mode="r").shape[0] for p in paths)
    n_sample = cfg.max_samples or 256 * cfg.fine
    if cfg.sample_fraction is not None:
        n_sample = int(round(cfg.sample_fraction * n_total))
    n_sample = min(n_total, n_sample)
    if n_sample < cfg.fine:
        raise UserError(f"{n_sample} sampled features cannot make {cfg.fine} fine clusters; lower --fine")
    x = sample_features(paths, n_total, n_sample, cfg.seed)
    if cfg.metric == "cosine":
        x = _normalise(x)
    log.info(f"cluster: fine k-means of {n_sample} of {n_total} features into {cfg.fine}")
    km = _kmeans(x, cfg.fine, cfg, cfg.niter)
    fine = _normalise(km.centroids) if cfg.metric == "cosine" else km.centroids
    idx, _ = _nearest(x, fine, cfg.metric)
    fine_sizes = np.bincount(idx, minlength=cfg.fine)
    coarse, f2c, coarse_iters = coarse_cluster(fine, fine_sizes, cfg)
    cos_to_fine = float(np.mean(np.sum(x * _normalise(fine)[idx], axis=1)))
    for path, arr in ((wd.fine_centroids, fine.astype(np.float32)), (wd.coarse_centroids, coarse),
                      (wd.fine_to_coarse, f2c)):
        with atomic_write(path) as f:
            np.save(f, arr)
    coarse_sizes = np.bincount(f2c, weights=fine_sizes, minlength=cfg.coarse).astype(int)
    share = coarse_sizes / max(1, coarse_sizes.sum())
    summary = {
        "config": asdict(cfg), "features": n_total, "sampled": n_sample,
        "fine_sizes": fine_sizes.tolist(), "coarse_sizes_sampled": coarse_sizes.tolist(),
        "coarse_share": [round(float(s), 4) for s in share],
        "expert_size_max_over_min": round(float(share.max() / max(share.min(), 1e-12)), 3),
        "mean_cosine_to_fine": round(cos_to_fine, 5), "fine_objective": float(km.obj[-1]),
        "fine_iterations": len(km.iteration_stats), "coarse_iterations": coarse_iters,
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(WorkDir.summary(wd.clusters_dir), summary)
    return summary


def load_config(work_dir: str) -> ClusterConfig:
    """The ClusterConfig that made a work dir's clusters."""
    path = WorkDir.summary(WorkDir(Path(work_dir)).clusters_dir)
    if not path.exists():
        raise UserError(f"no clusters in {work_dir}: run `mode cluster` first")
    with open(path) as f:
        return ClusterConfig(**json.load(f)["config"])
