"""`mode dr-join`: merge DataComp-12M shards with DataCompDR-12M shards into one training set.

DataCompDR-12M is published as reinforcements only (`<key>.paug.json`, `.syn.json`, `.npz`/`.pth.gz`) in
shards named and keyed like DataComp-12M's (`<key>.jpg`, `.txt`, `.json`, ...); its card merges the two with a
shell loop that untars both and tars them together. This does the same per shard pair, in parallel: the output
shard holds, for every key present in both, the members of both (in key order of the image shard).

Checks: a key in only one of the two shards, or whose merged sample lacks a DataCompDR member (synthetic
captions, augmentation parameters, embeddings), is counted and left out (not one reinforced sample is an
error: the wrong folder was given); a member present in both with different bytes is an error for that shard
(the shards do not belong together); after writing, the output is read back and every member compared with
its source, byte for byte. Each output shard gets `<shard>_stats.json`; the step runner keeps its records in
`<out>/_dr_join/` (a killed join redoes only unfinished pairs), and `<out>/dr_join.json` sums the counts.
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter
from functools import partial
from pathlib import Path

from dr import sample as drs
from mode.core.errors import UserError
from mode.core.runner import run_per_shard
from mode.core.shards import expand, iter_tar, tar_stats, tar_writer, write_json, write_tar_stats
from mode.core.step import positive_int, rank_arguments


def _digest(members: dict[str, bytes]) -> dict[str, str]:
    return {ext: hashlib.sha256(data).hexdigest() for ext, data in members.items()}


def _reinforced(members: dict[str, bytes]) -> bool:
    """Whether a sample holds DataCompDR's members: synthetic captions, augmentation parameters, embeddings."""
    return (drs.SYN_MEMBER in members and drs.PAUG_MEMBER in members
            and any(ext in members for ext in drs.EMBEDDING_FORMATS))


def join_pair(base: str, reinforcements: str, out: str) -> dict:
    """Merge one shard pair into `out` and verify it; returns the shard's counts."""
    errors: Counter = Counter()
    extra = dict(iter_tar(reinforcements, errors))
    counts = Counter()
    expected = {}
    with tar_writer(out) as sink:
        for key, members in iter_tar(base, errors):
            if key not in extra:
                counts["only_in_base"] += 1
                continue
            clash = [e for e in members.keys() & extra[key].keys() if members[e] != extra[key][e]]
            if clash:
                raise UserError(f"{base} and {reinforcements}: sample {key} has different {clash[0]!r} members; "
                                "these shards do not belong together")
            merged = {**members, **extra.pop(key)}
            if not _reinforced(merged):
                counts["no_reinforcement"] += 1
                continue
            sink.write(key, merged)
            expected[key] = _digest(merged)
            counts["joined"] += 1
    counts["only_in_reinforcements"] += len(extra)
    written = {key: _digest(members) for key, members in iter_tar(out)}
    if written != expected:
        raise UserError(f"{out}: read back differs from what was written (disk full or a concurrent writer?)")
    write_tar_stats(out, counts["joined"])
    return dict(counts) | {f"bad_tar_{k}": v for k, v in errors.items()}


def run(base: str, reinforcements: str, out: str, workers: int = 1, rank: int | None = None,
        world_size: int | None = None) -> dict:
    """Join every shard of `base` with the same-named shard of `reinforcements` into `out`, through the step
    runner (`out/_dr_join/`: a rerun redoes only unfinished pairs; ranks split the pairs)."""
    base_paths = {Path(p).name: p for p in expand(base)}
    dr_paths = {Path(p).name: p for p in expand(reinforcements)}
    common = sorted(base_paths.keys() & dr_paths.keys())
    if not common:
        raise UserError(f"no shard names in common between {base} and {reinforcements}")
    s = run_per_shard("dr-join", Path(out) / "_dr_join", [base_paths[n] for n in common],
                      partial(_join_work, dr_paths, out), {"reinforcements": reinforcements, "format_version": 1},
                      rank=rank, world_size=world_size, workers=workers,
                      outputs=lambda i: [Path(out) / f"{i}.tar", tar_stats(Path(out) / f"{i}.tar")])
    if s["complete"] and not s.get("joined") and s.get("no_reinforcement"):
        raise UserError(f"no sample of {reinforcements} holds DataCompDR members ({drs.SYN_MEMBER}, "
                        f"{drs.PAUG_MEMBER}, {' or '.join(drs.EMBEDDING_FORMATS)}): --reinforcements must be the "
                        "DataCompDR shards (or `mode dr-generate --only-reinforcements` output)")
    summary = {"shards": len(common), "shards_only_in_base": len(base_paths.keys() - dr_paths.keys()),
               "shards_only_in_reinforcements": len(dr_paths.keys() - base_paths.keys()),
               **{k: v for k, v in s.items() if k not in ("step", "params", "params_hash")}}
    if s["complete"]:
        write_json(Path(out) / "dr_join.json", summary)
    return summary


def _join_work(dr_paths: dict, out: str, path: str, shard_id: str) -> dict:
    name = Path(path).name
    c = join_pair(path, dr_paths[name], str(Path(out) / name))
    skipped = {k: v for k, v in c.items() if k in ("only_in_base", "no_reinforcement") or k.startswith("bad_tar_")}
    return {"processed": c.get("joined", 0) + sum(skipped.values()), "kept": c.get("joined", 0), "skipped": skipped,
            **c}


# ------------------------------------------------------------------------------------------- `mode dr-join`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", required=True, help="the image-text shards (e.g. DataComp-12M)")
    p.add_argument("--reinforcements", required=True, help="the DataCompDR shards (same shard names and keys)")
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=positive_int, default=1)
    rank_arguments(p)


def main(args: argparse.Namespace) -> None:
    s = run(args.shards, args.reinforcements, args.out, args.workers, args.rank, args.world_size)
    print(f"dr-join: {s.get('joined', 0)} samples in {s['shards']} shards -> {args.out} "
          f"({s.get('only_in_base', 0)} only in the shards, {s.get('only_in_reinforcements', 0)} only in the "
          f"reinforcements, {s.get('no_reinforcement', 0)} without DataCompDR members)")
