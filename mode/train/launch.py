"""`mode train-experts`: MoDE's protocol as open_clip_train jobs through submitit.

Runs, named under `--logs` as `<recipe>_n<Kc>m<Kf>/...`:
1. `seed`: the dense run on the whole pool, stopped after epoch E (`--seed-epochs`, MoDE: 27 of 32) on its
   full-length LR schedule (`--stop-epoch`). Reused when its `epoch_E.pt` exists.
2. `expert_K`: one per coarse cluster, forked from the seed's `epoch_E.pt` (model, optimizer, scaler, epoch:
   `--init-from`) and trained to the last epoch on its cluster.
3. `dense` (with `--dense`): the seed run continued to the last epoch with the experts' compute together (K times
   an expert's samples per epoch), the baseline MoDE compares with.
With `--seed-epochs 0` (or the user's own `--init-from`) there is no seed run. Under SLURM the experts and the
dense run depend on the seed job (`afterok`), so one command submits the whole protocol; every job is
checkpointable: on preemption or timeout submitit requeues it and `--resume latest` continues from its last
checkpoint. The local executor runs the same jobs on this machine, one after the other.

`<logs>/<recipe>_n<Kc>m<Kf>/protocol.json` records what the runs there were planned from (the clustering, the
assignment, the user's flags, the seed's epochs and the epoch size): a later launch into the same folder must
match it (it may ask for other experts or add --dense), so a relaunch never reuses a seed or an expert trained
on another clustering or schedule.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mode.core import jobs
from mode.core.errors import UserError
from mode.core.layout import WorkDir
from mode.core.runner import load_json, read_complete_summary
from mode.core.shards import write_json
from open_clip_patch.init_from import is_complete_checkpoint

log = logging.getLogger(__name__)


@dataclass
class TrainJob:
    """A picklable training job: recipe name + flags, run inside a submitit task with the distributed env set."""

    recipe: str
    argv: list[str] = field(default_factory=list)

    def __call__(self) -> int:
        jobs.preemption_in_main_process_only()
        _set_distributed_env()
        from mode.train.recipe import run

        try:
            return run(self.recipe, self.argv)
        except UserError as e:  # one line in the job's log (read back by jobs.failure_line), a failed job
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise RuntimeError(str(e)) from None

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on preemption/timeout: requeue the same job; `--resume latest` picks up."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.recipe, self.argv))


def _set_distributed_env() -> None:
    """torch.distributed's env:// variables from submitit's view of the job (SLURM or local)."""
    import submitit

    env = submitit.JobEnvironment()
    os.environ.update(RANK=str(env.global_rank), LOCAL_RANK=str(env.local_rank), WORLD_SIZE=str(env.num_tasks))
    os.environ.setdefault("MASTER_ADDR", env.hostnames[0] if env.hostnames else "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(20000 + int(str(env.job_id).split("_")[0][-4:] or 0) % 20000))


def clustering_shape(work_dir: str) -> tuple[int, int, int]:
    """(coarse, fine) cluster counts of a work dir's assignment, and the pairs it assigned."""
    assign_dir = WorkDir(Path(work_dir)).assign_dir
    if not WorkDir.summary(assign_dir).exists():
        raise UserError(f"no assignment in {work_dir}: run `./run_mode.sh prep-steps SHARDS {work_dir}` first")
    counts = read_complete_summary(assign_dir, "assign", "train-experts")["counts"]  # all shards assigned
    return len(counts["coarse"]), len(counts["fine"]), int(sum(counts["coarse"]))


def parse_experts(spec: str, n_experts: int) -> list[int]:
    """`all` or a comma list like `0,2` -> expert ids, each checked against the clustering."""
    if spec == "all":
        return list(range(n_experts))
    try:
        experts = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--experts {spec!r}: expected 'all' or a comma list of ids like 0,2")
    bad = [k for k in experts if not 0 <= k < n_experts]
    if bad or not experts:
        raise UserError(f"--experts {spec!r}: the clustering has experts 0..{n_experts - 1}")
    if len(set(experts)) != len(experts):
        raise UserError(f"--experts {spec!r}: an expert is listed twice")
    return experts


@dataclass
class PlannedJob:
    """One run to submit: its name (under --logs), the job, and the name of the run it waits for."""

    name: str
    job: TrainJob
    after: str | None = None
    reuse_if: str | None = None  # a checkpoint that, once complete, makes this run unnecessary
    protocol: tuple[str, dict] | None = None  # (where, what): the record the runs' folder must hold


