"""Step 3: the nearest fine centroid of every pair, its coarse cluster (= expert) and its cosine score.

Writes assign/<shard>.parquet (uid, key, fine, coarse, score), one row per captions row, in the same order,
and assign/summary.json with the number of pairs per fine and per coarse cluster. Shard by shard, so memory
does not grow with the pool.
"""

from __future__ import annotations

import argparse
import hashlib
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mode.core.compute import nearest, normalise
from mode.core.errors import UserError, reading
from mode.core.layout import WorkDir
from mode.core.runner import run_per_shard
from mode.core.shards import atomic_write, expand
from mode.core.step import print_summary, shard_step_arguments
from mode.prep.cluster import load_config

SCHEMA = pa.schema([("uid", pa.string()), ("key", pa.string()), ("fine", pa.int32()), ("coarse", pa.int32()),
                    ("score", pa.float32())])


@lru_cache(maxsize=4)
def _clustering(work_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fine centroids, the same at unit norm, fine_to_coarse) of a work dir, read once per process."""
    wd = WorkDir(work_dir)
    with reading(wd.clusters_dir, "clustering (.npy centroids)"):
        fine = np.load(wd.fine_centroids).astype(np.float32)
        f2c = np.load(wd.fine_to_coarse)
    return fine, normalise(fine), f2c


def nearest_fine(feats: np.ndarray, work_dir: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fine id, coarse id, cosine to the fine centroid) for each row of unit-norm `feats`."""
    fine_centroids, unit, f2c = _clustering(work_dir)
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    fine = nearest(feats, fine_centroids, 1, metric)[1][:, 0]
    score = np.einsum("ij,ij->i", feats, unit[fine])
    return fine.astype(np.int32), f2c[fine].astype(np.int32), score.astype(np.float32)


def _work(work_dir: str, metric: str, n_fine: int, n_coarse: int, path: str, shard_id: str) -> dict:
    wd = WorkDir(work_dir)
    with reading(wd.captions(shard_id), "captions parquet"):
        captions = pq.read_table(wd.captions(shard_id), columns=["uid", "key"])
    with reading(wd.features(shard_id), "features .npy"):
        feats = np.load(wd.features(shard_id))
    if feats.ndim != 2:
        raise UserError(f"{wd.features(shard_id)}: shape {feats.shape}, expected [rows, dim]")
    if len(feats) != captions.num_rows or not np.isfinite(feats).all():
        what = "non-finite values" if len(feats) == captions.num_rows else \
            f"{len(feats)} rows for {captions.num_rows} captions"
        raise UserError(f"{wd.features(shard_id)} has {what}: delete it and its embed stats, and rerun `mode embed`")
    fine, coarse, score = nearest_fine(feats, work_dir, metric)
    table = pa.table([captions.column("uid"), captions.column("key"), pa.array(fine), pa.array(coarse),
                      pa.array(score)], schema=SCHEMA)
    with atomic_write(wd.assignment(shard_id)) as f:
        pq.write_table(table, f)
    return {"processed": len(fine), "kept": len(fine), "skipped": {},
            "counts": {"fine": np.bincount(fine, minlength=n_fine).tolist(),
                       "coarse": np.bincount(coarse, minlength=n_coarse).tolist()}}


def run(shards: str, work_dir: str, rank: int | None = None, world_size: int | None = None,
        workers: int = 1) -> dict:
    """Assign this rank's shards; return the step summary (counts per fine and coarse cluster)."""
    wd = WorkDir(Path(work_dir))
    cfg = load_config(work_dir)
    work = partial(_work, str(wd.root), cfg.metric, cfg.fine, cfg.coarse)
    clusters = hashlib.sha256(wd.fine_centroids.read_bytes() + wd.fine_to_coarse.read_bytes()).hexdigest()[:16]
    return run_per_shard("assign", wd.assign_dir, expand(shards), work, params={"clusters": clusters},
                         rank=rank, world_size=world_size, workers=workers, outputs=lambda i: [wd.assignment(i)])


# --------------------------------------------------------------------------------------------- `mode assign`

def add_arguments(p: argparse.ArgumentParser) -> None:
    shard_step_arguments(p)


def main(args: argparse.Namespace) -> None:
    s = run(args.shards, args.work_dir, args.rank, args.world_size, args.workers)
    print_summary(s)
    if s["complete"]:
        print(f"assign: pairs per expert {s['counts']['coarse']}")
