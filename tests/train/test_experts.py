"""Expert training: the on-the-fly expert loader, expert recipes, --init-from, and the submitit launcher."""

import io
import json
import os
import subprocess
import tarfile
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import open_clip_patch
import run_configs
from mode.core.errors import UserError
from mode.core.layout import WorkDir
from mode.core.shards import expand, iter_tar
from mode.core.uids import UidSet, hex_to_pairs, pairs_to_hex, sort_pairs
from mode.train import launch
from mode.train.trainlog import epoch_losses
from open_clip_patch.init_from import is_complete_checkpoint, newest_complete_checkpoint

from ..conftest import PYTHON, TOY_CLUSTER, run


def test_uid_round_trip_sort_and_lookup():
    rng = np.random.default_rng(0)
    uids = [rng.bytes(16).hex() for _ in range(500)]
    pairs = hex_to_pairs(uids)
    assert pairs.dtype == np.dtype("u8,u8") and pairs_to_hex(pairs) == uids
    assert int(pairs[0]["f0"]) == int(uids[0][:16], 16) and int(pairs[0]["f1"]) == int(uids[0][16:], 16)
    s = sort_pairs(pairs)
    assert [(int(a), int(b)) for a, b in s] == sorted((int(u[:16], 16), int(u[16:], 16)) for u in uids)
    same_hi = [uids[0][:16] + rng.bytes(8).hex() for _ in range(5)]  # several uids sharing f0
    members = UidSet(hex_to_pairs(uids[:250] + same_hi[:3]))
    queries = uids + same_hi
    expected = [True] * 250 + [False] * 250 + [True] * 3 + [False] * 2
    assert members.contains(hex_to_pairs(queries)).tolist() == expected
    assert uids[3] in members and uids[400] not in members
    positions = members.positions(hex_to_pairs(queries))
    assert [members.position(u) for u in queries] == positions.tolist()  # the scalar path agrees
    assert all(pairs_to_hex(sort_pairs(hex_to_pairs(uids[:250] + same_hi[:3]))[[p]])[0] == q
               for p, q in zip(positions, queries) if p >= 0)
    assert (positions >= 0).tolist() == expected
    with pytest.raises(ValueError):
        hex_to_pairs(["abc"])
    with pytest.raises(ValueError):
        members.position("abc")
    with pytest.raises(ValueError):
        members.position("z" * 32)


def _uid_text_pool(toy_pool, out):
    """The toy shards with each caption replaced by the sample's uid, so that loader batches name their uids."""
    out.mkdir()
    for path in expand(str(toy_pool)):
        with tarfile.open(out / path.rsplit("/", 1)[1], "w") as tar:
            for key, members in iter_tar(path):
                members["txt"] = json.loads(members["json"])["uid"].encode()
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return out


def _loader_uids(pool, work, expert, ooc, samples, mode="share"):
    open_clip_patch.apply()
    import open_clip_train.data as oc_data
    import open_clip_train.main as oc_main

    args = oc_main.parse_args(["--train-data", f"{pool}/{{00000000..00000003}}.tar", "--dataset-type", "webdataset",
                               "--dataset-resampled", "--train-num-samples", str(samples), "--batch-size", "50",
                               "--workers", "0", "--mode-work-dir", str(work), "--expert", str(expert),
                               "--ooc-ratio", str(ooc), "--ooc-mode", mode])
    args.world_size, args.rank, args.distributed = 1, 0, False
    data = oc_data.get_data(args, (lambda im: torch.zeros(1), lambda im: torch.zeros(1)), epoch=0,
                            tokenizer=lambda texts: [texts])
    return [uid for _, texts in data["train"].dataloader for uid in texts]


def _expert_of(work):
    coarse = {}
    for p in sorted(WorkDir(work).assign_dir.glob("*.parquet")):
        t = pq.read_table(p).to_pydict()
        coarse.update(zip(t["uid"], t["coarse"]))
    return coarse


@pytest.mark.parametrize("ooc", [0.02, 0.1])
def test_on_the_fly_loader_keeps_expert_pairs(toy_pool, toy_work, tmp_path, ooc):
    pool = _uid_text_pool(toy_pool, tmp_path / "pool")
    coarse = _expert_of(toy_work)
    expert = int(np.argmax(np.bincount(list(coarse.values()))))
    uids = _loader_uids(pool, toy_work, expert, ooc, samples=2000)
    assert len(uids) == 2000  # a fixed number of samples per epoch, whatever the cluster's size
    outside = np.mean([coarse[u] != expert for u in uids])
    assert 1 - outside >= (0.97 if ooc == 0.02 else 0.85)
    assert abs(outside - ooc) < 0.035


def test_on_the_fly_loader_additive_mix_is_moDEs(toy_pool, toy_work, tmp_path):
    """--ooc-mode additive (MoDE's loader): r of the other clusters' pairs join the expert's own."""
    pool = _uid_text_pool(toy_pool, tmp_path / "pool")
    coarse = _expert_of(toy_work)
    sizes = np.bincount(list(coarse.values()))
    expert = int(np.argmin(sizes))  # the smallest expert: additive gives it the largest out-of-cluster share
    n_in, n_out = sizes[expert], len(coarse) - sizes[expert]
    uids = _loader_uids(pool, toy_work, expert, 0.1, samples=3000, mode="additive")
    outside = np.mean([coarse[u] != expert for u in uids])
    assert abs(outside - 0.1 * n_out / (n_in + 0.1 * n_out)) < 0.035
    assert abs(outside - 0.1) > 0.05  # not the share semantics: the two modes differ on this expert