def plan_jobs(recipe: str, experts: str, extra: list[str], dense: bool = False,
              seed_epochs: int | None = None) -> list[PlannedJob]:
    """The runs of MoDE's protocol: the dense seed run to epoch E (`seed_epochs`, default the recipe's), one
    expert per cluster forked from its epoch-E checkpoint and, with `dense`, the dense run continued from there
    with the experts' compute together. With E = 0, or an `--init-from` of the user's, there is no seed run."""
    from open_clip_train.params import parse_args

    import run_configs
    from open_clip_patch.params import split_argv

    plugin_args, rest = split_argv(run_configs.get_recipe(recipe).to_argv() + list(extra))
    if plugin_args.mode_work_dir is None:
        raise UserError(f"config {recipe!r} has no clustering: pass --mode-work-dir W")
    if "--samples-seen" in (t.split("=", 1)[0] for t in extra):
        raise UserError("train-experts gives every run one epoch size: pass --train-num-samples, not --samples-seen")
    n_coarse, n_fine, n_pairs = clustering_shape(plugin_args.mode_work_dir)
    stock = parse_args(rest)
    # MoDE: the seed run and every expert have one epoch size (its recipes' 400M samples), so a fork keeps the
    # seed's steps per epoch and its place in the LR schedule; a recipe without one takes the clustered pool's size
    epoch = stock.train_num_samples or n_pairs
    base = f"{recipe}_n{n_coarse}m{n_fine}"
    fork, plan = [], []
    seed_epochs = _seed_epochs(recipe, seed_epochs, plugin_args, stock.epochs)
    if not (stock.train_data or plugin_args.data_dir or plugin_args.toy_pool) and (
            seed_epochs or dense or plugin_args.expert_data != "routed"):
        who = "the seed run" if seed_epochs else "--dense" if dense else "--expert-data filter"
        raise UserError(f"{who} trains on the whole pool: pass its shards (--data-dir POOL/shards or --train-data)")
    record = (os.path.join(stock.logs, base, "protocol.json"),
              {"recipe": recipe, "flags": list(extra), "seed_epochs": seed_epochs, "epoch_samples": epoch,
               "clustering": WorkDir(Path(plugin_args.mode_work_dir)).clustering_id(),
               "assignment": _assignment_id(plugin_args.mode_work_dir)})
    if seed_epochs:
        seed_name = f"{base}/seed"
        seed_ckpt = os.path.abspath(os.path.join(stock.logs, seed_name, "checkpoints", f"epoch_{seed_epochs}.pt"))
        plan.append(PlannedJob(seed_name, TrainJob(recipe, [*extra, *_dense_flags(epoch, 1),
                                                            "--stop-epoch", str(seed_epochs), "--name", seed_name,
                                                            "--resume", "latest"]), reuse_if=seed_ckpt))
        fork = ["--init-from", seed_ckpt]
    after = plan[0].name if plan else None
    for k in parse_experts(experts, n_coarse):
        name = f"{base}/expert_{k}"
        plan.append(PlannedJob(name, TrainJob(recipe, [*extra, "--expert", str(k), "--train-num-samples", str(epoch),
                                                       "--name", name, "--resume", "latest", *fork]), after))
    if dense:
        name = f"{base}/dense"
        plan.append(PlannedJob(name, TrainJob(recipe, [*extra, *_dense_flags(epoch, n_coarse),
                                                       "--name", name, "--resume", "latest", *fork]), after))
    for planned in plan:
        planned.protocol = record
    return plan


def _assignment_id(work_dir: str) -> str:
    """The assignment's parameters hash (its inputs and settings), as its summary records it."""
    return str(load_json(WorkDir.summary(WorkDir(Path(work_dir)).assign_dir), "`mode assign` summary",
                         ("params_hash",))["params_hash"])


def claim_protocol(path: str, record: dict) -> None:
    """The runs' folder holds one protocol: write its record, or check that this launch is the same one."""
    if os.path.exists(path):
        with open(path) as f:
            try:
                held = json.load(f)
            except ValueError:
                held = {}
        differ = [k for k in record if held.get(k) != record[k]]
        if differ:
            raise UserError(f"{os.path.dirname(path)} holds runs of another MoDE protocol ({differ[0]} differs: "
                            f"{held.get(differ[0])!r} there, {record[differ[0]]!r} now): relaunch with the same "
                            "flags and work dir, or pass another --logs")
        return
    if os.path.isdir(os.path.dirname(path)) and os.listdir(os.path.dirname(path)):
        log.warning(f"{os.path.dirname(path)} holds runs from before protocol.json: taking them as this protocol's")
    write_json(path, record)


def _seed_epochs(recipe: str, asked: int | None, plugin_args, epochs: int) -> int:
    import run_configs

    if plugin_args.init_from:
        if asked:
            raise UserError(f"--seed-epochs {asked} and --init-from {plugin_args.init_from}: pass one of them")
        return 0
    e = type(run_configs.get_recipe(recipe)).seed_epochs if asked is None else asked
    if e and not 0 < e < epochs:
        raise UserError(f"--seed-epochs {e}: expected 0 (no seed run) or an epoch in 1..{epochs - 1} (--epochs "
                        f"{epochs})")
    return e or 0


