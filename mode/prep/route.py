"""Route: one pass over the pool writes every expert's own webdataset shards.

For each input shard, each expert k gets `experts/<k>/shards/<shard>.tar` holding the shard's pairs assigned
to coarse cluster k (same members, same keys) plus, with `--ooc-ratio r`, seeded random pairs assigned
elsewhere: with `--ooc-mode share` (default) as many as make them a share r of the expert's data, with
`additive` (MoDE's) r times the shard's out-of-cluster pairs (`mode.prep.ooc`). The draw is fixed once here, where
MoDE's loader redraws it at every read; the on-the-fly loader (`--expert-data filter`) redraws as MoDE does.
The input is read once for all experts. Each expert's `sizes.json` lets open_clip_train count its samples.
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections import Counter
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mode.core.errors import reading
from mode.core.layout import WorkDir
from mode.core.runner import read_complete_summary, run_per_shard
from mode.core.shards import expand, iter_tar, shard_ids, tar_writer, write_json
from mode.core.step import print_summary, seed_int, shard_step_arguments
from mode.prep import ooc
from mode.prep.cluster import load_config


def ooc_picks(coarse: np.ndarray, n_experts: int, ratio: float, seed: int, shard_id: str,
              mode: str = "share") -> list[np.ndarray]:
    """For each expert, the sorted rows of out-of-cluster pairs it also gets (`mode.prep.ooc.count` of them)."""
    rng = np.random.default_rng([seed, zlib.crc32(shard_id.encode())])
    picks = []
    for k in range(n_experts):
        out = np.flatnonzero(coarse != k)
        m = ooc.count(len(coarse) - len(out), len(out), ratio, mode)
        picks.append(np.sort(rng.choice(out, size=m, replace=False)) if m else np.zeros(0, np.int64))
    return picks


def _work(work_dir: str, n_experts: int, ratio: float, mode: str, seed: int, path: str, shard_id: str) -> dict:
    wd = WorkDir(work_dir)
    with reading(wd.assignment(shard_id), "assignment parquet"):
        table = pq.read_table(wd.assignment(shard_id), columns=["key", "coarse"])
    keys, coarse = table.column("key").to_pylist(), table.column("coarse").to_numpy()
    targets: dict[str, list[int]] = {k: [int(c)] for k, c in zip(keys, coarse)}
    for k, rows in enumerate(ooc_picks(coarse, n_experts, ratio, seed, shard_id, mode)):
        for r in rows:
            targets[keys[r]].append(k)
    skipped: Counter = Counter()
    processed = 0
    with ExitStack() as stack:
        sinks = [stack.enter_context(tar_writer(wd.expert_shard(k, shard_id))) for k in range(n_experts)]
        written: set[str] = set()
        for key, members in iter_tar(path, skipped):
            processed += 1
            if key in written:  # a later sample of the same key (`mode captions` left it out too)
                skipped["duplicate_key"] += 1
                continue
            if key not in targets:
                skipped["unassigned"] += 1
            for k in targets.get(key, ()):
                sinks[k].write(key, members)
            written.add(key)
    sizes = [s.count for s in sinks]
    in_cluster = np.bincount(coarse, minlength=n_experts).tolist()
    kept = processed - skipped["unassigned"] - skipped["duplicate_key"]
    return {"processed": processed, "kept": kept, "skipped": dict(skipped),
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
        world_size: int | None = None, workers: int = 1, ooc_mode: str = "share") -> dict:
    """Route this rank's shards to the experts; once all shards are done, write every sizes.json."""
    ooc.check(ooc_ratio, ooc_mode)
    wd = WorkDir(Path(work_dir))
    assign = read_complete_summary(wd.assign_dir, "assign", "route")
    n_experts = load_config(work_dir).coarse
    paths = expand(shards)
    work = partial(_work, str(wd.root), n_experts, ooc_ratio, ooc_mode, seed)
    params = {"ooc_ratio": ooc_ratio, "seed": seed, "assign": assign["params_hash"]}
    if ooc_mode != "share":  # (outputs made before --ooc-mode existed keep their hash)
        params["ooc_mode"] = ooc_mode
    summary = run_per_shard("route", wd.route_dir, paths, work, params=params,
                            rank=rank, world_size=world_size, workers=workers,
                            outputs=lambda i: [wd.expert_shard(k, i) for k in range(n_experts)])
    if summary["complete"]:
        write_sizes(wd, list(shard_ids(paths).values()), n_experts)
    return summary


# ---------------------------------------------------------------------------------------------- `mode route`

def add_arguments(p: argparse.ArgumentParser) -> None:
    shard_step_arguments(p)
    p.add_argument("--ooc-ratio", type=float, default=0.0,
                   help="out-of-cluster pairs each expert also gets (MoDE: 0.02); see --ooc-mode")
    p.add_argument("--ooc-mode", choices=ooc.OOC_MODES, default="share",
                   help="share: r is their share of the expert's data; additive (MoDE's loader): r times each "
                        "shard's pairs of other clusters are added")
    p.add_argument("--seed", type=seed_int, default=0)


def main(args: argparse.Namespace) -> None:
    s = run(args.shards, args.work_dir, args.ooc_ratio, args.seed, args.rank, args.world_size, args.workers,
            ooc_mode=args.ooc_mode)
    print_summary(s)
    if s["complete"]:
        print(f"route: samples per expert {s['sizes']} (out-of-cluster {s['out_of_cluster']})")
