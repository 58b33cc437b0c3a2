"""Real training runs of open_clip_train on the toy pool, on CPU: stock, with the plugin, and under torchrun."""

import math
import re
from pathlib import Path

import torch

from mode.core.layout import Pool
from mode.core.shards import brace_spec, total_samples
from mode.train.trainlog import epoch_losses

from ..conftest import PYTHON, REPO, run

MAIN = str(REPO / "src" / "training" / "main.py")

# Stock open_clip_train: the tiny config is registered the way any user registers one, nothing else.
STOCK = """
import sys, open_clip
open_clip.add_model_config(sys.argv[1])
from open_clip_train.main import main
sys.exit(main(sys.argv[2:]))
"""


def _stock_argv(pool, logs, name):
    paths = sorted(str(p) for p in Pool(pool).shards_dir.glob("*.tar"))
    return ["--model", "ViT-Toy-8", "--train-data", brace_spec(paths), "--train-num-samples",
            str(total_samples(paths)), "--dataset-type", "webdataset", "--batch-size", "32", "--epochs", "1",
            "--workers", "1", "--precision", "fp32", "--log-every-n-steps", "4", "--logs", str(logs),
            "--name", name, "--seed", "0"]


def _checkpoint_keys(path):
    sd = torch.load(path, map_location="cpu", weights_only=False)
    return {k: tuple(v.shape) for k, v in sd["state_dict"].items()}, sd["epoch"]


def test_stock_open_clip_train_and_plugin_train_on_toy_shards(toy_pool, tmp_path):
    from open_clip_patch import MODEL_CONFIG_DIR

    logs = tmp_path / "logs"
    res = run([PYTHON, "-c", STOCK, str(MODEL_CONFIG_DIR), *_stock_argv(toy_pool, logs, "stock")], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    stock_keys, stock_epoch = _checkpoint_keys(logs / "stock" / "checkpoints" / "epoch_1.pt")
    assert set(epoch_losses(logs / "stock" / "out.log")) == {1}

    # the same stock flags through the plugin's entry point (the recipe's flags come first; ours win)
    res = run([PYTHON, MAIN, "toy_tiny", *_stock_argv(toy_pool, logs, "plugin")], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    plugin_keys, plugin_epoch = _checkpoint_keys(logs / "plugin" / "checkpoints" / "epoch_1.pt")
    assert plugin_keys == stock_keys and plugin_epoch == stock_epoch == 1
    params = (logs / "plugin" / "params.txt").read_text()
    assert "batch_size: 32\n" in params and "train_num_samples: " in params


def test_torchrun_two_cpu_processes_loss_falls(tmp_path):
    """The issue's acceptance command, from an empty directory (the toy pool is made on first use), typed as the
    README has it: torchrun's `--` and then open_clip's own `--logs` (without the `--`, torch 2.14's torchrun
    takes `--logs` for its `--logs-specs` and stops)."""
    torchrun = Path(PYTHON).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.exists() else [PYTHON, "-m", "torch.distributed.run"]
    logs = tmp_path / "my_logs"
    res = run([*launcher, "--standalone", "--nproc_per_node", "2", "--", MAIN, "toy_tiny", "--epochs", "2",
               "--name", "ddp", "--logs", str(logs)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "runs" / "toy" / "toy.json").exists()
    assert (logs / "ddp" / "checkpoints" / "epoch_2.pt").exists()
    params = (logs / "ddp" / "params.txt").read_text()
    assert "world_size: 2\n" in params and "distributed: True\n" in params
    losses = epoch_losses(logs / "ddp" / "out.log")
    assert losses[2] < losses[1]
    readme = (REPO / "README.md").read_text()
    assert "torchrun --nproc_per_node N -- src/training/main.py NAME" in readme
    assert not re.search(r"torchrun [^\n`]*?(?<!-- )src/training/main\.py", readme)  # every line has the --


def test_preflight_shards_per_worker_repeats_and_resumed_coverage(toy_pool, tmp_path):
    """Fewer shards than loader workers is one line before training; a --train-num-samples above the data says
    how often each sample repeats; a resumed run says what it has covered."""
    paths = sorted(str(p) for p in Pool(toy_pool).shards_dir.glob("*.tar"))
    distinct = total_samples(paths)
    base = [PYTHON, MAIN, "toy_tiny", "--data-dir", str(toy_pool), "--logs", str(tmp_path / "logs"), "--name", "rep",
            "--batch-size", "64", "--train-num-samples", str(3 * distinct)]
    res = run([*base, "--workers", str(len(paths) + 1)], cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [res.stderr.strip()], res.stderr[-2000:]
    assert f"{len(paths)} training shard(s) for 1 process(es) x --workers {len(paths) + 1}" in res.stderr
    assert not (tmp_path / "logs" / "rep").exists()
    res = run([*base, "--epochs", "1", "--workers", "1"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    log = (tmp_path / "logs" / "rep" / "out.log").read_text()
    assert f"exceeds the {distinct} distinct samples of the data: each is seen about 3.00 times per epoch" in log
    res = run([*base, "--epochs", "2", "--workers", "1", "--resume", "latest"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    log = (tmp_path / "logs" / "rep" / "out.log").read_text()
    assert f"Resuming at epoch 1: {3 * distinct} samples drawn so far, about {distinct} distinct of {distinct}" in log


def test_expected_distinct_coverage():
    from open_clip_patch.preflight import expected_distinct

    assert expected_distinct(3000, 1000, 3000, resampled=False) == 1000  # every epoch walks all shards
    assert expected_distinct(500, 1000, 500, resampled=False) == 500  # one half epoch: 500 distinct
    assert expected_distinct(1000, 1000, 500, resampled=False) == 750  # two fresh shuffles of half
    assert expected_distinct(1000, 1000, 1000, resampled=True) == 632  # with replacement: 1 - 1/e


def test_losses_read_a_diverged_epoch_as_nan(tmp_path):
    from mode.train.trainlog import epoch_losses

    log = tmp_path / "out.log"
    log.write_text("Train Epoch: 0 [32/64 (50%)] Contrastive_loss: 3.4932 (3.4932) Loss: 3.4932 (3.4932)\n"
                   "Train Epoch: 1 [32/64 (50%)] Contrastive_loss: 3.1 (3.1) Loss: 3.1 (3.1)\n"
                   "Train Epoch: 1 [64/64 (100%)] Contrastive_loss: nan (nan) Loss: inf (inf)\n")
    losses = epoch_losses(log)
    assert losses[1] == 3.4932 and math.isnan(losses[2])
    assert epoch_losses(log, "loss")[2] == math.inf
