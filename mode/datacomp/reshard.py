"""`mode reshard`: write a subset of a pool as new webdataset shards, with DataComp's resharder semantics.

Only samples whose uid is in the subset are written, and a uid listed n times in the subset is written n times.
Output: `<out>/{00000000..}.tar` of `--shard-size` samples (keys renumbered so repeats stay distinct samples),
`<out>/<shard>_stats.json`, `sizes.json`, `sample_ids.npy` (the uid of every output sample, in order) and
`meta.json` (`output_shard_count`, `output_shard_format`, ...), which `--data-dir` reads. Input shards are read
in parallel into per-shard parts, then packed in input order (with `--workers` > 1; one worker streams
straight from the inputs into the output shards); samples without a json uid are counted and skipped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mode.core.errors import UserError
from mode.core.lock import holding
from mode.core.parallel import pool_map
from mode.core.shards import (
    RESHARD_MARKER,
    atomic_write,
    expand,
    iter_tar,
    overlaps,
    shard_ids,
    write_json,
    write_tar,
    write_tar_stats,
)
from mode.core.step import positive_int
from mode.core.uids import UID_DTYPE, NoUid, UidSet, hex_to_pairs, load_subset, sample_uid

SHARD_FORMAT = "{:08d}.tar"
MARKER = RESHARD_MARKER  # written first: `--overwrite` replaces only folders that hold it


def _check_output(out: Path, spec: str, paths: list[str], subset: str) -> None:
    """Refuse an output folder that is, holds or lies inside an input (shards, their folders, the subset)."""
    roots = {Path(part).resolve() for part in spec.split("::") if Path(part).is_dir()}
    roots |= {Path(p).resolve().parent for p in paths}
    for root in sorted(roots):
        if overlaps(out, root):
            raise UserError(f"output {out} overlaps the input {root}: choose an output outside the pool")
    if out.resolve() in Path(subset).resolve().parents:
        raise UserError(f"output {out} holds the subset file {subset}: choose another output")


def _is_old_reshard(out: Path) -> bool:
    """A complete output of an earlier version of this tool (before the marker file): its meta.json says so."""
    try:
        return "output_shard_format" in json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return False


@lru_cache(maxsize=1)
def _subset_lookup(subset_path: str) -> tuple[UidSet, np.ndarray]:
    """The subset's distinct uids and how often each is listed; built once per worker process, not per shard."""
    uniq, counts = np.unique(load_subset(subset_path), return_counts=True)
    return UidSet(uniq), counts


def _selected(subset_path: str, path: str, result: dict) -> Iterator[tuple[str, dict]]:
    """One input shard's samples that are in the subset, each as many times as listed; counts into `result`."""
    members, counts = _subset_lookup(subset_path)
    skipped = Counter()
    result.update(written=0, uids=[], skipped=skipped)
    for key, sample in iter_tar(path, skipped):
        try:
            uid = sample_uid(sample)
        except NoUid as e:
            skipped[e.reason] += 1
            continue
        pos = members.position(uid)
        for r in range(int(counts[pos]) if pos >= 0 else 0):
            yield f"{key}_{r}", sample
            result["uids"].append(uid)
            result["written"] += 1


def _select(subset_path: str, parts_dir: str, item: tuple[str, str]) -> dict:
    """Write one input shard's selected samples to a part tar (parallel runs; packed in order afterwards)."""
    path, part = item
    result = {"part": part}
    write_tar(Path(parts_dir) / f"{part}.tar", _selected(subset_path, path, result))
    return {**result, "skipped": dict(result["skipped"])}


def _streamed(subset_path: str, paths: list[str], results: list[dict]) -> Iterator[tuple[str, dict]]:
    """With one worker: the selected samples of every input shard in order, with no part tars in between."""
    for path in tqdm(paths, desc="reshard", unit="shard"):
        results.append({})
        yield from _selected(subset_path, path, results[-1])


def run(inputs: str, output_dir: str, subset: str, shard_size: int = 10000, workers: int = 1,
        overwrite: bool = False) -> dict:
    """Reshard the samples of `subset` from `inputs` into `output_dir`; returns the summary. One run per output
    folder at a time (the lock lies beside the folder, which --overwrite replaces)."""
    if shard_size < 1:
        raise UserError("--shard-size must be positive")
    load_subset(subset)  # checks dtype and order once, with a clear error
    paths = expand(inputs)
    _check_output(Path(output_dir), inputs, paths, subset)  # before anything is written, the lock included
    out = Path(output_dir).resolve()
    with holding(out.parent, f"reshard-{out.name}", "`mode reshard`"):
        return _run(paths, output_dir, subset, shard_size, workers, overwrite)


def _run(paths: list[str], output_dir: str, subset: str, shard_size: int, workers: int, overwrite: bool) -> dict:
    out = Path(output_dir)
    start = time.perf_counter()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} is not empty; pass --overwrite to replace it")
        if not (out / MARKER).exists() and not _is_old_reshard(out):
            raise UserError(f"--overwrite: {out} was not written by `mode reshard` (no {MARKER}); remove it yourself "
                            "or choose another output")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by mode reshard; --overwrite may replace this folder\n")
    parts_dir = out / ".parts"
    parts_dir.mkdir(parents=True)
    results: list[dict] = []
    if workers > 1:  # select in parallel into part tars, then pack them in input order
        ids = shard_ids(paths)
        work = partial(_select, subset, str(parts_dir))
        items = [(p, ids[p]) for p in paths]
        results = list(tqdm(pool_map(work, items, workers), total=len(items), desc="reshard: select", unit="shard"))
        samples = (s for res in results for s in iter_tar(parts_dir / f"{res['part']}.tar"))
    else:
        samples = _streamed(subset, paths, results)
    sizes, n_out = {}, 0
    while (first := next(samples, None)) is not None:  # stream: never more than one sample in memory
        name = SHARD_FORMAT.format(n_out)
        batch = itertools.chain([first], itertools.islice(samples, shard_size - 1))
        count = write_tar(out / name, ((f"{n_out:08d}{i:05d}", members) for i, (_, members) in enumerate(batch)))
        write_tar_stats(out / name, count)
        sizes[name], n_out = count, n_out + 1
    sample_ids = [u for res in results for u in res["uids"]]
    shutil.rmtree(parts_dir)
    with atomic_write(out / "sample_ids.npy") as f:
        np.save(f, hex_to_pairs(sample_ids) if sample_ids else np.zeros(0, UID_DTYPE))
    write_json(out / "sizes.json", sizes)
    skipped = sum((Counter(r["skipped"]) for r in results), Counter())
    summary = {"input_shards": len(paths), "output_shard_count": n_out, "output_shard_format": SHARD_FORMAT,
               "shard_size": shard_size, "samples": len(sample_ids), "skipped": dict(skipped),
               "subset": str(subset), "seconds": round(time.perf_counter() - start, 3)}
    write_json(out / "meta.json", summary)  # written last: a complete reshard has meta.json
    return summary


# ------------------------------------------------------------------------------------------- `mode reshard`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", required=True, help="input shards: dir, brace pattern, '::' list")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("-s", "--subset", required=True, help="sorted u8,u8 uid .npy")
    p.add_argument("--shard-size", type=positive_int, default=10000)
    p.add_argument("--workers", type=positive_int, default=1)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")


def main(args: argparse.Namespace) -> None:
    s = run(args.input, args.output, args.subset, args.shard_size, args.workers, args.overwrite)
    print(f"reshard: {s['samples']} samples in {s['output_shard_count']} shards -> {args.output}")
