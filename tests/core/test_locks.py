"""One run at a time: a second concurrent run of a step, a reshard or a training run stops with one line."""

import os

import pytest

import open_clip_patch
from mode.core import lock
from mode.core.errors import UserError
from mode.core.layout import WorkDir
from mode.datacomp import reshard
from mode.prep import captions, cluster

from ..conftest import TOY_CLUSTER


def _held_elsewhere(folder, name):
    """The lock as another process holding it would: a separate open file description with its flock."""
    return lock.acquire(folder, name, "test holder")


def test_second_cluster_run_on_a_work_dir_stops(toy_pool, toy_work, tmp_path):
    fd = _held_elsewhere(toy_work, "cluster")
    try:
        with pytest.raises(UserError, match=f"another `mode cluster` is running .*pid {os.getpid()}"):
            cluster.run(str(toy_pool), str(toy_work), TOY_CLUSTER, world_size=1)
    finally:
        lock.release(fd)
    assert cluster.run(str(toy_pool), str(toy_work), TOY_CLUSTER, world_size=1)["config"]["fine"] == 8


def test_second_per_shard_run_of_one_rank_stops(toy_pool, tmp_path):
    work = tmp_path / "work"
    fd = _held_elsewhere(WorkDir(work).captions_dir, "captions-rank0-of1")
    try:
        with pytest.raises(UserError, match=r"another `mode captions` \(rank 0 of 1\) is running"):
            captions.run(str(toy_pool), str(work), 0, 1)
        assert not list(WorkDir(work).captions_dir.glob("*.parquet"))
        other_rank = captions.run(str(toy_pool), str(work), 1, 2)  # another rank's share is not blocked
        assert other_rank["shards_done"] == 2
    finally:
        lock.release(fd)


def test_second_reshard_into_one_folder_stops(toy_pool, tmp_path):
    import numpy as np

    subset = tmp_path / "s.npy"
    np.save(subset, np.zeros(0, "u8,u8"))
    fd = _held_elsewhere(tmp_path, "reshard-out")
    try:
        with pytest.raises(UserError, match="another `mode reshard` is running"):
            reshard.run(str(toy_pool), str(tmp_path / "out"), str(subset))
    finally:
        lock.release(fd)
    assert not (tmp_path / "out").exists()


def test_second_training_with_one_name_stops(toy_pool, tmp_path):
    open_clip_patch.apply()
    import open_clip_train.main as oc_main

    fd = _held_elsewhere(tmp_path / "logs" / "run", "train")
    try:
        with pytest.raises(UserError, match="another training run named 'run' is running"):
            oc_main.parse_args(["--toy-pool", str(toy_pool), "--logs", str(tmp_path / "logs"), "--name", "run"])
    finally:
        lock.release(fd)
    args = oc_main.parse_args(["--toy-pool", str(toy_pool), "--logs", str(tmp_path / "logs"), "--name", "run"])
    assert args.name == "run"


def test_runs_with_other_parameters_never_share_a_step(toy_pool, tmp_path):
    """Two per-shard runs with other parameters once both "succeeded" into one step (the rank locks differ when
    the rank splits do): while a run is alive, one with other parameters is one line, whatever its ranks; runs
    of the same parameters (other ranks) go on; once the first is gone, the new parameters meet the old
    outputs as before."""
    step = tmp_path / "step"
    changed = []
    with lock.params_claim(step, "a", "`mode route`"):
        with pytest.raises(UserError, match="other parameters is running"):
            with lock.params_claim(step, "b", "`mode route`"):
                pass
        with lock.params_claim(step, "a", "`mode route`", on_change=lambda: changed.append("a")):
            pass  # another rank of the same run
    assert changed == [] and (step / ".params").read_text() == "a"
    with lock.params_claim(step, "b", "`mode route`", on_change=lambda: changed.append("b")):
        assert (step / ".params").read_text() == "b"
    assert changed == ["b"]

    from mode.core.runner import params_hash, run_per_shard

    shards = [str(p) for p in sorted((toy_pool / "shards").glob("*.tar"))]
    out = tmp_path / "work"
    with lock.params_claim(out, params_hash({"ratio": 0.5}), "`mode route`"):
        with pytest.raises(UserError, match="other parameters is running"):
            run_per_shard("route", out, shards, lambda p, i: {"processed": 1, "kept": 1}, {"ratio": 0.1},
                          rank=0, world_size=2)
    assert not list(out.glob("*.stats.json"))
