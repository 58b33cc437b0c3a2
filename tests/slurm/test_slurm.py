"""Against a real single-node SLURM cluster (tests/slurm/start.sh; `.ci/run` starts one): the prep chain as job
arrays with dependencies, a cancelled array task redone alone on resubmission, experts after their seed job in the
GPU recipes' job shape, and an expert preempted with submitit's signal, requeued and resumed to the end."""

import json
import re
import shutil
import subprocess
import time

import pyarrow.parquet as pq
import pytest
import torch

from mode.core import jobs
from mode.core.layout import WorkDir
from mode.train.trainlog import epoch_losses
from open_clip_patch.init_from import is_complete_checkpoint

from ..conftest import PYTHON, run


def _cluster_up() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(s in out.stdout for s in ("idle", "mixed", "allocated"))


pytestmark = pytest.mark.skipif(not _cluster_up(), reason="no SLURM cluster on this machine: "
                                "`sudo tests/slurm/start.sh` brings up a single-node one")


def _sacct(job: str) -> list[tuple[str, str, str, str]]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,Start,End", "-j", job],
                         capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line]


def _wait_gone(ids: list[str], timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True)
        if not out.stdout.strip():
            return
        time.sleep(1)
    raise AssertionError(f"jobs {ids} still queued after {timeout} s")


