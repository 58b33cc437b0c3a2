"""Run a per-shard step for one rank: split, skip what is complete, record stats, summarise.

A step provides `work(path, shard_id) -> stats`, which writes that shard's outputs atomically and returns
`{"processed": n, "kept": n, "skipped": {reason: n}, ...}`. The runner writes the stats file after the
outputs (so it marks completion), never redoes a complete shard, refuses outputs made with other parameters,
and merges every complete shard's stats into the step's `summary.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from tqdm import tqdm

from mode.core.errors import UserError, reading
from mode.core.layout import WorkDir
from mode.core.lock import holding, params_claim
from mode.core.parallel import process_pool
from mode.core.shards import atomic_write, for_rank, overlaps, rank_and_world, shard_ids, write_json

log = logging.getLogger(__name__)


def params_hash(params: dict) -> str:
    """A short hash of a step's parameters, stored with each output so stale ones are detected."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def merge_stats(items: list[dict]) -> dict:
    """Add up stats dicts: numbers add, dicts merge key by key, lists add element-wise."""
    out: dict = {}
    for item in items:
        _merge_into(out, item)
    return out


def _merge_into(out: dict, item: dict) -> None:
    for key, value in item.items():
        if isinstance(value, dict):
            _merge_into(out.setdefault(key, {}), value)
        elif isinstance(value, list):
            prev = out.get(key, [0] * len(value))
            out[key] = [a + b for a, b in zip(prev, value)]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = out.get(key, 0) + value


def _timed(work: Callable[[str, str], dict], item: tuple[str, str]) -> tuple[str, dict]:
    path, shard_id = item
    start = time.perf_counter()
    stats = work(path, shard_id)
    stats["seconds"] = round(time.perf_counter() - start, 3)
    return shard_id, stats


def run_per_shard(step: str, step_dir: Path, shard_paths: list[str], work: Callable[[str, str], dict],
                  params: dict, rank: int | None = None, world_size: int | None = None, workers: int = 1,
                  outputs: Callable[[str], list[Path]] | None = None, apart: bool = True,
                  hint: str = "use a new --work-dir or delete that folder", drop_stale: bool = False) -> dict:
    """Process this rank's incomplete shards with `work`; return the step's summary.

    Args:
        step: the step's name, for logs and the summary.
        step_dir: where the stats files and summary.json go.
        shard_paths: all the pool's shards (every rank passes the same list).
        work: a picklable `work(path, shard_id) -> stats`; it must write its outputs atomically.
        params: everything that determines the outputs; their hash must match existing outputs'.
        rank, world_size: this process's share; None reads torchrun's or SLURM's environment.
        workers: processes for this rank (1 runs in this process).
        outputs: the files `work` writes for a shard id; their sizes go into the shard's stats, and a shard
            counts as complete only while they are all there with those sizes (else it is redone).
        apart: refuse a step dir whose parent overlaps an input folder (steps whose outputs are shards that a
            later step could take as input); the filter's parts are never read as input and pass False.
        hint: what the refusal of outputs made with other parameters tells the user to do.
        drop_stale: instead of that refusal, forget every shard done with other parameters (all ranks' shards:
            no run with those is alive then), so it is redone by its rank (a step's "reprocess").
    """
    rank, world_size = rank_and_world(rank, world_size)
    if apart:
        check_apart(step_dir.parent, shard_paths)
    ids = shard_ids(shard_paths)
    digest = params_hash(params)
    step_dir.mkdir(parents=True, exist_ok=True)
    # a run with other parameters may not share the step's outputs while this one is alive, whatever the ranks
    on_change = partial(_check_params, step_dir, digest, hint, drop_stale)
    with params_claim(step_dir, digest, f"`mode {step}`", on_change=on_change):
        with holding(step_dir, f"{step}-rank{rank}-of{world_size}", f"`mode {step}` (rank {rank} of {world_size})"):
            _run_mine(step, step_dir, shard_paths, work, digest, ids, rank, world_size, workers, outputs)
        return write_summary(step, step_dir, ids.values(), params, digest)