def _dense_flags(per_expert: int, n_experts: int) -> list[str]:
    """The whole pool, with the compute of `n_experts` experts: n_experts x an expert's samples per epoch."""
    return ["--mode-work-dir", "", "--train-num-samples", str(per_expert * n_experts)]  # empty: the whole pool


def make_executor(executor: str, folder: str, name: str, slurm: dict, dependency: str | None = None):
    """submitit's executor for one run of the protocol: the recipe's job shape with the user's overrides."""
    return jobs.executor(executor, folder, name, nodes=slurm["nodes"], gpus_per_node=slurm["gpus_per_node"],
                         cpus_per_task=slurm["cpus_per_task"], time_min=slurm["time_min"],
                         partition=slurm.get("partition"), account=slurm.get("account"),
                         constraint=slurm.get("constraint"), dependency=dependency)


def launch(recipe: str, experts: str, extra: list[str], executor: str = "local", dense: bool = False,
           slurm_overrides: dict | None = None, folder: str = "logs/submitit", wait: bool | None = None,
           seed_epochs: int | None = None) -> list:
    """Submit the runs; the seed run first, the others after it (SLURM: `afterok`). The local executor runs
    them one after the other and waits. A seed run whose epoch-E checkpoint exists is reused. With `wait`, SLURM
    jobs are followed to their final states (a requeued job is reported as requeued and waited for); any that
    did not complete is a UserError naming it. Returns the jobs."""
    import run_configs

    slurm = {**vars(type(run_configs.get_recipe(recipe)).slurm), **{k: v for k, v in (slurm_overrides or {}).items()
                                                                  if v is not None}}
    if executor == "local" and slurm_overrides is None:
        slurm["gpus_per_node"] = 1  # one process per job on this machine unless asked otherwise
    submitted: dict[str, object] = {}
    plan = plan_jobs(recipe, experts, extra, dense, seed_epochs)
    if plan and plan[0].protocol:
        claim_protocol(*plan[0].protocol)
    for planned in plan:
        if planned.reuse_if and is_complete_checkpoint(planned.reuse_if):
            print(f"{planned.name}: reusing {planned.reuse_if}", flush=True)
            continue
        after = submitted.get(planned.after) if executor == "slurm" else None
        ex = make_executor(executor, folder, planned.name.replace("/", "_"), slurm,
                           dependency=f"afterok:{after.job_id}" if after else None)
        job = submitted[planned.name] = jobs.submit(ex, [planned.job], f"the job {planned.name}")[0]
        print(f"{planned.name}: submitted job {job.job_id} ({executor}{f', after {planned.after}' if after else ''}"
              f"); logs in {folder}", flush=True)
        if executor == "local":
            _wait_local(job, planned.name)
            print(f"{planned.name}: done", flush=True)
    if executor == "slurm" and wait and submitted:
        groups = {name: [job] for name, job in submitted.items()}
        failed = jobs.report(groups, jobs.follow(groups))
        if failed:
            raise UserError(f"{len(failed)} of {len(groups)} jobs did not complete:\n  " + "\n  ".join(failed))
    return list(submitted.values())


def _wait_local(job, name: str) -> None:
    """Wait for a local job; a failed one is one line (its own error, or its traceback's last line, and its log)."""
    try:
        job.result()
    except Exception:  # noqa: BLE001 - submitit re-raises the job's failure with the job's traceback
        raise UserError(f"{name}: {jobs.failure_line(job)} (log {job.paths.stderr})") from None


# -------------------------------------------------------------------------------------- `mode train-experts`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (f"{p.description} Extra training flags go after `--`, e.g. "
                     "`-- --epochs 2 --mode-work-dir W`.")
    p.add_argument("config", help="a recipe of run_configs.py, e.g. toy_tiny_mode or b32_mode")
    p.add_argument("--experts", default="all", help="all, or a comma list of expert ids like 0,2")
    p.add_argument("--dense", action="store_true", help="also train the dense baseline: whole pool, the experts' "
                                                        "compute together")
    p.add_argument("--seed-epochs", type=int, default=None, metavar="E",
                   help="train the dense seed run to epoch E and fork every expert (and --dense) from it; 0: no "
                        "seed run (default: the recipe's, 27 for the MoDE recipes)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--folder", default="logs/submitit", help="submitit's job folder (logs, pickles)")
    p.add_argument("--wait", action="store_true", help="with slurm: follow the jobs to their final states (requeues "
                   "reported as such); exit 2 if any did not complete")
    jobs.slurm_arguments(p)


def main(args: argparse.Namespace) -> None:
    slurm = {"nodes": args.nodes, "gpus_per_node": args.gpus_per_node, "cpus_per_task": args.cpus_per_task,
             "time_min": args.time, "partition": args.partition, "account": args.account,
             "constraint": args.constraint}
    given = any(v is not None for v in slurm.values())
    launch(args.config, args.experts, args.train_flags, executor=args.executor, dense=args.dense,
           slurm_overrides=slurm if given else None, folder=args.folder, wait=args.wait, seed_epochs=args.seed_epochs)