def test_expert_flags_are_checked(toy_pool, toy_work):
    open_clip_patch.apply()
    import open_clip_train.main as oc_main

    with pytest.raises(UserError, match="needs --expert"):
        oc_main.parse_args(["--mode-work-dir", str(toy_work), "--data-dir", str(toy_pool)])
    with pytest.raises(UserError, match="needs --mode-work-dir"):
        oc_main.parse_args(["--expert", "1"])
    with pytest.raises(UserError, match="--mode-work-dir/--expert works in open_clip's webdataset loader"):
        oc_main.parse_args(["--mode-work-dir", str(toy_work), "--expert", "1", "--train-data", "pairs.csv",
                            "--train-num-samples", "10"])  # --dataset-type auto takes the csv loader
    with pytest.raises(UserError, match="experts 0..2"):
        oc_main.parse_args(["--mode-work-dir", str(toy_work), "--expert", "7", "--data-dir", str(toy_pool)])
    routed = oc_main.parse_args(["--mode-work-dir", str(toy_work), "--expert", "1", "--expert-data", "routed",
                                 "--ooc-ratio", "0.02"])  # the shards' own mix (0.1) stands; a warning says so
    sizes = json.loads((WorkDir(toy_work).expert_shards_dir(1) / "sizes.json").read_text())
    assert routed.train_data.startswith(str(WorkDir(toy_work).expert_shards_dir(1)))
    assert routed.train_num_samples == sum(sizes.values()) and routed.mode_work_dir is None
    assert sorted(expand(routed.train_data)) == sorted(str(WorkDir(toy_work).expert_shards_dir(1) / n)
                                                          for n in sizes)  # what route wrote, nothing else there
    filtered = oc_main.parse_args(["--mode-work-dir", str(toy_work), "--expert", "1", "--data-dir", str(toy_pool),
                                   "--ooc-ratio", "0.2"])
    n1 = json.loads((WorkDir(toy_work).assign_dir / "summary.json").read_text())["counts"]["coarse"][1]
    assert filtered.train_num_samples == round(n1 / 0.8)


@pytest.mark.parametrize("name,world,per_gpu,model,lr", [
    ("b32_mode", 64, 512, "ViT-B-32-quickgelu", 5e-4),
    ("b16_mode", 64, 512, "ViT-B-16-quickgelu", 5e-4),
    ("l14_mode", 128, 256, "ViT-L-14-quickgelu", 4e-4),
])
def test_mode_recipes(monkeypatch, toy_pool, toy_work, name, world, per_gpu, model, lr):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    open_clip_patch.apply()
    import open_clip_train.main as oc_main

    args = oc_main.parse_args(run_configs.build_argv(name, ["--mode-work-dir", str(toy_work), "--expert", "0",
                                                            "--data-dir", str(toy_pool)]))
    assert (args.model, args.lr, args.batch_size, args.warmup) == (model, lr, per_gpu, 2000)
    assert (args.beta1, args.beta2, args.eps, args.wd, args.precision) == (0.9, 0.98, 1e-6, 0.2, "amp")
    assert args.train_num_samples == 400_000_000 and args.epochs == 32 and args.ooc_ratio == 0.02
    assert args.ooc_mode == "additive"  # MoDE's loader semantics
    routed = oc_main.parse_args(run_configs.build_argv(name, ["--mode-work-dir", str(toy_work), "--expert", "0",
                                                              "--expert-data", "routed"]))  # the README's example
    assert routed.train_data.startswith(str(WorkDir(toy_work).expert_shards_dir(0)))
    assert args.grad_checkpointing == (name != "b32_mode") and args.dataset_resampled
    with pytest.raises(UserError, match="needs a clustering"):
        run_configs.build_argv(name, ["--data-dir", str(toy_pool)])


