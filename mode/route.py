"""Route: one pass over the pool writes every expert's own webdataset shards.

For each input shard, each expert k gets `experts/<k>/shards/<shard>.tar` holding the shard's pairs assigned
to coarse cluster k (same members, same keys) plus, with `--ooc-ratio r`, seeded random pairs assigned
elsewhere, as many as make them a share r of the expert's data (r = 0.02: 2 in 100 pairs are out-of-cluster;
the on-the-fly loader's `--ooc-ratio` means the same). MoDE's loader instead adds r times the number of
out-of-cluster pairs, which gives experts of unequal out-of-cluster shares. The input is read once for all
experts. Each expert's `sizes.json` lets open_clip_train count its samples.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mode.cluster import load_config
from mode.errors import UserError
from mode.layout import WorkDir
from mode.runner import read_complete_summary, run_per_shard
from mode.shards import expand, iter_tar, shard_ids, tar_writer, write_json


def ooc_picks(coarse: np.ndarray, n_experts: int, ratio: float, seed: int, shard_id: str) -> list[np.ndarray]:
    """For each expert, the sorted rows of out-of-cluster pairs it also gets: round(n_in * r / (1 - r)) of them."""
    rng = np.random.default_rng([seed, zlib.crc32(shard_id.encode())])
    picks = []
    for k in range(n_experts):
        out = np.flatnonzero(coarse != k)
        m = min(len(out), int(round((len(coarse) - len(out)) * ratio / (1 - ratio))))
        picks.append(np.sort(rng.choice(out, size=m, replace=False)) if m else np.zeros(0, np.int64))
    return picks


def _work(work_dir: str, n_experts: int, ratio: float, seed: int, path: str, shard_id: str) -> dict:
    wd = WorkDir(work_dir)
    table = pq.read_table(wd.assignment(shard_id), columns=["key", "coarse"])
    keys, coarse = table.column("key").to_pylist(), table.column("coarse").to_numpy()
    targets: dict[str, list[int]] = {k: [int(c)] for k, c in zip(keys, coarse)}
    for k, rows in enumerate(ooc_picks(coarse, n_experts, ratio, seed, shard_id)):
        for r in rows:
            targets[keys[r]].append(k)
    skipped: Counter = Counter()
    processed = 0
    with ExitStack() as stack:
        sinks = [stack.enter_context(tar_writer(wd.expert_shard(k, shard_id))) for k in range(n_experts)]
        for key, members in iter_tar(path, skipped):
            processed += 1
            if key not in targets:
                skipped["unassigned"] += 1
            for k in targets.get(key, ()):
                sinks[k].write(key, members)
    sizes = [s.count for s in sinks]
    in_cluster = np.bincount(coarse, minlength=n_experts).tolist()
    return {"processed": processed, "kept": processed - skipped["unassigned"], "skipped": dict(skipped),
            "sizes": sizes, "in_cluster": in_cluster, "out_of_cluster": [s - i for s, i in zip(sizes, in_cluster)]}


def write_sizes(wd: WorkDir, ids: list[str], n_experts: int) -> None:
    """Each expert's sizes.json ({"<shard>.tar": samples}), from the per-shard stats."""
    per_expert: list[dict[str, int]] = [{} for _ in range(n_experts)]
    for shard_id in ids:
        with open(WorkDir.stats(wd.route_dir, shard_id)) as f:
            sizes = json.load(f)["sizes"]
        for k in range(n_experts):
            per_expert[k][f"{shard_id}.tar"] = sizes[k]
    for k in range(n_experts):
        write_json(wd.expert_shards_dir(k) / "sizes.json", per_expert[k])


def run(shards: str, work_dir: str, ooc_ratio: float = 0.0, seed: int = 0, rank: int | None = None,
        world_size: int | None = None, workers: int = 1) -> dict:
    """Route this rank's shards to the experts; once all shards are done, write every sizes.json."""
    if not 0.0 <= ooc_ratio < 1.0:
        raise UserError(f"--ooc-ratio {ooc_ratio}: expected a fraction in [0, 1)")
    wd = WorkDir(Path(work_dir))
    assign = read_complete_summary(wd.assign_dir, "assign", "route")
    n_experts = load_config(work_dir).coarse
    paths = expand(shards)
    work = partial(_work, str(wd.root), n_experts, ooc_ratio, seed)
    summary = run_per_shard("route", wd.route_dir, paths, work,
                            params={"ooc_ratio": ooc_ratio, "seed": seed, "assign": assign["params_hash"]},
                            rank=rank, world_size=world_size, workers=workers)
    if summary["complete"]:
        write_sizes(wd, list(shard_ids(paths).values()), n_experts)
    return summary
