"""SLURM jobs through submitit: executors, submission with one-line errors, `mode` steps as jobs, and following
jobs to their final states.

A job's state comes from `sacct` (`scontrol show job` for what accounting does not hold), never from the presence of
submitit's result file: a requeued job (preemption, `scontrol requeue`, a node failure) may leave an error result
from its killed run and still be running again, so only a final SLURM state (COMPLETED, FAILED, CANCELLED,
TIMEOUT, ...) ends the wait. Requeues are counted and reported as such.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mode.core.errors import UserError, first_line

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "COMPLETING", "CONFIGURING",
          "SUSPENDED", "RESIZING", "PREEMPTED", "STAGE_OUT", "SIGNALING", "STOPPED", "UNKNOWN"}


def slurm_arguments(p: argparse.ArgumentParser, defaults: str = "the recipe's") -> None:
    """The resource flags every SLURM-submitting command shares (default None: `defaults` decide)."""
    for flag, typ, what in (("--nodes", int, "nodes per job"),
                            ("--gpus-per-node", int, "GPUs (= tasks) per node; 0: a CPU job, one task"),
                            ("--cpus-per-task", int, "CPUs per task"), ("--time", int, "time limit, minutes"),
                            ("--partition", str, "SLURM partition"), ("--account", str, "SLURM account"),
                            ("--constraint", str, "SLURM constraint")):
        p.add_argument(flag, type=typ, default=None, help=f"{what} (default: {defaults})")


def executor(kind: str, folder: str, name: str, *, nodes: int = 1, gpus_per_node: int = 0, cpus_per_task: int = 1,
             time_min: int = 60, partition: str | None = None, account: str | None = None,
             constraint: str | None = None, tasks_per_node: int | None = None, array_parallelism: int | None = None,
             dependency: str | None = None):
    """A submitit executor for `kind` (local or slurm). One task per GPU (one per node for a CPU job, which asks
    for no gres: a cluster without GPUs refuses any gres request). On SLURM, submitit's USR2 comes 120 s before the
    time limit so that checkpointable jobs requeue themselves; `dependency` is sbatch's, e.g. `afterok:12:13`."""
    import submitit

    if kind not in ("local", "slurm"):
        raise UserError(f"--executor {kind!r}: expected local or slurm")
    for flag, value, low in (("--nodes", nodes, 1), ("--gpus-per-node", gpus_per_node, 0),
                             ("--cpus-per-task", cpus_per_task, 1), ("--time", time_min, 1)):
        if value < low:
            raise UserError(f"{flag} {value}: expected {low} or more")
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=kind, slurm_max_num_timeout=30)
    except RuntimeError as e:  # submitit's way of saying there is no SLURM here
        raise UserError(f"--executor slurm: {e} Use --executor local on this machine.")
    tasks = tasks_per_node or max(gpus_per_node, 1)
    params = {"name": name, "timeout_min": time_min, "tasks_per_node": tasks, "nodes": nodes,
              "cpus_per_task": cpus_per_task}
    if kind == "slurm":
        params.update(slurm_signal_delay_s=120)
        if gpus_per_node:
            params.update(gpus_per_node=gpus_per_node)
        for key, value in (("partition", partition), ("account", account), ("constraint", constraint)):
            if value:
                params[f"slurm_{key}"] = value
        if array_parallelism:
            params.update(slurm_array_parallelism=array_parallelism)
        if dependency:
            params.update(slurm_additional_parameters={"dependency": dependency, "kill-on-invalid-dep": "yes"})
    else:
        params.update(nodes=1)
    ex.update_parameters(**params)
    return ex


def submit(ex, fns: Sequence[Callable], what: str) -> list:
    """Submit `fns` as one job (one callable) or one job array (several); sbatch's refusal is a UserError with
    its reason (submitit would print it and raise with a traceback)."""
    from submitit.core.utils import FailedJobError

    quiet = io.StringIO()
    try:
        with contextlib.redirect_stderr(quiet):
            if len(fns) == 1:
                return [ex.submit(fns[0])]
            with ex.batch():
                jobs = [ex.submit(fn) for fn in fns]
            return jobs
    except (FailedJobError, OSError) as e:
        reason = [ln for ln in str(e).splitlines() if "error" in ln.lower()] or [first_line(e)]
        raise UserError(f"SLURM refused {what}: {reason[-1].strip()}") from None


def submit_ranks(ex, module: str, argv: list[str], ranks: int, what: str) -> list:
    """A per-shard `mode` step as one job array: task r runs it with `--rank r --world-size ranks`."""
    fns = [StepJob(module, [*argv, "--rank", str(r), "--world-size", str(ranks)]) for r in range(ranks)]
    for fn in fns[:1]:
        fn.parse()  # a bad flag is refused here, before anything is submitted
    return submit(ex, fns, what)


def base_id(job_id: str) -> str:
    return str(job_id).split("_")[0]


def preemption_in_main_process_only() -> None:
    """Inside a submitit job: its preemption handler (USR2: checkpoint, `scontrol requeue`, exit) acts in the job's
    own process only. SLURM signals every process of the step, and forked children (DataLoader workers) inherit
    the handler: each would requeue the job again and fail with a traceback while the job is being requeued."""
    import os
    import signal

    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")  # submitit's setting of its signal
    sig = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", signal.SIGUSR2)
    handler, owner = signal.getsignal(sig), os.getpid()
    if not callable(handler):
        return

    def in_owner(signum, frame):
        if os.getpid() == owner:
            handler(signum, frame)

    signal.signal(sig, in_owner)


