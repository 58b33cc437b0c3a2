"""Step 2 (global, world size 1): two-level k-means over the caption embeddings.

1. Fine k-means (faiss; GPU when present) on a seeded sample of the features (rows, or with
   `--sample-shards f` every row of a seeded share f of the shards, as MoDE samples ~5% of its shards):
   `--fine` centroids, spherical (cosine) by default, or Euclidean on the unit-norm features (MoDE's).
2. Coarse k-means over the fine centroids, best of 10 restarts (cheap: it clusters Kf points): each fine
   centroid weighted by its cluster's size, so that experts are sized by data.
With `--balance` both levels are balanced k-means (`mode.prep.bkmeans`, as MoDE clusters): every fine cluster takes
an equal share of the sample and every coarse cluster an equal number of fine clusters, unweighted (MoDE's).

Writes clusters/fine.npy [Kf, d], coarse.npy [Kc, d] (float32, unit norm), fine_to_coarse.npy [Kf] and
summary.json (config, sizes, mean cosine to centroid, iterations, seconds, max/min expert size).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from mode.core.compute import nearest, normalise
from mode.core.errors import UserError, reading
from mode.core.layout import WorkDir
from mode.core.runner import load_json, read_complete_summary, run_global
from mode.core.shards import atomic_write, expand, rank_and_world, shard_ids
from mode.core.step import positive_int, seed_int, shard_step_arguments
from mode.prep.bkmeans import balanced_kmeans, faiss_kmeans

log = logging.getLogger(__name__)
METRICS = ("cosine", "euclidean")


@dataclass(frozen=True)
class ClusterConfig:
    """Everything that determines a clustering; read back by assign, route and ensemble from summary.json."""

    fine: int = 1024
    coarse: int = 4
    metric: str = "cosine"
    balance: bool = False  # balanced k-means at both levels (MoDE's)
    sample_fraction: float | None = None
    sample_shards: float | None = None  # MoDE's sampling: every row of this seeded share of the shards
    max_samples: int | None = None  # default: 256 points per fine centroid
    niter: int = 20
    coarse_niter: int = 50
    coarse_nredo: int = 10  # restarts of the (cheap) coarse k-means; the best objective wins
    seed: int = 0

    def validate(self) -> None:
        """Raise a one-line UserError for a setting no clustering can have."""
        if self.metric not in METRICS:
            raise UserError(f"--metric {self.metric!r}: expected one of {', '.join(METRICS)}")
        if self.coarse < 1 or self.fine < self.coarse:
            raise UserError(f"need 1 <= --coarse ({self.coarse}) <= --fine ({self.fine})")
        for flag, value in (("--niter", self.niter), ("--max-samples", self.max_samples),
                            ("coarse_niter", self.coarse_niter), ("coarse_nredo", self.coarse_nredo)):
            if value is not None and value < 1:
                raise UserError(f"{flag} {value}: must be at least 1")
        for flag, value in (("--sample-fraction", self.sample_fraction), ("--sample-shards", self.sample_shards)):
            if value is not None and not 0 < value <= 1:
                raise UserError(f"{flag} {value}: expected a share in (0, 1]")
        if self.sample_fraction is not None and self.sample_shards is not None:
            raise UserError("--sample-fraction and --sample-shards are two ways to sample: give one")


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
    return faiss_kmeans(x, k, cfg.metric, niter, cfg.seed, weights, nredo)


def _nearest(x: np.ndarray, centroids: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid and its score (cosine for 'cosine', squared L2 for 'euclidean') for each row."""
    cost, idx = nearest(x, centroids, 1, metric)
    return idx[:, 0], (-cost if metric == "cosine" else cost)[:, 0]


def coarse_cluster(fine: np.ndarray, fine_sizes: np.ndarray, cfg: ClusterConfig):
    """Coarse centroids [Kc, d] and fine_to_coarse [Kf]: k-means over the fine centroids weighted by their
    sizes, or with `balance` balanced k-means over them unweighted; best of `coarse_nredo` seeded restarts."""
    if cfg.balance:
        runs = [balanced_kmeans(fine, cfg.coarse, cfg.metric, cfg.coarse_niter, cfg.seed + r, candidates=cfg.coarse)
                for r in range(cfg.coarse_nredo)]
        best = max(runs, key=lambda r: r.objective(fine, cfg.metric))
        return best.centroids.astype(np.float32), best.labels.astype(np.int64), best.iterations
    km = _kmeans(fine, cfg.coarse, cfg, cfg.coarse_niter, weights=fine_sizes.astype(np.float32),
                 nredo=cfg.coarse_nredo)
    f2c, _ = _nearest(fine, km.centroids, cfg.metric)
    return km.centroids.astype(np.float32), f2c.astype(np.int64), len(km.iteration_stats)