def _run_mine(step, step_dir, shard_paths, work, digest, ids, rank, world_size, workers, outputs) -> None:
    mine = for_rank(shard_paths, rank, world_size)
    if not mine:
        log.warning(f"{step}: rank {rank} of {world_size} has no shards")
    todo = [(p, ids[p]) for p in mine if not is_complete(step_dir, ids[p])]
    if len(todo) < len(mine):
        log.info(f"{step}: {len(mine) - len(todo)} of {len(mine)} shards already complete, skipped")
    pool = process_pool(workers) if workers > 1 and len(todo) > 1 else None
    results = pool.map(partial(_timed, work), todo) if pool else map(partial(_timed, work), todo)
    try:
        for shard_id, stats in tqdm(results, total=len(todo), desc=step, unit="shard",
                                    disable=not todo or rank != 0):
            files = outputs(shard_id) if outputs else ()
            written = {os.path.relpath(o, step_dir): os.path.getsize(o) for o in files}
            write_json(WorkDir.stats(step_dir, shard_id), {**stats, "params_hash": digest, "outputs": written})
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)


def check_apart(root: Path, shard_paths: list[str]) -> None:
    """Outputs and inputs in separate trees: a work dir inside a shard folder, or shards inside the work dir (its
    routed shards given as input), would let one step's outputs become another's input or overwrite it."""
    for folder in sorted({Path(p).resolve().parent for p in shard_paths}):
        if overlaps(root, folder):
            raise UserError(f"the work dir {root} and the input shards in {folder} overlap: keep the work dir "
                            "outside the pool")


def is_complete(step_dir: Path, shard_id: str) -> bool:
    """A shard is complete when its stats file exists and every output it lists is there with its size; a
    shard whose outputs went missing or changed loses its stats file and is redone."""
    path = WorkDir.stats(step_dir, shard_id)
    if not path.exists():
        return False
    record = load_json(path, "shard record")
    if not outputs_intact(step_dir, record):
        log.warning(f"an output of shard {shard_id} in {step_dir} is missing or changed since it was written: "
                    "redoing it")
        path.unlink()
        return False
    return True


def _check_params(step_dir: Path, digest: str, hint: str = "use a new --work-dir or delete that folder",
                  drop: bool = False) -> None:
    """Every shard done in the folder, not only this run's (an earlier run on other --shards with other
    parameters would otherwise be counted complete beside this one's)."""
    for path in sorted(step_dir.glob("*.stats.json")):
        with reading(path, "shard record (json)"):
            record = json.loads(path.read_text())
        stale = not isinstance(record, dict) or record.get("params_hash") != digest
        if stale and drop:
            path.unlink()
        elif stale:
            raise UserError(f"{step_dir} holds outputs made with other parameters (e.g. {path.name}); {hint}")


def write_summary(step: str, step_dir: Path, all_ids, params: dict, digest: str) -> dict:
    """Merge the stats of every complete shard into `summary.json` (complete once all shards are).

    Ranks that finish together may interleave; each rewrites until the set of stats files it merged is still
    the whole set after its write, so the last write always includes every shard finished before it.
    """
    all_ids = list(all_ids)
    while True:
        present = [i for i in all_ids if WorkDir.stats(step_dir, i).exists()]
        summary = _summarise(step, step_dir, all_ids, present, params, digest)
        if sum(WorkDir.stats(step_dir, i).exists() for i in all_ids) == len(present):
            return summary


def _summarise(step: str, step_dir: Path, all_ids: list, present: list, params: dict, digest: str) -> dict:
    done = []
    for shard_id in present:
        with open(WorkDir.stats(step_dir, shard_id)) as f:
            done.append(json.load(f))
    totals = merge_stats([{k: v for k, v in s.items() if k not in ("params_hash", "outputs")} for s in done])
    summary = {"step": step, "params": params, "params_hash": digest, "shards_total": len(all_ids),
               "shards_done": len(done), "complete": len(done) == len(all_ids),
               "processed": 0, "kept": 0, "skipped": {}, **totals}
    summary["seconds"] = round(summary.get("seconds", 0.0), 3)
    write_json(WorkDir.summary(step_dir), summary)
    return summary


def inputs_hash(paths: Iterable[Path]) -> str:
    """A cheap fingerprint of a step's input files: their names and sizes, in order."""
    return params_hash({"inputs": [[Path(p).name, Path(p).stat().st_size] for p in paths]})


def read_record(path: Path) -> dict | None:
    """A global step's record, or None where there is none or it is not a finished one (a run stopped early)."""
    try:
        with open(path) as f:
            done = json.load(f)
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) and "params_hash" in done else None


