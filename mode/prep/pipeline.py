"""`mode prep`: MoDE's prep chain, captions -> embed -> cluster -> assign -> route, in one command.

Locally the five steps run one after the other in this process. With `--executor slurm` every per-shard step is
one submitit job array of `--ranks` tasks (task r runs the step with `--rank r --world-size R`), the global
cluster step one job, each depending on the step before (`afterok`), and the command returns once all are
submitted; `--wait` follows them to their final states with each step's shards done. The steps keep their
guarantees there: a cancelled, killed or preempted task leaves its finished shards complete, and the same
command submitted again redoes only the unfinished ones (a preempted task requeues itself).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from mode.core import jobs
from mode.core.errors import UserError
from mode.core.layout import WorkDir
from mode.core.runner import check_apart
from mode.core.shards import expand, rank_and_world
from mode.core.step import positive_int
from mode.prep.captions import CLEANINGS

# MoDE's own choices (run_mode.sh's PRESET=mode): raw captions, SimCSE's pooler output, balanced Euclidean k-means
# at both levels on 5% of the shards, out-of-cluster pairs added as r x the other clusters' pairs.
PRESETS = {
    "fast": {"encoder": None, "pooling": "model", "metric": "cosine", "sample_shards": None, "balance": False,
             "ooc_mode": "share", "cleaning": "open_clip"},
    "mode": {"encoder": "princeton-nlp/sup-simcse-bert-base-uncased", "pooling": "pooler", "metric": "euclidean",
             "sample_shards": 0.05, "balance": True, "ooc_mode": "additive", "cleaning": "none"},
}


@dataclass
class PlannedStep:
    name: str
    module: str
    argv: list[str]
    per_shard: bool
    gpus: int = 0


def plan(args: argparse.Namespace) -> list[PlannedStep]:
    """The five steps' modules and flags, the preset's choices under the user's."""
    chosen = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in PRESETS[args.preset].items()}
    common = ["--shards", args.shards, "--work-dir", args.work_dir]
    workers = ["--workers", str(args.workers)]
    embed = [*common, "--pooling", chosen["pooling"], *(["--encoder", chosen["encoder"]] if chosen["encoder"] else [])]
    if args.device:
        embed += ["--device", args.device]
    cluster = [*common, "--fine", str(args.fine), "--coarse", str(args.coarse), "--metric", chosen["metric"],
               *(["--sample-shards", str(chosen["sample_shards"])] if chosen["sample_shards"] else []),
               *(["--balance"] if chosen["balance"] else [])]
    return [
        PlannedStep("captions", "mode.prep.captions", [*common, *workers, "--cleaning", chosen["cleaning"]], True),
        PlannedStep("embed", "mode.prep.embed", embed, True, gpus=args.embed_gpus),
        PlannedStep("cluster", "mode.prep.cluster", cluster, False),
        PlannedStep("assign", "mode.prep.assign", [*common, *workers], True),
        PlannedStep("route", "mode.prep.route", [*common, *workers, "--ooc-ratio", str(args.ooc_ratio),
                                                 "--ooc-mode", chosen["ooc_mode"]], True),
    ]


def step_dir(work_dir: str, name: str) -> Path:
    wd = WorkDir(Path(work_dir))
    return {"captions": wd.captions_dir, "embed": wd.features_dir, "cluster": wd.clusters_dir,
            "assign": wd.assign_dir, "route": wd.route_dir}[name]


def run_local(steps: list[PlannedStep]) -> None:
    for step in steps:
        print(f"== mode {step.name}", flush=True)
        jobs.StepJob(step.module, step.argv).run()


def submit(steps: list[PlannedStep], args: argparse.Namespace) -> dict[str, list]:
    """Submit the chain: an array of `--ranks` tasks per per-shard step, one job for cluster, each after the one
    before. Returns {step: its jobs}."""
    groups: dict[str, list] = {}  # (main parsed every step's flags before this: nothing is submitted on a bad one)
    after = None
    for step in steps:
        ranks = args.ranks if step.per_shard else 1
        ex = jobs.executor("slurm", args.folder, f"mode_{step.name}", gpus_per_node=step.gpus,
                           cpus_per_task=args.cpus_per_task or (args.workers if step.per_shard else 1),
                           time_min=args.time or 240, partition=args.partition, account=args.account,
                           constraint=args.constraint, array_parallelism=args.array_parallelism,
                           dependency=f"afterok:{after}" if after else None)
        what = f"the {step.name} job{'s' if ranks > 1 else ''}"
        groups[step.name] = jobs.submit_ranks(ex, step.module, step.argv, ranks, what) if step.per_shard else \
            jobs.submit(ex, [jobs.StepJob(step.module, step.argv)], what)
        after = jobs.base_id(groups[step.name][0].job_id)
        what = f"array of {ranks} task{'s' if ranks > 1 else ''}" if step.per_shard else "one job"
        print(f"{step.name}: submitted job {after} ({what}"
              f"{f', after {prev}' if (prev := _prev(groups, step.name)) else ''}); logs in {args.folder}",
              flush=True)
    return groups


def _prev(groups: dict[str, list], name: str) -> str | None:
    names = list(groups)
    i = names.index(name)
    return names[i - 1] if i else None


def shards_done(work_dir: str, name: str, total: int) -> str:
    """`k/N shards done` for a per-shard step, from its completion records."""
    folder = step_dir(work_dir, name)
    done = len(list(folder.glob("*.stats.json"))) if folder.is_dir() else 0
    return f"{done}/{total} shards done"