def fine_cluster(x: np.ndarray, cfg: ClusterConfig) -> tuple[np.ndarray, np.ndarray, float, int]:
    """(fine centroids, each sampled row's fine cluster, objective, iterations) of the sample `x`."""
    if cfg.balance:
        r = balanced_kmeans(x, cfg.fine, cfg.metric, cfg.niter, cfg.seed)
        return r.centroids, r.labels, r.objective(x, cfg.metric), r.iterations
    km = _kmeans(x, cfg.fine, cfg, cfg.niter)
    fine = normalise(km.centroids) if cfg.metric == "cosine" else km.centroids
    idx, _ = _nearest(x, fine, cfg.metric)
    return fine, idx, float(km.obj[-1]), len(km.iteration_stats)


def _check_rows(wd: WorkDir, ids: list[str]) -> None:
    """Every features file has one row per caption (a file from another run would cluster the wrong rows)."""
    import pyarrow.parquet as pq

    widths = set()
    for i in ids:
        with reading(wd.features(i), "features .npy"):
            shape = np.load(wd.features(i), mmap_mode="r").shape
        if len(shape) != 2:
            raise UserError(f"{wd.features(i)}: expected [rows, dim] features, got shape {shape}; rerun `mode embed`")
        n = shape[0]
        widths.add(shape[1])
        if len(widths) > 1:
            raise UserError(f"{wd.features(i)} has {shape[1]} columns, other shards {min(widths - {shape[1]})}: "
                            "features from another encoder? delete it and its embed stats, and rerun `mode embed`")
        with reading(wd.captions(i), "captions parquet"):
            rows = pq.read_metadata(wd.captions(i)).num_rows
        if n != rows:
            raise UserError(f"{wd.features(i)} has {n} rows for {rows} captions in {wd.captions(i)}: delete it and "
                            "its embed stats, and rerun `mode embed`")


def _sample(paths: list[Path], cfg: ClusterConfig) -> tuple[np.ndarray, int]:
    """(the rows to cluster, float32, and the number of features in all shards)."""
    sizes = [np.load(p, mmap_mode="r").shape[0] for p in paths]
    n_total = sum(sizes)
    if cfg.sample_shards is not None:
        rng = np.random.default_rng(cfg.seed)
        m = max(1, int(round(cfg.sample_shards * len(paths))))
        chosen = np.sort(rng.choice(len(paths), size=m, replace=False))
        x = np.concatenate([np.asarray(np.load(paths[i]), dtype=np.float32) for i in chosen])
        return x, n_total
    n_sample = cfg.max_samples or 256 * cfg.fine
    if cfg.sample_fraction is not None:
        n_sample = int(round(cfg.sample_fraction * n_total))
    return sample_features(paths, n_total, min(n_total, n_sample), cfg.seed), n_total


def run(shards: str, work_dir: str, cfg: ClusterConfig, world_size: int | None = None) -> dict:
    """Cluster the features of every shard; write clusters/ and return its summary.

    A global step (mode.core.runner.run_global): one run per work dir at a time; a rerun with the same config on
    the same features returns the recorded clustering; another config, or features changed since (embed rerun,
    other --shards), is a one-line error; centroids missing or changed are computed again."""
    _, world = rank_and_world(0, world_size)
    if world != 1:
        raise UserError(f"mode cluster is a global step: run it once, not with world size {world}")
    cfg.validate()
    wd = WorkDir(Path(work_dir))
    if WorkDir.summary(wd.clusters_dir).exists():
        done = load_json(WorkDir.summary(wd.clusters_dir), "clustering summary", ("config",))
        if "params_hash" not in done:  # made before clusters had records: the config decides, as it did then
            if _config(done, wd) == cfg:
                return done
            raise UserError(f"{wd.clusters_dir} holds a clustering with another config; use a new --work-dir")
    read_complete_summary(wd.features_dir, "embed", "cluster")
    ids = list(shard_ids(expand(shards)).values())
    inputs = [wd.features_meta, *(wd.features(i) for i in ids)]
    missing = [p for p in inputs if not p.exists()]
    if missing:
        raise UserError(f"{missing[0]} is missing: run `mode embed` on the same --shards")
    return run_global("cluster", wd.clusters_dir, wd.root, asdict(cfg), inputs,
                      [wd.fine_centroids, wd.coarse_centroids, wd.fine_to_coarse], partial(_cluster, wd, ids, cfg))