def run_global(step: str, step_dir: Path, lock_dir: Path, params: dict, inputs: list[Path],
               outputs: list[Path] | Callable[[], list[Path]], work: Callable[[], dict], *,
               record: Path | None = None, lock_name: str | None = None, replace: bool = False,
               hint: str = "use a new --work-dir", wait: bool = False, force: bool = False,
               timed: bool = True) -> dict:
    """A step that runs once over all its inputs (cluster, reshard, toy, download), with the per-shard steps'
    guarantees.

    One run per `lock_dir` + `lock_name` (default: the step) at a time (`wait`: a second run waits for the first
    and then finds its result, for callers that race by design, e.g. training ranks making a toy pool). Done
    when the record (default `step_dir/summary.json`) holds the same params hash, the same inputs (names and
    sizes) and every output with its recorded size; then it is returned without work. Outputs missing or
    changed, or a record of a run that stopped early: the step runs again. Other params or inputs: a one-line
    error ending in `hint` (the outputs belong to another run and later steps may have been made from them),
    unless `replace` (the user's --overwrite, or a step like download that only adds to what is there): then
    the step runs again.
    `force` runs it even when done (download's --overwrite_metadata). `outputs` may be a callable, for steps
    that learn their outputs as they write them; `work` returns the step's summary, to which the record's fields
    are added, and its `seconds` unless not `timed` (a record that must be the same bytes for the same run). A
    work that stops with a UserError without writing a record of its own, its outputs as they were,
    gets the previous record back: a refused or failed run changes nothing.
    """
    digest, inputs_digest = params_hash(params), inputs_hash(inputs)
    path = record or WorkDir.summary(step_dir)
    with holding(lock_dir, lock_name or step, f"`mode {step}`", wait):
        done = read_record(path)
        if done is not None:
            other = ("with another config" if done.get("params_hash") != digest else
                     "from other inputs (an earlier step was rerun, or other input files)"
                     if done.get("inputs_hash") != inputs_digest else None)
            if other and not replace:
                raise UserError(f"{step_dir} holds a {step} made {other}; {hint}")
            intact = outputs_intact(step_dir, done)
            if not other and intact and not force:
                log.info(f"{step}: {step_dir} already holds this result, skipped")
                return done
            if not other and not intact:
                log.warning(f"{step}: outputs in {step_dir} are missing or changed since they were written: "
                            "running again")
            previous = path.read_bytes()
            path.unlink()
        start = time.perf_counter()
        try:
            summary = work()
        except UserError:
            if done is not None and not path.exists() and outputs_intact(step_dir, done):
                with atomic_write(path) as f:
                    f.write(previous)
            raise
        files = outputs() if callable(outputs) else outputs
        summary.update(step=step, params=params, params_hash=digest, inputs_hash=inputs_digest,
                       outputs={os.path.relpath(o, step_dir): os.path.getsize(o) for o in files})
        if timed:
            summary["seconds"] = round(time.perf_counter() - start, 3)
        write_json(path, summary)
        return summary


def outputs_intact(step_dir: Path, record: dict) -> bool:
    """Every output a global step's record lists is there with its recorded size."""
    return all((step_dir / rel).exists() and (step_dir / rel).stat().st_size == size
               for rel, size in record.get("outputs", {}).items())


def load_json(path: Path, what: str, keys: tuple[str, ...] = ()) -> dict:
    """A json object the tool wrote, with `keys`; a cut, hand-edited or foreign one is one line naming it."""
    with reading(path, what):
        value = json.loads(Path(path).read_text())
    missing = [k for k in keys if k not in value] if isinstance(value, dict) else list(keys) or ["an object"]
    if missing:
        raise UserError(f"{path}: not a {what} this tool wrote (no {missing[0]!r}): rerun the step that writes it")
    return value


def read_complete_summary(step_dir: Path, step: str, before: str) -> dict:
    """The summary of an earlier step, which must be complete; else a UserError saying what to run."""
    path = WorkDir.summary(step_dir)
    if not path.exists():
        raise UserError(f"no {step} output in {step_dir}: run `mode {step}` first ({before} needs it)")
    summary = load_json(path, f"`mode {step}` summary", ("shards_total", "shards_done", "params", "params_hash"))
    if not summary.get("complete"):  # ranks that finished together may have raced on summary.json: recount
        stats = sorted(step_dir.glob("*.stats.json"))
        if len(stats) == summary["shards_total"]:
            ids = [p.name[: -len(".stats.json")] for p in stats]
            summary = write_summary(step, step_dir, ids, summary["params"], summary["params_hash"])
    if not summary.get("complete"):
        raise UserError(f"`mode {step}` is incomplete ({summary['shards_done']} of {summary['shards_total']} "
                        f"shards): finish it before `mode {before}`")
    return summary