# ----------------------------------------------------------------------------------------------- `mode prep`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", required=True, metavar="SPEC",
                   help="the pool's shards: a directory, a brace pattern or .tar paths, joined by '::'")
    p.add_argument("--work-dir", required=True, metavar="W", help="this clustering run's work dir")
    p.add_argument("--preset", choices=sorted(PRESETS), default="fast",
                   help="fast (default): the packaged MiniLM, spherical k-means on a row sample; mode: MoDE's "
                        "choices (raw captions, SimCSE pooler output, balanced Euclidean k-means on 5%% of the "
                        "shards, additive out-of-cluster pairs). Flags given below win over the preset")
    p.add_argument("--fine", type=positive_int, default=1024, help="fine clusters")
    p.add_argument("--coarse", type=positive_int, default=4, help="coarse clusters = experts")
    p.add_argument("--ooc-ratio", type=float, default=0.02, help="out-of-cluster pairs per expert (route)")
    p.add_argument("--workers", type=positive_int, default=2, help="processes per rank (captions, assign, route)")
    p.add_argument("--cleaning", choices=tuple(CLEANINGS), default=None,
                   help="captions' cleaning (default: the preset's; MoDE's is none)")
    p.add_argument("--encoder", default=None, help="embed's sentence-transformers model (default: the preset's)")
    p.add_argument("--pooling", choices=("model", "pooler"), default=None, help="embed's pooling (the preset's)")
    p.add_argument("--metric", choices=("cosine", "euclidean"), default=None, help="cluster's metric (the preset's)")
    p.add_argument("--balance", action=argparse.BooleanOptionalAction, default=None,
                   help="balanced k-means at both levels (default: the preset's)")
    p.add_argument("--sample-shards", type=float, default=None, metavar="F",
                   help="cluster on a seeded share F of the shards (default: the preset's)")
    p.add_argument("--ooc-mode", choices=("share", "additive"), default=None, help="route's (default: the preset's)")
    p.add_argument("--device", default=None, help="embed's device (default: its own, auto)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: the steps in this process, in order; slurm: job arrays with dependencies")
    p.add_argument("--ranks", type=positive_int, default=1,
                   help="slurm: array tasks per per-shard step (rank r takes every R-th shard)")
    p.add_argument("--array-parallelism", type=positive_int, default=None,
                   help="slurm: at most this many tasks of an array at once")
    p.add_argument("--embed-gpus", type=int, default=0, help="slurm: GPUs for each embed task (0: CPU)")
    p.add_argument("--cpus-per-task", type=positive_int, default=None,
                   help="slurm: CPUs per task (default: --workers for per-shard steps, 1 for cluster)")
    p.add_argument("--time", type=positive_int, default=None, help="slurm: time limit per task, minutes (240)")
    for flag in ("--partition", "--account", "--constraint"):
        p.add_argument(flag, default=None, help=f"slurm: {flag[2:]}")
    p.add_argument("--folder", default="logs/submitit", help="slurm: submitit's job folder (logs, pickles)")
    p.add_argument("--wait", action="store_true",
                   help="slurm: follow the jobs to their final states, with each step's shards done; exit 2 if "
                        "any did not complete")


def main(args: argparse.Namespace) -> None:
    if args.embed_gpus < 0:
        raise UserError(f"--embed-gpus {args.embed_gpus}: expected 0 (CPU) or more")
    if args.executor == "local" and args.ranks > 1:
        raise UserError(f"--ranks {args.ranks} needs --executor slurm (on one machine, --workers N splits the shards "
                        "over processes; under torchrun each step takes its rank from the environment)")
    from mode.prep import ooc

    ooc.check(args.ooc_ratio, args.ooc_mode or PRESETS[args.preset]["ooc_mode"])  # route's, before captions runs
    steps = plan(args)
    for step in steps:  # every step's flags, before the first runs
        module, parsed = jobs.StepJob(step.module, step.argv).parse()
        if step.name == "cluster":
            module.config_from_args(parsed).validate()
    check_apart(Path(args.work_dir), expand(args.shards))  # before captions runs or anything is submitted
    if args.executor == "local" and rank_and_world()[1] > 1:
        raise UserError("mode prep runs the five steps one after the other in one process, but the environment "
                        f"says {rank_and_world()[1]} processes (torchrun/SLURM): run it as one task, each step under "
                        "torchrun/srun, or --executor slurm --ranks N")
    if args.executor == "local":
        run_local(steps)
        return
    total = len(expand(args.shards))  # also checks --shards before anything is submitted
    os.makedirs(args.work_dir, exist_ok=True)
    groups = submit(steps, args)
    if not args.wait:
        ids = ",".join(jobs.base_id(js[0].job_id) for js in groups.values())
        print(f"prep: {len(groups)} steps submitted; follow with `squeue -j {ids}` or `sacct -j {ids}`", flush=True)
        return
    per_shard = {s.name for s in steps if s.per_shard}
    finals = jobs.follow(groups, progress=lambda name: shards_done(args.work_dir, name, total)
                         if name in per_shard else "")
    failed = jobs.report(groups, finals)
    if failed:
        raise UserError(f"{len(failed)} prep job(s) did not complete:\n  " + "\n  ".join(failed)
                        + "\nsubmit the same command again to redo only the unfinished shards")
    print(f"prep: complete in {args.work_dir}", flush=True)