def _submitted(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^(\S+): submitted job (\d+)", stdout, re.M))


def test_prep_arrays_cancelled_task_redone_alone(toy_pool, toy_work, tmp_path):
    """`mode prep --executor slurm --ranks 2`: one array per per-shard step, cluster one job, each after the one
    before. Task 1 of the captions array is cancelled: its dependents never start. The same command again
    (with --wait) redoes only task 1's shards and ends with the outputs of one uninterrupted single-rank run."""
    work = tmp_path / "work"
    cmd = [PYTHON, "-m", "mode", "prep", "--shards", str(toy_pool), "--work-dir", str(work), "--fine", "8",
           "--coarse", "3", "--ooc-ratio", "0.1", "--workers", "1", "--executor", "slurm", "--ranks", "2",
           "--array-parallelism", "1", "--time", "20", "--folder", str(tmp_path / "jobs")]
    res = run(cmd)
    assert res.returncode == 0, res.stderr[-2000:]
    ids = _submitted(res.stdout)
    assert list(ids) == ["captions", "embed", "cluster", "assign", "route"]
    subprocess.run(["scancel", f"{ids['captions']}_1"], check=True)
    _wait_gone(list(ids.values()))
    tasks = [f"{ids[step]}_{r}" for step in ids for r in range(1 if step == "cluster" else 2)]
    tasks[tasks.index(f"{ids['cluster']}_0")] = ids["cluster"]
    end = time.time() + 60
    now = jobs.states(tasks)
    while any(s in jobs.ACTIVE for s, _ in now.values()):  # accounting lags a little behind squeue
        assert time.time() < end, now
        time.sleep(1)
        now = jobs.states(tasks)
    assert now[f"{ids['captions']}_0"][0] == "COMPLETED"
    assert now[f"{ids['captions']}_1"][0] in ("CANCELLED", "GONE")  # a pending array task may leave no record
    assert all(now[t][0] == "CANCELLED" for t in tasks if not t.startswith(f"{ids['captions']}_")), now
    wd = WorkDir(work)
    shard_ids = sorted(p.name[: -len(".parquet")] for p in toy_work.joinpath("captions").glob("*.parquet"))
    rank0, rank1 = shard_ids[0::2], shard_ids[1::2]
    done = {i: WorkDir.stats(wd.captions_dir, i).stat().st_mtime_ns for i in rank0}
    assert not any(WorkDir.stats(wd.captions_dir, i).exists() for i in rank1)
    assert not wd.features_dir.exists() or not list(wd.features_dir.glob("*.npy"))

    again = run([*cmd, "--wait"])
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "prep: complete" in again.stdout
    assert re.search(r"^captions \(job \d+\): 2 completed; 4/4 shards done$", again.stdout, re.M), again.stdout
    assert {i: WorkDir.stats(wd.captions_dir, i).stat().st_mtime_ns for i in rank0} == done  # not redone
    assert all(WorkDir.stats(wd.captions_dir, i).exists() for i in rank1)
    ref = WorkDir(toy_work)
    for i in shard_ids:  # two ranks on SLURM, interrupted, give the single-rank run's assignment
        assert pq.read_table(wd.assignment(i)).equals(pq.read_table(ref.assignment(i)))
    for k in range(3):
        assert json.loads((wd.expert_shards_dir(k) / "sizes.json").read_text()) == \
            json.loads((ref.expert_shards_dir(k) / "sizes.json").read_text())


def test_prep_refuses_bad_flags_before_submitting(toy_pool, tmp_path):
    base = [PYTHON, "-m", "mode", "prep", "--shards", str(toy_pool), "--work-dir", str(tmp_path / "w"),
            "--executor", "slurm", "--folder", str(tmp_path / "jobs")]
    res = run([*base, "--partition", "nosuch"])
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "SLURM refused the captions job" in res.stderr and "partition" in res.stderr.lower()
    res = run([*base, "--embed-gpus", "-1"])
    assert res.returncode == 2 and "--embed-gpus -1" in res.stderr


def test_prep_wait_reports_a_failed_step_and_its_cancelled_dependents(toy_pool, tmp_path):
    """A step that fails in its job (more fine clusters than features) ends the wait with exit 2 and one line per
    job that did not complete: the failed one with its error, the dependents that never ran as cancelled."""
    res = run([PYTHON, "-m", "mode", "prep", "--shards", str(toy_pool), "--work-dir", str(tmp_path / "w"),
               "--fine", "5000", "--coarse", "3", "--workers", "1", "--executor", "slurm", "--ranks", "2",
               "--time", "20", "--folder", str(tmp_path / "jobs"), "--wait"])
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    ids = _submitted(res.stdout)
    lines = res.stderr.strip().splitlines()
    assert lines[0] == "error: 5 prep job(s) did not complete:", res.stderr
    assert re.search(rf"^  cluster: job {ids['cluster']} FAILED: error: \d+ sampled features cannot make 5000 fine "
                     r"clusters; lower --fine \(log .*\)$", res.stderr, re.M), res.stderr
    for step in ("assign", "route"):
        for r in range(2):
            assert f"  {step}: job {ids[step]}_{r} CANCELLED before it started (a job it depends on did not " \
                "complete, or scancel)" in lines
    assert lines[-1] == "submit the same command again to redo only the unfinished shards"
    assert re.search(r"^embed \(job \d+\): 2 completed; 4/4 shards done$", res.stdout, re.M)


def test_sbatch_refusal_is_one_line(toy_pool, toy_work, tmp_path):
    res = run([PYTHON, "-m", "mode", "train-experts", "toy_tiny_mode", "--experts", "0", "--seed-epochs", "0",
               "--executor", "slurm", "--partition", "nosuch", "--folder", str(tmp_path / "jobs"), "--",
               "--data-dir", str(toy_pool), "--mode-work-dir", str(toy_work), "--logs", str(tmp_path / "logs")])
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("error: SLURM refused the job toy_tiny_mode_n3m8/expert_0: ")
    assert "invalid partition" in res.stderr.lower()


def test_experts_wait_for_seed_job_in_gpu_shape(toy_pool, toy_work, tmp_path):
    """The GPU recipes' job shape (1 GPU per node, gres on the placeholder GPUs): the seed run, then every expert
    after it (afterok), followed with --wait to their final states."""
    logs, jobs_dir = tmp_path / "logs", tmp_path / "jobs"
    res = run([PYTHON, "-m", "mode", "train-experts", "toy_tiny_mode", "--experts", "all", "--seed-epochs", "1",
               "--executor", "slurm", "--gpus-per-node", "1", "--cpus-per-task", "1", "--time", "20", "--folder",
               str(jobs_dir), "--wait", "--", "--data-dir", str(toy_pool), "--mode-work-dir", str(toy_work),
               "--logs", str(logs), "--epochs", "2", "--train-num-samples", "256"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ids = _submitted(res.stdout)
    base = "toy_tiny_mode_n3m8"
    assert list(ids) == [f"{base}/seed", *(f"{base}/expert_{k}" for k in range(3))]
    scripts = [p.read_text() for p in jobs_dir.glob("*_submission.sh")]
    assert scripts and all("#SBATCH --gpus-per-node=1" in s for s in scripts)
    (_, seed_state, _, seed_end), = _sacct(ids[f"{base}/seed"])
    assert seed_state == "COMPLETED"
    for k in range(3):
        (_, state, start, _), = _sacct(ids[f"{base}/expert_{k}"])
        assert state == "COMPLETED" and start >= seed_end  # ISO times compare as strings
        assert f"{base}/expert_{k} (job {ids[f'{base}/expert_{k}']}): completed" in res.stdout
        assert is_complete_checkpoint(str(logs / base / f"expert_{k}" / "checkpoints" / "epoch_2.pt"))


def test_preempted_expert_requeues_and_resumes(toy_pool, toy_work, tmp_path):
    """submitit's preemption signal (USR2) to a running CPU expert job: it requeues itself; later `scontrol requeue`
    by hand (SIGTERM to the job, whose killed run leaves an error result behind). `--wait` reports both as requeues
    and keeps waiting; each time the job resumes from its last complete checkpoint, and the run ends at the last
    epoch with no epoch lost."""
    logs, out = tmp_path / "logs", tmp_path / "wait.out"
    cmd = [PYTHON, "-m", "mode", "train-experts", "toy_tiny_mode", "--experts", "0", "--seed-epochs", "0",
           "--executor", "slurm", "--gpus-per-node", "0", "--cpus-per-task", "1", "--time", "30", "--folder",
           str(tmp_path / "jobs"), "--wait", "--", "--data-dir", str(toy_pool), "--mode-work-dir", str(toy_work),
           "--logs", str(logs), "--epochs", "4", "--train-num-samples", "512"]
    ckpts = logs / "toy_tiny_mode_n3m8" / "expert_0" / "checkpoints"
    end = time.time() + 500

    def until(ok, what):
        while not ok():
            assert proc.poll() is None and time.time() < end, f"{what}: " + out.read_text()[-3000:]
            time.sleep(0.5)

    def requeued(job, n):
        info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        return f"Restarts={n}" in info and "JobState=PENDING" in info

    with open(out, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        until(lambda: is_complete_checkpoint(str(ckpts / "epoch_1.pt")), "epoch 1")
        job = _submitted(out.read_text())["toy_tiny_mode_n3m8/expert_0"]
        for n, how in ((1, ["scancel", "--signal=USR2", job]), (2, ["scontrol", "requeue", job])):
            subprocess.run(how, check=True)
            until(lambda: requeued(job, n), f"requeue {n}")
            # SLURM holds a requeued job for two minutes before it is eligible again; let it start now
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
            if n == 1:
                until(lambda: is_complete_checkpoint(str(ckpts / "epoch_2.pt")), "epoch 2 after the restart")
        assert proc.wait(timeout=max(1, end - time.time())) == 0, out.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    said = out.read_text()
    for n in (2, 3):
        assert f"toy_tiny_mode_n3m8/expert_0: job {job} requeued (preempted, timed out or requeued by hand; run {n})" \
            in said
    assert f"(job {job}): completed" in said and "error" not in said.lower()
    ckpt = torch.load(ckpts / "epoch_4.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 4
    log = (ckpts.parent / "out.log").read_text()
    assert sorted(epoch_losses(ckpts.parent / "out.log")) == [1, 2, 3, 4]
    assert log.count("Found latest resume checkpoint at") == 2  # both restarts resumed rather than started over
    job_log = next((tmp_path / "jobs").glob(f"{job}_0_log.err")).read_text()
    assert "CalledProcessError" not in job_log  # only the job's own process acted on USR2: one requeue


def test_metadata_as_a_job_array_equals_a_local_run(toy_pool, tmp_path):
    """`mode metadata --executor slurm --ranks 2 --wait`: two tasks, each its share of the shards, the same files
    as one local process."""
    from pathlib import Path

    tiny = Path(__file__).resolve().parents[1] / "datacomp" / "d2m_tiny.py"
    env = {"D2M_TINY_DIR": str(tmp_path / "weights")}
    base = [PYTHON, "-m", "mode", "metadata", "--models", "oai-clip-vit-b32", "--postprocess-columns",
            "oai-clip-vit-b32-score", "--postprocess-features", "oai-clip-vit-b32-image", "--additional-fields",
            "uid", "--nworkers", "0", "--batch-size", "32", "--device", "cpu", "--custom-pypath", str(tiny),
            "--input-tars", str(toy_pool / "shards"), "--use-datacomp-keys"]
    local = run([*base, "--output-metadata-dir", str(tmp_path / "local")], env=env)
    assert local.returncode == 0, local.stderr[-2000:]
    res = run([*base, "--output-metadata-dir", str(tmp_path / "slurm"), "--executor", "slurm", "--ranks", "2",
               "--time", "20", "--folder", str(tmp_path / "jobs"), "--wait"], env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert re.search(r"^metadata \(job \d+\): 2 completed; 4/4 shards done$", res.stdout, re.M), res.stdout
    made = sorted(p.name for p in (tmp_path / "slurm").glob("0*"))
    assert made == sorted(p.name for p in (tmp_path / "local").glob("0*")) and len(made) == 8
    for name in made:
        assert (tmp_path / "slurm" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
