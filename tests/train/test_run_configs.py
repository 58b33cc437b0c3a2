import dataclasses

import open_clip_train.main as oc_main
import pytest

import open_clip_patch
import run_configs
from mode.core.errors import UserError

from ..conftest import PYTHON, REPO, run

MAIN = str(REPO / "src" / "training" / "main.py")



def _parse(name, extra):
    open_clip_patch.apply()
    return oc_main.parse_args(run_configs.build_argv(name, extra))


def test_fields_map_one_to_one_onto_flags():
    argv = run_configs.ToyTiny(lr=0.5, local_loss=True, dataset_resampled=False).to_argv()
    assert argv[:2] == ["--model", "ViT-Toy-8"]
    assert argv[argv.index("--lr") + 1] == "0.5"
    assert "--local-loss" in argv and "--dataset-resampled" not in argv
    assert "--beta1" not in argv  # None: left to open_clip's default
    for cls in (run_configs.Recipe, run_configs.ToyTiny, run_configs.DataCompScale):
        assert all(f.type is not None for f in dataclasses.fields(cls))


@pytest.mark.parametrize("name", sorted(run_configs.RECIPES))
def test_every_recipe_parses_with_open_clip_and_plugin(name, toy_pool, toy_work, wordnet_dir):
    expert = ["--mode-work-dir", str(toy_work), "--expert", "0"] if name.endswith("_mode") else []
    if name.startswith("cliprocket"):  # synonym replacement reads WordNet, a download at a user's site; the toy
        # pool holds less than one global batch of 4096 (refused without resampling), hence a smaller one
        expert += ["--wordnet-dir", wordnet_dir, "--workers", "1", "--global-batch-size", "64"]
    args = _parse(name, ["--data-dir", str(toy_pool), *expert])
    recipe = run_configs.get_recipe(name)
    given = {t.removeprefix("--").replace("-", "_") for t in expert if t.startswith("--")}
    for f in dataclasses.fields(recipe):
        value = getattr(recipe, f.name)
        if value is not None and f.name not in ("toy_pool", "data_dir", "mode_work_dir", *given):
            want = list(value) if isinstance(value, tuple) else value  # argparse's nargs give lists
            assert getattr(args, f.name) == want, f.name


@pytest.mark.parametrize("name,model,batch,lr,warmup,beta2,samples", [
    ("datacomp_small", "ViT-B-32", 4096, 5e-4, 500, 0.98, 12_800_000),
    ("datacomp_medium", "ViT-B-32", 4096, 5e-4, 500, 0.98, 128_000_000),
    ("datacomp_large", "ViT-B-16", 8192, 5e-4, 500, 0.98, 1_280_000_000),
    ("datacomp_xlarge", "ViT-L-14", 90112, 1e-3, 10000, 0.95, 12_800_000_000),
])
def test_datacomp_fixed_hyperparameters(monkeypatch, toy_pool, name, model, batch, lr, warmup, beta2, samples):
    monkeypatch.setenv("WORLD_SIZE", "8")
    args = _parse(name, ["--data-dir", str(toy_pool), "--accum-freq", "2"])
    assert (args.model, args.lr, args.warmup, args.beta2) == (model, lr, warmup, beta2)
    assert args.batch_size == batch // 16
    assert args.train_num_samples * args.epochs == samples
    assert args.dataset_resampled and args.resume == "latest" and args.save_most_recent
    assert args.train_data.endswith("{00000000..00000003}.tar")
    args = _parse(name, ["--data-dir", str(toy_pool), "--epochs", "8"])  # more checkpoints, same budget
    assert args.train_num_samples == samples // 8


def test_user_flags_override_recipe(toy_pool):
    args = _parse("toy_tiny", ["--epochs", "3", "--lr", "0.01", "--toy-pool", str(toy_pool)])
    assert (args.epochs, args.lr, args.model) == (3, 0.01, "ViT-Toy-8")
    assert args.train_data.startswith(str(toy_pool))


def test_unknown_recipe_names_closest():
    with pytest.raises(UserError, match="closest: toy_tiny"):
        run_configs.get_recipe("toy_tiy")
    res = run([PYTHON, MAIN, "datacomp_smal"])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown config 'datacomp_smal'; closest: datacomp_small")


def test_datacomp_recipe_without_data_is_one_line_error():
    res = run([PYTHON, MAIN, "datacomp_small"])
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "--data-dir" in res.stderr