@dataclass
class StepJob:
    """A `mode` step as a picklable job: the step's module and its command-line flags. A preempted or timed-out
    job requeues itself (submitit's checkpoint); the per-shard runner then redoes only unfinished shards."""

    module: str
    argv: list[str]

    def parse(self) -> tuple:
        """The step's module and its parsed flags (argparse's one-line error on a bad flag)."""
        step = importlib.import_module(self.module)
        parser = argparse.ArgumentParser(prog=f"mode {self.module.rsplit('.', 1)[-1]}")
        step.add_arguments(parser)
        args = parser.parse_args(self.argv)
        args.train_flags = []
        return step, args

    def run(self) -> None:
        step, args = self.parse()
        step.main(args)

    def __call__(self) -> None:
        preemption_in_main_process_only()
        try:
            self.run()
        except UserError as e:  # one line in the job's log, and a failed job for SLURM
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise RuntimeError(str(e)) from None

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(StepJob(self.module, list(self.argv)))


# ----------------------------------------------------------------------------------------- following jobs

def _sacct(ids: list[str]) -> dict[str, list[str]] | None:
    """{job id: [state of each run, oldest first]} for jobs and array tasks, or None without accounting."""
    from submitit.slurm.slurm import read_job_id

    cmd = ["sacct", "-D", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(sorted({base_id(i) for i in ids}))]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    runs: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        if "|" not in line:
            continue
        job, state = line.split("|", 1)
        state = state.split()[0] if state.strip() else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        for parts in read_job_id(job):
            if len(parts) == 1:
                runs.setdefault(parts[0], []).append(state)
            else:
                last = int(parts[2]) if len(parts) > 2 else int(parts[1])
                for index in range(int(parts[1]), last + 1):
                    runs.setdefault(f"{parts[0]}_{index}", []).append(state)
    return runs


def _scontrol(job_id: str) -> tuple[str, int]:
    """(state, restarts) of a job as slurmctld sees it: for clusters without accounting, and for jobs accounting
    does not hold (yet). GONE: neither knows it (an array task cancelled before it started, or purged)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=60)
    state = re.search(r"\bJobState=(\S+)", out.stdout)
    restarts = re.search(r"\bRestarts=(\d+)", out.stdout)
    if state is None:
        return "GONE", 0
    return state.group(1), int(restarts.group(1)) if restarts else 0


def states(job_ids: list[str]) -> dict[str, tuple[str, int]]:
    """{job id: (current state, times requeued)} from SLURM's accounting, else from slurmctld."""
    runs = _sacct(job_ids) or {}
    out = {}
    for j in job_ids:
        seen = runs.get(str(j))
        out[j] = (seen[-1], sum(s in ("REQUEUED", "PREEMPTED") for s in seen[:-1])) if seen else _scontrol(str(j))
    return out


def failure_line(job) -> str:
    """What a failed job said went wrong, for the one-line report: its last `error: ...` line (a step's
    UserError), else the last line of a traceback, else its log's last line."""
    try:
        lines = [ln.strip() for ln in Path(job.paths.stderr).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"no log at {job.paths.stderr}"
    said = [ln for ln in lines if ln.startswith("error:")] or \
        [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b", ln)] or lines or ["(empty log)"]
    return said[-1][:300]


def follow(groups: dict[str, list], poll_s: float = 5.0, progress: Callable[[str], str] | None = None,
           out=None) -> dict[str, list[str]]:
    """Wait for every job of every named group (a step's array, an expert's job) to reach a final state, printing
    each change of a group's state and each requeue; `progress(name)` adds a line's detail (e.g. shards done).
    Returns {group: [final state of each job]}."""
    out = out or sys.stdout
    jobs = {str(j.job_id): (name, j) for name, js in groups.items() for j in js}
    shown: dict[str, str] = {}
    requeues: dict[str, int] = {}
    while True:
        now = states(list(jobs))
        finals: dict[str, list[str]] = {name: [] for name in groups}
        for jid, (state, requeued) in now.items():
            name, _ = jobs[jid]
            finals[name].append(state)
            if requeued > requeues.get(jid, 0):
                requeues[jid] = requeued
                print(f"{name}: job {jid} requeued (preempted, timed out or requeued by hand; run {requeued + 1})",
                      file=out, flush=True)
        for name, js in groups.items():
            detail = progress(name) if progress else ""
            line = _summary(finals[name]) + (f"; {detail}" if detail else "")
            if shown.get(name) != line:
                shown[name] = line
                ids = ",".join(sorted({base_id(j.job_id) for j in js}))
                print(f"{name} (job {ids}): {line}", file=out, flush=True)
        if all(s not in ACTIVE for states_ in finals.values() for s in states_):
            return finals
        time.sleep(poll_s)


def _summary(group_states: list[str]) -> str:
    counts: dict[str, int] = {}
    for s in group_states:
        counts[s] = counts.get(s, 0) + 1
    if len(group_states) == 1:
        return group_states[0].lower()
    return ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))


def report(groups: dict[str, list], finals: dict[str, list[str]]) -> list[str]:
    """One line per job that did not complete: its state, what it said and its log (or that it never ran)."""
    lines = []
    for name, js in groups.items():
        for job, state in zip(js, finals[name]):
            if state == "COMPLETED":
                continue
            if not Path(job.paths.stderr).exists():
                why = {"CANCELLED": " (a job it depends on did not complete, or scancel)",
                       "GONE": " (cancelled while pending, or purged from SLURM's records)"}.get(state, "")
                lines.append(f"{name}: job {job.job_id} {state} before it started{why}")
                continue
            said = failure_line(job) if state == "FAILED" else ""
            lines.append(f"{name}: job {job.job_id} {state}" + (f": {said}" if said else "")
                         + f" (log {job.paths.stderr})")
    return lines