def _cluster(wd: WorkDir, ids: list[str], cfg: ClusterConfig) -> dict:
    _check_rows(wd, ids)
    paths = [wd.features(i) for i in ids]
    x, n_total = _sample(paths, cfg)
    n_sample = len(x)
    if not np.isfinite(x).all():
        raise UserError(f"{int((~np.isfinite(x).all(axis=1)).sum())} sampled feature rows hold NaN or inf: a features "
                        f"file in {wd.features_dir} is damaged; delete it and its embed stats, and rerun `mode embed`")
    if n_sample < cfg.fine:
        raise UserError(f"{n_sample} sampled features cannot make {cfg.fine} fine clusters; lower --fine")
    x = normalise(x)  # unit norm for both metrics: cosine, and Euclidean on L2-normalised features (MoDE's)
    log.info(f"cluster: {'balanced ' if cfg.balance else ''}fine k-means of {n_sample} of {n_total} features "
             f"into {cfg.fine}")
    fine, idx, fine_objective, fine_iters = fine_cluster(x, cfg)
    fine_sizes = np.bincount(idx, minlength=cfg.fine)
    coarse, f2c, coarse_iters = coarse_cluster(fine, fine_sizes, cfg)
    cos_to_fine = float(np.mean(np.sum(x * normalise(fine)[idx], axis=1)))
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
        "mean_cosine_to_fine": round(cos_to_fine, 5), "fine_objective": fine_objective,
        "fine_iterations": fine_iters, "coarse_iterations": coarse_iters,
    }
    return summary


def load_config(work_dir: str) -> ClusterConfig:
    """The ClusterConfig that made a work dir's clusters."""
    path = WorkDir.summary(WorkDir(Path(work_dir)).clusters_dir)
    if not path.exists():
        raise UserError(f"no clusters in {work_dir}: run `mode cluster` first")
    return _config(load_json(path, "clustering summary", ("config",)), WorkDir(Path(work_dir)))


def _config(summary: dict, wd: WorkDir) -> ClusterConfig:
    try:
        return ClusterConfig(**summary["config"])
    except TypeError:
        raise UserError(f"{WorkDir.summary(wd.clusters_dir)}: its config is not a clustering's: rerun `mode "
                        "cluster` into a new --work-dir") from None


# -------------------------------------------------------------------------------------------- `mode cluster`

def add_arguments(p: argparse.ArgumentParser) -> None:
    shard_step_arguments(p, per_shard=False, workers=False)
    p.add_argument("--fine", type=positive_int, default=1024, help="fine clusters")
    p.add_argument("--coarse", type=positive_int, default=4, help="coarse clusters = experts")
    p.add_argument("--metric", choices=METRICS, default="cosine")
    p.add_argument("--balance", action="store_true",
                   help="balanced k-means at both levels (MoDE's): equal fine clusters, equal fine per coarse")
    p.add_argument("--sample-fraction", type=float, default=None, help="share of the features to train on")
    p.add_argument("--max-samples", type=positive_int, default=None,
                   help="features to train on (default 256 x --fine)")
    p.add_argument("--sample-shards", type=float, default=None, metavar="F",
                   help="train on every feature of a seeded share F of the shards (MoDE: about 0.05)")
    p.add_argument("--niter", type=positive_int, default=20, help="fine k-means iterations")
    p.add_argument("--seed", type=seed_int, default=0)


def config_from_args(args: argparse.Namespace) -> ClusterConfig:
    return ClusterConfig(fine=args.fine, coarse=args.coarse, metric=args.metric, balance=args.balance,
                         sample_fraction=args.sample_fraction, max_samples=args.max_samples,
                         sample_shards=args.sample_shards, niter=args.niter, seed=args.seed)


def main(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    s = run(args.shards, args.work_dir, cfg, args.world_size)
    print(f"cluster: {s['sampled']} of {s['features']} features -> {cfg.fine} fine -> {cfg.coarse} coarse; "
          f"coarse share {s['coarse_share']} (max/min {s['expert_size_max_over_min']}); "
          f"mean cosine to fine centroid {s['mean_cosine_to_fine']}; {s['seconds']:.1f}s")
