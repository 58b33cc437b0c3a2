"""`mode train-experts`: one open_clip_train job per expert (and optionally a dense baseline) through submitit.

Each job runs the recipe with `--expert K --name <recipe>_n<Kc>m<Kf>/expert_K --resume latest`; under SLURM it
is checkpointable: on preemption or timeout submitit requeues it and `--resume latest` continues from its last
checkpoint. The local executor runs the same jobs on this machine, one after the other.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from mode.errors import UserError
from mode.layout import WorkDir

log = logging.getLogger(__name__)


@dataclass
class TrainJob:
    """A picklable training job: recipe name + flags, run inside a submitit task with the distributed env set."""

    recipe: str
    argv: list[str] = field(default_factory=list)

    def __call__(self) -> int:
        _set_distributed_env()
        from mode.train import run

        return run(self.recipe, self.argv)

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


def clustering_shape(work_dir: str) -> tuple[int, int]:
    """(coarse, fine) cluster counts of a work dir's assignment."""
    path = WorkDir.summary(WorkDir(Path(work_dir)).assign_dir)
    if not path.exists():
        raise UserError(f"no assignment in {work_dir}: run `./run_mode.sh prep-steps SHARDS {work_dir}` first")
    with open(path) as f:
        counts = json.load(f)["counts"]
    return len(counts["coarse"]), len(counts["fine"])


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
    return experts


def plan_jobs(recipe: str, experts: str, extra: list[str], dense: bool = False) -> list[tuple[str, TrainJob]]:
    """(name, job) for each expert asked, plus the dense baseline with `dense`."""
    import run_configs
    from open_clip_patch.params import split_argv

    probe = run_configs.get_recipe(recipe).to_argv() + list(extra)
    plugin_args, rest = split_argv(probe)
    if plugin_args.mode_work_dir is None:
        raise UserError(f"config {recipe!r} has no clustering: pass --mode-work-dir W")
    n_coarse, n_fine = clustering_shape(plugin_args.mode_work_dir)
    base = f"{recipe}_n{n_coarse}m{n_fine}"
    jobs = [(f"{base}/expert_{k}", TrainJob(recipe, [*extra, "--expert", str(k), "--name", f"{base}/expert_{k}",
                                                     "--resume", "latest"]))
            for k in parse_experts(experts, n_coarse)]
    if dense:
        jobs.append((f"{base}/dense", TrainJob(recipe, [*extra, *_dense_flags(rest, n_coarse), "--name",
                                                        f"{base}/dense", "--resume", "latest"])))
    return jobs


def _dense_flags(open_clip_argv: list[str], n_experts: int) -> list[str]:
    """The whole pool, with the compute of all experts together: n_experts x the experts' samples per epoch."""
    from open_clip_train.params import parse_args

    per_expert = parse_args(open_clip_argv).train_num_samples
    flags = ["--mode-work-dir", ""]  # empty: no expert, the whole pool
    if per_expert is not None:
        flags += ["--train-num-samples", str(per_expert * n_experts)]
    return flags


def make_executor(executor: str, folder: str, name: str, slurm: dict):
    import submitit

    if executor not in ("local", "slurm"):
        raise UserError(f"--executor {executor!r}: expected local or slurm")
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=executor, slurm_max_num_timeout=30)
    except RuntimeError as e:  # submitit's way of saying there is no SLURM here
        raise UserError(f"--executor slurm: {e} Use --executor local on this machine.")
    params = {"name": name, "timeout_min": slurm["time_min"], "tasks_per_node": slurm["gpus_per_node"],
              "nodes": slurm["nodes"], "cpus_per_task": slurm["cpus_per_task"]}
    if executor == "slurm":
        params.update(gpus_per_node=slurm["gpus_per_node"], slurm_signal_delay_s=120)
        for key in ("partition", "account", "constraint"):
            if slurm.get(key):
                params[f"slurm_{key}"] = slurm[key]
    else:
        params.update(nodes=1, tasks_per_node=slurm["gpus_per_node"])
    ex.update_parameters(**params)
    return ex


def launch(recipe: str, experts: str, extra: list[str], executor: str = "local", dense: bool = False,
           slurm_overrides: dict | None = None, folder: str = "logs/submitit", wait: bool | None = None) -> list:
    """Submit the jobs; the local executor runs them one after the other and waits. Returns the submitit jobs."""
    import run_configs

    slurm = {**vars(type(run_configs.get_recipe(recipe)).slurm), **{k: v for k, v in (slurm_overrides or {}).items()
                                                                  if v is not None}}
    if executor == "local" and slurm_overrides is None:
        slurm["gpus_per_node"] = 1  # one process per job on this machine unless asked otherwise
    jobs = []
    for name, job in plan_jobs(recipe, experts, extra, dense):
        ex = make_executor(executor, folder, name.replace("/", "_"), slurm)
        submitted = ex.submit(job)
        print(f"{name}: submitted job {submitted.job_id} ({executor}); logs in {folder}", flush=True)
        if executor == "local" or wait:
            submitted.result()  # raises with the job's traceback if it failed
            print(f"{name}: done", flush=True)
        jobs.append(submitted)
    return jobs