def test_plan_jobs_names_experts_and_dense(toy_work, toy_pool):
    extra = ["--mode-work-dir", str(toy_work), "--data-dir", str(toy_pool)]
    jobs = launch.plan_jobs("b32_mode", "0,2", extra, dense=True)
    assert [j.name for j in jobs] == ["b32_mode_n3m8/seed", "b32_mode_n3m8/expert_0", "b32_mode_n3m8/expert_2",
                                      "b32_mode_n3m8/dense"]
    seed_ckpt = str((Path("logs") / "b32_mode_n3m8/seed/checkpoints/epoch_27.pt").resolve())
    seed = jobs[0].job.argv
    assert seed[seed.index("--stop-epoch") + 1] == "27" and seed[seed.index("--train-num-samples") + 1] == str(
        400_000_000) and jobs[0].reuse_if == seed_ckpt  # MoDE's split: 27 of 32 epochs
    for j in jobs[1:]:
        assert j.after == "b32_mode_n3m8/seed" and j.job.argv[-2:] == ["--init-from", seed_ckpt]
    dense = jobs[-1].job.argv
    assert dense[dense.index("--train-num-samples") + 1] == str(3 * 400_000_000)
    assert dense[dense.index("--mode-work-dir", len(extra)) + 1] == ""
    # a recipe without a fixed epoch (the toy's): seed and experts alike take the clustered pool's size, as
    # MoDE's runs share 400M, so a fork keeps the seed's steps per epoch (and its place in the LR schedule)
    n_pairs = launch.clustering_shape(str(toy_work))[2]
    toy = launch.plan_jobs("toy_tiny_mode", "0,1", ["--mode-work-dir", str(toy_work), "--toy-pool", str(toy_pool)],
                           seed_epochs=1, dense=True)
    sizes = [int(j.job.argv[len(j.job.argv) - 1 - j.job.argv[::-1].index("--train-num-samples") + 1]) for j in toy]
    assert sizes == [n_pairs, n_pairs, n_pairs, 3 * n_pairs]
    own = launch.plan_jobs("b32_mode", "0", [*extra, "--init-from", "x.pt"])
    assert [j.name for j in own] == ["b32_mode_n3m8/expert_0"] and own[0].after is None
    assert [j.name for j in launch.plan_jobs("b32_mode", "1", extra, seed_epochs=0)] == ["b32_mode_n3m8/expert_1"]
    for bad in (32, 40, -1):
        with pytest.raises(UserError, match="--seed-epochs"):
            launch.plan_jobs("b32_mode", "0", extra, seed_epochs=bad)
    with pytest.raises(UserError, match="experts 0..2"):
        launch.parse_experts("0,3", 3)
    assert launch.parse_experts("all", 3) == [0, 1, 2]


def _toy_expert_argv(toy_pool, toy_work, logs, epochs, samples=128):
    """A toy expert's flags; `samples` per epoch keeps the runs short (the protocol's default is the pool's size)."""
    return ["--toy-pool", str(toy_pool), "--mode-work-dir", str(toy_work), "--logs", str(logs),
            "--epochs", str(epochs), "--workers", "0", "--batch-size", "32", "--train-num-samples", str(samples)]


def test_init_from_seed_checkpoint(toy_pool, toy_work, tmp_path):
    from mode.train.recipe import run

    logs = tmp_path / "logs"
    run("toy_tiny", ["--toy-pool", str(toy_pool), "--logs", str(logs), "--name", "seed", "--epochs", "1",
                     "--workers", "0", "--batch-size", "32"])
    seed = logs / "seed" / "checkpoints" / "epoch_1.pt"
    run("toy_tiny_mode", [*_toy_expert_argv(toy_pool, toy_work, logs, 2), "--expert", "0", "--name", "full",
                          "--init-from", str(seed)])
    log = (logs / "full" / "out.log").read_text()
    assert f"resuming checkpoint '{seed}' (epoch 1)" in log
    assert set(epoch_losses(logs / "full" / "out.log")) == {2}  # continued at the seed's schedule position
    run("toy_tiny_mode", [*_toy_expert_argv(toy_pool, toy_work, logs, 1), "--expert", "0", "--name", "weights",
                          "--init-from", str(seed), "--init-from-model-only"])
    log = (logs / "weights" / "out.log").read_text()
    assert f"loaded checkpoint '{seed}' (epoch 0)" in log and set(epoch_losses(logs / "weights" / "out.log")) == {1}


