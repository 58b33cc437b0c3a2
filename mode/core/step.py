"""The step protocol: every `mode` command is one module with `add_arguments(parser)` and `main(args)`, listed
once in `mode.cli.STEPS` with what it reads and writes; its Python API is the module's `run(...)`, which the
CLI, run_mode.sh (through the CLI) and tests all call. Data-writing per-shard steps run through
`mode.core.runner.run_per_shard` (resumable, atomic outputs, summary with skipped-by-reason counts, progress).

Shared here: the flags of every per-shard step, the argparse types, and the summary line they print.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """A `mode` command: its name, the module implementing it, one line of help, what it reads and writes."""

    name: str
    module: str
    help: str
    reads: str
    writes: str


def seed_int(text: str) -> int:
    """argparse type: a seed, 0 <= seed < 2**31 (numpy's generators refuse negatives, faiss takes an int32)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < 2 ** 31:
        raise argparse.ArgumentTypeError(f"{value} is not a seed in 0..2147483647")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (workers, batch sizes, counts); argparse prints the one-line error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def shard_step_arguments(p: argparse.ArgumentParser, per_shard: bool = True, workers: bool = True) -> None:
    """--shards and --work-dir, and for per-shard steps --rank/--world-size (default: torchrun's or SLURM's
    environment) and --workers."""
    p.add_argument("--shards", required=True, metavar="SPEC",
                   help="the pool's shards: a directory, a brace pattern or .tar paths, joined by '::'")
    p.add_argument("--work-dir", required=True, metavar="W", help="this clustering run's work dir")
    rank_arguments(p, rank=per_shard)
    if workers:
        p.add_argument("--workers", type=positive_int, default=1, help="processes for this rank's shards")


def rank_arguments(p: argparse.ArgumentParser, rank: bool = True) -> None:
    """--rank and --world-size; left out, they come from torchrun's or SLURM's environment."""
    if rank:
        p.add_argument("--rank", type=int, default=None, help="this process's rank (default: torchrun/SLURM env)")
    p.add_argument("--world-size", type=int, default=None, help="number of ranks (default: torchrun/SLURM env)")


def print_summary(summary: dict) -> None:
    """The one line a per-shard step prints from its summary."""
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("skipped", {}).items())) or "none"
    state = "complete" if summary["complete"] else f"{summary['shards_done']}/{summary['shards_total']} shards done"
    print(f"{summary['step']}: {state}; processed {summary['processed']}, kept {summary['kept']}, "
          f"skipped: {skipped}; {summary['seconds']:.1f}s")