def test_resume_skips_a_checkpoint_cut_short(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save({"epoch": 1}, ckpts / "epoch_1.pt")
    torch.save({"epoch": 2}, ckpts / "epoch_2.pt")
    whole = (ckpts / "epoch_2.pt").read_bytes()
    (ckpts / "epoch_10.pt").write_bytes(whole[: len(whole) // 2])  # killed while saving
    assert newest_complete_checkpoint(str(ckpts)) == str(ckpts / "epoch_2.pt")
    open_clip_patch.apply()
    import open_clip_train.main as oc_main

    assert oc_main.get_latest_checkpoint(str(ckpts), remote=False) == str(ckpts / "epoch_2.pt")
    assert oc_main.get_latest_checkpoint.__wrapped__(str(ckpts), remote=False) == str(ckpts / "epoch_10.pt")


def _kill_tree(pid):
    """SIGKILL a process and its descendants (submitit's local controller runs the task in a child)."""
    import os
    import signal
    from pathlib import Path

    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_for(path, job, timeout=300):
    start = time.time()
    while not path.exists():
        assert job.state not in ("FAILED", "DONE", "COMPLETED") or path.exists(), job.stderr()
        assert time.time() - start < timeout, f"{path} never appeared"
        time.sleep(0.2)


def test_local_executor_trains_every_expert_and_resumes_after_kill(toy_pool, toy_work, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    logs = tmp_path / "logs"
    extra = _toy_expert_argv(toy_pool, toy_work, logs, 3)
    planned = launch.plan_jobs("toy_tiny_mode", "1", extra)[0]
    name, job = planned.name, planned.job
    ex = launch.make_executor("local", str(tmp_path / "submitit"), "e1", {**vars(run_configs.Slurm()),
                                                                        "gpus_per_node": 1})
    first = ex.submit(job)
    ckpt_dir = logs / name / "checkpoints"
    _wait_for(ckpt_dir / "epoch_1.pt", first)
    while not is_complete_checkpoint(str(ckpt_dir / "epoch_1.pt")):
        time.sleep(0.05)
    _kill_tree(first._process.pid)  # killed mid-training (maybe mid-save), as a node failure would
    first._process.wait()
    assert not (ckpt_dir / "epoch_3.pt").exists()
    done_before = max(int(p.stem.split("_")[1]) for p in ckpt_dir.glob("epoch_*.pt")
                      if is_complete_checkpoint(str(p)))
    launch.launch("toy_tiny_mode", "1", extra, executor="local", folder=str(tmp_path / "submitit"))
    log = (logs / name / "out.log").read_text()
    assert f"(epoch {done_before})" in log and "=> resuming checkpoint" in log
    final = torch.load(ckpt_dir / "epoch_3.pt", map_location="cpu", weights_only=False)
    assert final["epoch"] == 3
    params = (logs / name / "params.txt").read_text()
    assert "expert: 1\n" in params and f"mode_work_dir: {toy_work}\n" in params


def test_cli_train_experts_all(toy_pool, toy_work, tmp_path):
    from ..conftest import PYTHON, run

    logs = tmp_path / "logs"
    res = run([PYTHON, "-m", "mode", "train-experts", "toy_tiny_mode", "--experts", "all", "--folder",
               str(tmp_path / "submitit"), "--", *_toy_expert_argv(toy_pool, toy_work, logs, 1)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for k in range(TOY_CLUSTER.coarse):
        assert (logs / f"toy_tiny_mode_n3m8/expert_{k}" / "checkpoints" / "epoch_1.pt").exists()
    assert res.stdout.count(": done") == 3


def test_dense_argv_parses(toy_work, toy_pool):
    job = launch.plan_jobs("toy_tiny_mode", "0", ["--mode-work-dir", str(toy_work), "--toy-pool", str(toy_pool)],
                           dense=True)[-1].job
    open_clip_patch.apply()
    import open_clip_train.main as oc_main

    args = oc_main.parse_args(run_configs.build_argv(job.recipe, job.argv))
    assert args.mode_work_dir is None and args.expert is None
    n_coarse, _, n_pairs = launch.clustering_shape(str(toy_work))
    assert n_pairs <= sum(1 for p in expand(str(toy_pool)) for _ in iter_tar(p))
    assert args.train_num_samples == n_coarse * n_pairs  # the experts' compute: K epochs of the pool's size
    assert isinstance(args, Namespace)


def test_slurm_job_script(tmp_path, monkeypatch):
    import shutil

    if shutil.which("srun") is None:  # no SLURM on this machine: one clear line
        with pytest.raises(UserError, match="Use --executor local"):
            launch.make_executor("slurm", str(tmp_path), "x", vars(run_configs.Slurm()))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")
    spec = {**vars(run_configs.MoDEExpert.slurm), "partition": "learn", "account": "acc", "constraint": "a100"}
    ex = launch.make_executor("slurm", str(tmp_path / "jobs"), "b32_mode_n4m1024_expert_0", spec)
    script = ex._executor._make_submission_file_text("python -m submitit.core._submit x", "UID")
    for line in ("#SBATCH --nodes=8", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --cpus-per-task=10", "#SBATCH --time=4320", "#SBATCH --partition=learn",
                 "#SBATCH --account=acc", "#SBATCH --constraint=a100", "#SBATCH --signal=USR2@120",
                 "#SBATCH --job-name=b32_mode_n4m1024_expert_0"):
        assert line in script, line
    # --gpus-per-node 0: a CPU job, which a cluster without GPUs accepts: no gres, one task per node
    cpu_job = {**vars(run_configs.Slurm()), "gpus_per_node": 0}
    cpu = launch.make_executor("slurm", str(tmp_path / "cpu"), "toy", cpu_job)
    script = cpu._executor._make_submission_file_text("python -m submitit.core._submit x", "UID")
    sbatch = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --ntasks-per-node=1" in sbatch and not any("gpu" in line or "gres" in line for line in sbatch)
    with pytest.raises(UserError, match="--gpus-per-node -1"):
        launch.make_executor("slurm", str(tmp_path / "neg"), "toy", {**cpu_job, "gpus_per_node": -1})


def _spy_first_epoch(monkeypatch):
    """Record the epoch, model weights and optimizer state that open_clip_train's loop starts with."""
    import copy

    import open_clip_train.main as oc_main

    seen = {}
    real = oc_main.train_one_epoch

    def spy(model, data, loss, epoch, optimizer, *args, **kwargs):
        if not seen:
            seen.update(epoch=epoch, state={k: v.detach().clone() for k, v in model.state_dict().items()},
                        optimizer=copy.deepcopy(optimizer.state_dict()))
        return real(model, data, loss, epoch, optimizer, *args, **kwargs)

    monkeypatch.setattr(oc_main, "train_one_epoch", spy)
    return seen


@pytest.fixture(scope="module")
def seed_run(toy_pool, tmp_path_factory):
    """A dense seed run of the toy model, 1 epoch, with the MoDE recipes' checkpointing flags."""
    from mode.train.recipe import run

    logs = tmp_path_factory.mktemp("seed") / "logs"
    run("toy_tiny", ["--toy-pool", str(toy_pool), "--logs", str(logs), "--name", "seed", "--epochs", "1",
                     "--workers", "0", "--batch-size", "32", "--train-num-samples", "128", "--save-most-recent"])
    return logs / "seed" / "checkpoints" / "epoch_1.pt"


def _mode_recipe_fork_argv(toy_pool, toy_work, logs, name, seed, epochs):
    """A MoDE recipe's own flags with only the model, data and size turned down to the toy."""
    return ["--model", "ViT-Toy-8", "--precision", "fp32", "--toy-pool", str(toy_pool), "--mode-work-dir",
            str(toy_work), "--expert", "0", "--batch-size", "32", "--train-num-samples", "128", "--workers", "0",
            "--epochs", str(epochs), "--logs", str(logs), "--name", name, "--init-from", str(seed)]


@pytest.mark.parametrize("recipe", ["b32_mode", "b16_mode", "l14_mode"])
def test_mode_recipe_expert_forks_from_seed(recipe, toy_pool, toy_work, seed_run, tmp_path, monkeypatch):
    from mode.train.recipe import run

    assert "--save-most-recent" in run_configs.get_recipe(recipe).to_argv()  # the case stock resume ignores
    seen = _spy_first_epoch(monkeypatch)
    logs = tmp_path / "logs"
    run(recipe, _mode_recipe_fork_argv(toy_pool, toy_work, logs, "e0", seed_run, 2))
    seed = torch.load(seed_run, map_location="cpu", weights_only=True)
    assert seen["epoch"] == seed["epoch"] == 1  # the expert's first epoch is the seed's E + 1 (0-based: E)
    assert seen["state"].keys() == seed["state_dict"].keys()
    assert all(torch.equal(seen["state"][k], v) for k, v in seed["state_dict"].items())
    start, saved = seen["optimizer"]["state"], seed["optimizer"]["state"]
    assert start.keys() == saved.keys() and len(saved) > 0
    for i, moments in saved.items():
        assert all(torch.equal(torch.as_tensor(start[i][m]), torch.as_tensor(v)) for m, v in moments.items())
    assert set(epoch_losses(logs / "e0" / "out.log")) == {2}
    own = torch.load(logs / "e0" / "checkpoints" / "epoch_latest.pt", map_location="cpu", weights_only=True)
    assert own["epoch"] == 2


def test_restart_resumes_own_checkpoint_not_seed(toy_pool, toy_work, seed_run, tmp_path, monkeypatch):
    from mode.train.recipe import run

    logs = tmp_path / "logs"
    run("b32_mode", _mode_recipe_fork_argv(toy_pool, toy_work, logs, "e0", seed_run, 2))
    seen = _spy_first_epoch(monkeypatch)
    run("b32_mode", _mode_recipe_fork_argv(toy_pool, toy_work, logs, "e0", seed_run, 3))  # relaunched, longer
    own = torch.load(logs / "e0" / "checkpoints" / "epoch_2.pt", map_location="cpu", weights_only=True)
    assert seen["epoch"] == 2 and all(torch.equal(seen["state"][k], v) for k, v in own["state_dict"].items())
    ckpt_dir = logs / "e0" / "checkpoints"
    assert "epoch_latest.pt' (epoch 2)" in (logs / "e0" / "out.log").read_text()
    # killed after writing epoch_3.pt but before replacing epoch_latest.pt: the newer epoch_3.pt wins
    (ckpt_dir / "epoch_latest.pt").write_bytes((ckpt_dir / "epoch_2.pt").read_bytes())
    written = (ckpt_dir / "epoch_3.pt").stat().st_mtime
    os.utime(ckpt_dir / "epoch_latest.pt", (written - 60, written - 60))  # it was replaced an epoch earlier
    seen.clear()
    run("b32_mode", _mode_recipe_fork_argv(toy_pool, toy_work, logs, "e0", seed_run, 4))
    assert seen["epoch"] == 3
    assert (logs / "e0" / "out.log.1").exists()  # the earlier log kept, not deleted


def test_relaunch_before_first_checkpoint_starts_from_seed(toy_pool, toy_work, seed_run, tmp_path, monkeypatch):
    """A job killed during its first forked epoch left a log and no checkpoint: the relaunch forks again."""
    from mode.train.recipe import run

    logs = tmp_path / "logs"
    (logs / "e0" / "checkpoints").mkdir(parents=True)
    (logs / "e0" / "out.log").write_text("first attempt\n")
    (logs / "e0" / "checkpoints" / "tmp.pt").write_bytes(b"cut short")
    seen = _spy_first_epoch(monkeypatch)
    run("b32_mode", _mode_recipe_fork_argv(toy_pool, toy_work, logs, "e0", seed_run, 2))
    assert seen["epoch"] == 1
    assert (logs / "e0" / "out.log.1").read_text() == "first attempt\n"


def test_init_from_refuses_bad_input(toy_pool, toy_work, seed_run, tmp_path):
    open_clip_patch.apply()
    import open_clip_train.main as oc_main

    base = ["--toy-pool", str(toy_pool), "--logs", str(tmp_path), "--name", "x"]
    cut = tmp_path / "cut.pt"
    cut.write_bytes(seed_run.read_bytes()[:1000])
    with pytest.raises(UserError, match="not a complete checkpoint"):
        oc_main.parse_args([*base, "--init-from", str(cut)])
    with pytest.raises(UserError, match="not a complete checkpoint"):
        oc_main.parse_args([*base, "--init-from", str(tmp_path / "missing.pt")])
    with pytest.raises(UserError, match="pass one of them"):
        oc_main.parse_args([*base, "--init-from", str(seed_run), "--resume", str(seed_run)])
    args = oc_main.parse_args([*base, "--init-from", str(seed_run), "--save-most-recent"])
    assert args.resume == str(seed_run)


@pytest.mark.parametrize("extra,message", [
    (["--rocket", "cl2l", "--separate-proj", "--init-from-model-only"],
     r"\d+ missing, e.g. rocket\.\S+.*or other --rocket heads"),
    (["--force-image-size", "32"], "of another shape, e.g. visual.positional_embedding"),
])
def test_a_checkpoint_of_another_model_is_one_line(extra, message, toy_pool, seed_run, tmp_path):
    """A plain CLIP seed forked into a clip-rocket run or another architecture: stock's strict load would print
    pages of keys; the plugin says which checkpoint and why, before anything trains."""
    from mode.train.recipe import run

    argv = ["--toy-pool", str(toy_pool), "--logs", str(tmp_path), "--name", "x", "--epochs", "2", "--workers", "0",
            "--batch-size", "32", "--train-num-samples", "64", "--init-from", str(seed_run), *extra]
    with pytest.raises(UserError, match=f"--init-from {seed_run}: its weights do not fit this run's model.*{message}"):
        run("toy_tiny", argv)
    assert not (tmp_path / "x" / "checkpoints").exists() or not list((tmp_path / "x" / "checkpoints").iterdir())


def test_same_seed_same_training(toy_pool, toy_work, tmp_path):
    """Two runs of an expert recipe with one seed: the same losses and bit-identical checkpoints (the sample
    shuffle, the out-of-cluster draws and the augmentations are all seeded); another seed differs."""
    from mode.train.recipe import run

    logs = tmp_path / "logs"

    def train(name, seed):
        run("toy_tiny_mode", ["--toy-pool", str(toy_pool), "--mode-work-dir", str(toy_work), "--expert", "1",
                              "--logs", str(logs), "--name", name, "--epochs", "2", "--batch-size", "32",
                              "--seed", str(seed), "--log-every-n-steps", "1"])
        losses = [line.split("Loss:")[1] for line in (logs / name / "out.log").read_text().splitlines()
                  if "Loss:" in line]
        return losses, torch.load(logs / name / "checkpoints" / "epoch_2.pt", map_location="cpu",
                                  weights_only=True)["state_dict"]

    (losses_a, a), (losses_b, b), (losses_c, _) = train("a", 0), train("b", 0), train("c", 1)
    assert len(losses_a) >= 4 and losses_a == losses_b and losses_a != losses_c
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stop_epoch_keeps_the_full_schedule(toy_pool, tmp_path):
    """--epochs 2 --stop-epoch 1 saves the same epoch-1 weights as the full 2-epoch run (a 1-epoch LR schedule
    would not), and stops there."""
    from mode.train.recipe import run

    logs = tmp_path / "logs"
    base = ["--toy-pool", str(toy_pool), "--logs", str(logs), "--epochs", "2", "--batch-size", "32",
            "--train-num-samples", "256", "--warmup", "2"]
    run("toy_tiny", [*base, "--name", "full"])
    run("toy_tiny", [*base, "--name", "stopped", "--stop-epoch", "1"])
    run("toy_tiny", [*base, "--name", "short", "--epochs", "1"])
    ckpt = {n: torch.load(logs / n / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=True)
            for n in ("full", "stopped", "short")}
    full, stopped, short = (ckpt[n]["state_dict"] for n in ("full", "stopped", "short"))
    assert all(torch.equal(full[k], stopped[k]) for k in full)
    assert not all(torch.equal(full[k], short[k]) for k in full)
    assert not (logs / "stopped" / "checkpoints" / "epoch_2.pt").exists()
    open_clip_patch.apply()
    import open_clip_train.main as oc_main

    with pytest.raises(UserError, match="--stop-epoch 3"):
        oc_main.parse_args([*base, "--stop-epoch", "3"])


def test_cli_runs_modes_protocol(toy_pool, toy_work, tmp_path):
    """`mode train-experts --seed-epochs 1 --dense`: the dense seed run to epoch 1, every expert and the dense
    baseline forked from its checkpoint; run again, the seed is reused and every run resumes its own."""
    from ..conftest import PYTHON, run

    logs = tmp_path / "logs"
    cmd = [PYTHON, "-m", "mode", "train-experts", "toy_tiny_mode", "--experts", "all", "--dense", "--seed-epochs",
           "1", "--folder", str(tmp_path / "submitit"), "--", *_toy_expert_argv(toy_pool, toy_work, logs, 2),
           "--train-num-samples", "96"]
    res = run(cmd, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    base = logs / "toy_tiny_mode_n3m8"
    seed_ckpt = base / "seed" / "checkpoints" / "epoch_1.pt"
    assert seed_ckpt.exists() and not (base / "seed" / "checkpoints" / "epoch_2.pt").exists()
    assert "stop_epoch: 1\n" in (base / "seed" / "params.txt").read_text()
    for name in ["expert_0", "expert_1", "expert_2", "dense"]:
        log = (base / name / "out.log").read_text()
        assert f"resuming checkpoint '{seed_ckpt}' (epoch 1)" in log, name
        assert set(epoch_losses(base / name / "out.log")) == {2}, name
    assert "train_num_samples: 288\n" in (base / "dense" / "params.txt").read_text()  # 3 experts x 96
    again = run(cmd, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"seed: reusing {seed_ckpt}" in again.stdout and again.stdout.count(": done") == 4
    assert "(epoch 2)" in (base / "expert_0" / "out.log").read_text().rsplit("resuming", 1)[1]


def test_slurm_experts_wait_for_the_seed_job(toy_pool, toy_work, tmp_path, monkeypatch):
    """Under SLURM one command submits the protocol: the experts and the dense run depend on the seed job."""
    fake = tmp_path / "bin"
    fake.mkdir()
    counter = tmp_path / "next_id"
    counter.write_text("100")
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "sbatch").write_text(f"#!/bin/sh\nn=$(cat {counter}); echo $((n + 1)) > {counter}\n"
                                 f"cp \"$1\" {tmp_path}/script_$n.sh\necho \"Submitted batch job $n\"\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    jobs = launch.launch("b32_mode", "all", ["--mode-work-dir", str(toy_work), "--data-dir", str(toy_pool),
                                             "--logs", str(tmp_path / "logs")], executor="slurm", dense=True,
                         folder=str(tmp_path / "submitit"))
    assert [j.job_id for j in jobs] == ["100", "101", "102", "103", "104"]
    seed_script = (tmp_path / "script_100.sh").read_text()
    assert "#SBATCH --job-name=b32_mode_n3m8_seed" in seed_script and "dependency" not in seed_script
    for n in range(101, 105):
        script = (tmp_path / f"script_{n}.sh").read_text()
        assert "#SBATCH --dependency=afterok:100" in script and "#SBATCH --kill-on-invalid-dep=yes" in script


def test_an_expert_smaller_than_a_batch_is_refused_without_resampling(toy_pool, toy_work):
    """Without --dataset-resampled, a loader worker that cannot fill one batch yields none and open_clip's epoch
    waits forever (found with a 24-pair toy expert): refused in one line, before any process starts."""
    open_clip_patch.apply()
    import open_clip_train.main as oc_main

    argv = ["--mode-work-dir", str(toy_work), "--expert", "0", "--data-dir", str(toy_pool), "--workers", "1"]
    args = oc_main.parse_args([*argv, "--batch-size", "2"])
    n = args.mode_distinct_samples
    assert 2 <= n < 600
    with pytest.raises(UserError, match=f"the data holds {n} samples, fewer than one batch of {n + 1}"):
        oc_main.parse_args([*argv, "--batch-size", str(n + 1)])
    assert oc_main.parse_args([*argv, "--batch-size", str(n + 1), "--dataset-resampled"]).batch_size == n + 1
    # enough pairs for a batch per worker on average, but a worker dealt the smallest shards gets less than one
    from open_clip_patch.data import expert_shard_counts

    counts = sorted(expert_shard_counts(str(toy_work), 0).values())
    cases = [(w, sum(counts[:len(counts) // w]) + 1) for w in range(2, len(counts) + 1)]
    workers, batch = next((w, b) for w, b in cases if b * w <= n)
    argv = [*argv[:-1], str(workers)]
    with pytest.raises(UserError, match=f"dealt the {len(counts) // workers} smallest of the {len(counts)} shards"):
        oc_main.parse_args([*argv, "--batch-size", str(batch)])
    assert oc_main.parse_args([*argv, "--batch-size", str(batch - 1)]).batch_size == batch - 1


class _Payload:
    """What a malicious checkpoint carries: unpickling it would create `path`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_payload_checkpoint_is_refused_whatever_torchs_default(toy_pool, tmp_path, monkeypatch):
    from mode.train.recipe import run

    marker = tmp_path / "PAYLOAD_RAN"
    evil = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "state_dict": _Payload(str(marker))}, evil)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's own default would unpickle it
    argv = ["--toy-pool", str(toy_pool), "--logs", str(tmp_path / "logs"), "--name", "x", "--epochs", "2",
            "--workers", "0", "--batch-size", "32", "--train-num-samples", "64", "--init-from", str(evil)]
    with pytest.raises(UserError, match=f"{evil}: not a checkpoint torch loads with weights_only=True"):
        run("toy_tiny", argv)
    assert not marker.exists()


def test_a_cut_epoch_latest_resumes_the_newest_whole_checkpoint(toy_pool, tmp_path):
    from mode.train.recipe import run

    logs = tmp_path / "logs"
    argv = ["--toy-pool", str(toy_pool), "--logs", str(logs), "--name", "r", "--workers", "0", "--batch-size", "32",
            "--train-num-samples", "64", "--save-most-recent", "--resume", "latest"]
    run("toy_tiny", [*argv, "--epochs", "2"])
    ckpts = logs / "r" / "checkpoints"
    latest = ckpts / "epoch_latest.pt"
    latest.write_bytes(latest.read_bytes()[:2000])  # a full disk while it was written
    run("toy_tiny", [*argv, "--epochs", "3"])
    assert f"resuming checkpoint '{ckpts / 'epoch_2.pt'}' (epoch 2)" in (logs / "r" / "out.log").read_text()
    assert torch.load(latest, weights_only=True)["epoch"] == 3
    for name in ("epoch_latest.pt", "epoch_1.pt", "epoch_2.pt", "epoch_3.pt"):
        (ckpts / name).unlink(missing_ok=True) if name != "epoch_latest.pt" else latest.write_bytes(b"cut")
    with pytest.raises(UserError, match="is incomplete and the run has no complete epoch_K.pt"):
        run("toy_tiny", [*argv, "--epochs", "4"])


def test_flags_without_their_base_abbreviations_and_warmup(toy_pool, toy_work, tmp_path):
    open_clip_patch.apply()
    import open_clip_train.main as oc_main

    base = ["--toy-pool", str(toy_pool), "--train-num-samples", "640", "--batch-size", "32"]
    for flag, value in (("--ooc-ratio", "0.1"), ("--expert-data", "routed")):
        with pytest.raises(UserError, match=f"{flag} needs --mode-work-dir W --expert K"):
            oc_main.parse_args([*base, flag, value])
    with pytest.raises(UserError, match="--init-from-model-only needs --init-from"):
        oc_main.parse_args([*base, "--init-from-model-only"])
    with pytest.raises(UserError, match="--expert 0 filters the pool on the fly: pass the pool's shards"):
        oc_main.parse_args(["--mode-work-dir", str(toy_work), "--expert", "0", "--train-num-samples", "10"])
    with pytest.raises(SystemExit):  # stock would take --batch for --batch-size, and a recipe's would win
        oc_main.parse_args([*base, "--batch", "8"])
    assert oc_main.parse_args([*base, "--warmup-epochs", "1", "--warmup", "7"]).warmup == 7  # the last one wins
    assert oc_main.parse_args([*base, "--warmup", "7", "--warmup-epochs", "1"]).warmup == 20  # 640 / 32


def test_a_refused_second_launch_leaves_the_running_runs_log(toy_pool, seed_run, tmp_path):
    open_clip_patch.apply()
    import open_clip_train.main as oc_main

    run_dir = tmp_path / "x"
    run_dir.mkdir()
    (run_dir / "out.log").write_text("the running run's log\n")
    holder = subprocess.Popen([PYTHON, "-c", "import sys, time; from mode.core.lock import acquire; "
                               f"acquire({str(run_dir)!r}, 'train', 'a run'); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError):
            oc_main.parse_args(["--toy-pool", str(toy_pool), "--logs", str(tmp_path), "--name", "x",
                                "--init-from", str(seed_run)])
    finally:
        holder.kill()
        holder.wait()
    assert (run_dir / "out.log").read_text() == "the running run's log\n" and not (run_dir / "out.log.1").exists()


def test_protocol_record_refuses_another_clustering_or_flags(toy_pool, toy_work, tmp_path):
    extra = _toy_expert_argv(toy_pool, toy_work, tmp_path / "logs", 2)
    plan = launch.plan_jobs("toy_tiny_mode", "all", extra, seed_epochs=1)
    path, record = plan[0].protocol
    assert record["clustering"] == WorkDir(toy_work).clustering_id() and record["flags"] == extra
    launch.claim_protocol(path, record)
    launch.claim_protocol(path, record)  # the same protocol relaunched (other experts, --dense): fine
    with pytest.raises(UserError, match="holds runs of another MoDE protocol \\(clustering differs"):
        launch.claim_protocol(path, {**record, "clustering": "0" * 64})
    with pytest.raises(UserError, match="flags differs"):
        launch.claim_protocol(path, {**record, "flags": [*extra, "--lr", "1"]})
    with pytest.raises(UserError, match="an expert is listed twice"):
        launch.plan_jobs("toy_tiny_mode", "0,0", extra, seed_epochs=1)
    with pytest.raises(UserError, match="not --samples-seen"):
        launch.plan_jobs("toy_tiny_mode", "all", [*extra, "--samples-seen", "100"], seed_epochs=1)
    routed = ["--mode-work-dir", str(toy_work), "--expert-data", "routed", "--logs", str(tmp_path / "l2")]
    with pytest.raises(UserError, match="the seed run trains on the whole pool: pass its shards"):
        launch.plan_jobs("b32_mode", "all", routed)  # (toy_tiny_mode's recipe names the toy pool)


def test_a_failing_local_job_is_one_line(toy_pool, toy_work, tmp_path):
    res = run([PYTHON, "-m", "mode", "train-experts", "toy_tiny_mode", "--experts", "0", "--folder",
               str(tmp_path / "submitit"), "--", *_toy_expert_argv(toy_pool, toy_work, tmp_path / "logs", 2),
               "--init-from", str(tmp_path / "missing.pt")])
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()
    assert len(last) == 1 and "not a complete checkpoint file" in last[0] and "(log " in last[0], res.stderr[-2000:]


def test_routed_data_is_what_route_wrote(toy_work, tmp_path, caplog):
    import shutil

    open_clip_patch.apply()
    import open_clip_train.main as oc_main

    work = shutil.copytree(toy_work, tmp_path / "work")
    folder = WorkDir(work).expert_shards_dir(0)
    shutil.copy(next(folder.glob("*.tar")), folder / "foo.tar")  # a file someone left there
    args = oc_main.parse_args(["--mode-work-dir", str(work), "--expert", "0", "--expert-data", "routed",
                               "--dataset-resampled"])
    sizes = json.loads((folder / "sizes.json").read_text())
    assert sorted(expand(args.train_data)) == sorted(str(folder / n) for n in sizes)
    assert args.train_num_samples == sum(sizes.values()) and "did not write (e.g. foo.tar)" in caplog.text
