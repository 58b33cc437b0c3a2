import configparser

import open_clip
import open_clip_train.data as oc_data
import open_clip_train.main as oc_main
import open_clip_train.params as oc_params
import open_clip_train.train as oc_train
import open_clip_train.zero_shot as oc_zero_shot
import pytest
import torch

import open_clip_patch
from mode.core.errors import UserError
from open_clip_patch import params
from open_clip_patch.zero_shot import accuracy

from ..conftest import REPO


def test_apply_is_idempotent_and_wraps_stock_once():
    open_clip_patch.apply()
    first = oc_main.parse_args
    ddp = torch.nn.parallel.DistributedDataParallel
    open_clip_patch.apply()
    assert oc_main.parse_args is first and torch.nn.parallel.DistributedDataParallel is ddp
    assert first.__wrapped__ is oc_params.parse_args  # one layer over stock, not two
    assert oc_zero_shot.accuracy is accuracy
    assert set(open_clip_patch.model_names()) <= set(open_clip.list_models())
    assert "ViT-Toy-8" in open_clip.list_models()
    # the rest of the training loop is open_clip_train's own
    assert oc_main.get_data.__wrapped__ is oc_data.get_data  # reports repeats and coverage first
    # stock, unless reinforced (inner layer) or --rocket (outer layer)
    assert oc_main.train_one_epoch.__wrapped__.__wrapped__ is oc_train.train_one_epoch
    # stock, unless reinforced (inner layer), --rocket, or stopped early with --stop-epoch (outer layer)
    assert oc_main.create_loss.__wrapped__.__wrapped__.__wrapped__ is open_clip.create_loss
    # stock, with --rocket's heads (inner layer), kept for pt_load's check that a checkpoint fits (outer layer)
    assert oc_main.create_model_and_transforms.__wrapped__.__wrapped__ is open_clip.create_model_and_transforms
    # wrapped once for rocket views, reinforcements, experts and the seeded sample shuffle
    assert oc_data.get_wds_dataset.__wrapped__.__wrapped__.__wrapped__.__wrapped__.__module__ == \
        "open_clip_train.data"
    assert oc_main.pt_load.__wrapped__.__module__ == "open_clip_train.file_utils"


@pytest.mark.parametrize("version,ok", [("3.3.0", True), ("3.3.7", True), ("3.2.0", False), ("4.0.0", False)])
def test_version_check(version, ok):
    if ok:
        assert open_clip_patch.check_version(version) == version
    else:
        with pytest.raises(UserError, match=r"not supported.*>=3.3,<3.4"):
            open_clip_patch.check_version(version)


def test_declared_range_matches_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    reqs = [r.strip() for r in cfg["options"]["install_requires"].splitlines()]
    assert f"open_clip_torch{open_clip_patch.SUPPORTED_OPEN_CLIP}" in reqs


def test_zero_shot_accuracy_counts_hits_under_numpy2():
    logits = torch.tensor([[0.9, 0.1, 0.0, 0.0, 0.0, 0.0],
                           [0.1, 0.2, 0.7, 0.0, 0.0, 0.0],
                           [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]])
    target = torch.tensor([0, 1, 5])
    assert accuracy(logits, target, topk=(1, 2, 5)) == [1.0, 2.0, 2.0]


def test_zero_shot_run_works_through_open_clip_train():
    """open_clip_train's own zero-shot loop, with its accuracy patched, on a tiny model."""
    open_clip_patch.apply()
    model, _, _ = open_clip.create_model_and_transforms("ViT-Toy-8")
    model.eval()
    torch.manual_seed(0)
    images, targets = torch.randn(6, 3, 64, 64), torch.tensor([0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        feats = model.encode_image(images, normalize=True)
    classifier = feats.T.clone()  # class i's weight is image i's feature: top-1 must be perfect

    class Args:
        device, precision, batch_size = "cpu", "fp32", 3

    top1, top5 = oc_zero_shot.run(model, classifier, [(images[:3], targets[:3]), (images[3:], targets[3:])], Args)
    assert top1 == 1.0 and top5 == 1.0


def _parse(argv):
    open_clip_patch.apply()
    return oc_main.parse_args(argv)


def test_no_plugin_flags_parse_like_stock():
    for argv in (["--model", "ViT-B-32", "--batch-size", "7"], ["--train-data", "x/{0..3}.tar", "--epochs", "3"]):
        ours, stock = vars(_parse(argv)), vars(oc_params.parse_args(argv))
        defaults = vars(params.plugin_parser().parse_args([]))
        assert {k: v for k, v in ours.items() if k not in defaults} == stock
        assert {k: ours[k] for k in defaults} == defaults


def test_global_batch_follows_world_size_and_accum(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert _parse(["--global-batch-size", "4096"]).batch_size == 512
    assert _parse(["--global-batch-size", "4096", "--accum-freq", "4"]).batch_size == 128
    monkeypatch.setenv("WORLD_SIZE", "64")
    assert _parse(["--global-batch-size", "90112", "--accum-freq", "4"]).batch_size == 352


def test_last_flag_wins_between_plugin_and_stock_flags():
    assert _parse(["--global-batch-size", "256", "--batch-size", "10"]).batch_size == 10
    assert _parse(["--batch-size", "10", "--global-batch-size", "256"]).batch_size == 256
    args = _parse(["--samples-seen", "1000", "--epochs", "4"])
    assert args.train_num_samples == 250
    assert _parse(["--samples-seen", "1000", "--train-num-samples", "7"]).train_num_samples == 7
    with pytest.raises(UserError):
        _parse(["--global-batch-size", "0"])


def test_data_dir_datacomp_semantics(toy_pool, tmp_path):
    from mode.core.layout import Pool
    from mode.core.shards import total_samples

    shards_dir = Pool(toy_pool).shards_dir
    n = total_samples(sorted(str(p) for p in shards_dir.glob("*.tar")))
    args = _parse(["--data_dir", str(toy_pool)])
    assert args.train_data == f"{shards_dir}/{{00000000..00000003}}.tar"
    assert args.train_num_samples == n
    second = tmp_path / "second"
    second.mkdir()
    for i, p in enumerate(sorted(shards_dir.glob("*.tar"))[:2]):
        (second / f"{i:08d}.tar").symlink_to(p)
    (second / "sizes.json").write_text('{"00000000.tar": 3, "00000001.tar": 4}')
    args = _parse(["--data-dir", f"{toy_pool}::{second}", "--dataset-resampled"])
    assert args.train_data.split("::") == [f"{shards_dir}/{{00000000..00000003}}.tar",
                                           f"{second}/{{00000000..00000001}}.tar"]
    assert args.train_num_samples == n + 7
    assert _parse(["--data-dir", str(toy_pool), "--train-data", "y.tar", "--workers", "1"]).train_data == "y.tar"
    with pytest.raises(UserError, match="no such directory"):
        _parse(["--data-dir", str(tmp_path / "nope")])


def test_reinforcement_flags_are_checked():
    dr = ["--dataset-reinforcement", "--dataset-reinforcement-config", "dr_augment_12m"]
    args = _parse([*dr, "--distill-logit-scale", "100", "--distill-loss-weights", "0.25", "0.75",
                   "--distill-teacher-dimension", "768", "768", "--distill-average-after-softmax"])
    assert args.distill_loss_weights == [0.25, 0.75] and args.distill_teacher_dimension == [768, 768]
    assert isinstance(args.dr_augment_config, dict)  # loaded (and checked) once, at parse time
    assert _parse([*dr, "--distill-loss-weights", "1", "0"]).distill_logit_scale is None  # no KD, no scale
    for argv, match in ((["--distill-loss-weights", "1", "0"], "needs --dataset-reinforcement"),
                        ([*dr], "--distill-logit-scale"),
                        ([*dr, "--distill-logit-scale", "1", "2", "3", "--distill-teacher-dimension", "4", "4"],
                         "3 values for 2 teachers"),
                        ([*dr, "--distill-logit-scale", "100", "--accum-freq", "2"], "--accum-freq 1"),
                        ([*dr, "--distill-logit-scale", "100", "--siglip"], "drop --siglip"),
                        (["--dataset-reinforcement", "--distill-logit-scale", "100"], "needs --dataset-re")):
        with pytest.raises(UserError, match=match):
            _parse(argv)
    # accepted once, then a traceback in the loss or the first step
    kd = [*dr, "--distill-logit-scale", "100"]
    for argv, match in (([*kd, "--distill-teacher-dimension", "32", "0"], "each teacher's width"),
                        ([*kd, "--distill-teacher-dimension", "-1", "-1"], "-1 alone"),
                        ([*dr, "--distill-logit-scale", "nan"], "finite scales > 0"),
                        ([*dr, "--distill-logit-scale", "inf"], "finite scales > 0"),
                        ([*dr, "--distill-logit-scale", "100", "0"], "finite scales > 0"),
                        ([*kd, "--distill-loss-weights", "nan", "1"], "two finite weights >= 0"),
                        ([*kd, "--distill-loss-weights", "-1", "1"], "two finite weights >= 0"),
                        ([*kd, "--distill-loss-weights", "0", "0"], "not both 0"),
                        ([*kd, "--model", "coca_ViT-B-32"], "CoCa model")):
        with pytest.raises(UserError, match=match):
            _parse(argv)


def test_expert_training_refuses_an_incomplete_assignment(toy_pool, toy_work, tmp_path):
    """An unfinished multi-rank assign once trained an expert on part of its uids: now one line, for a training
    run and for `mode train-experts` alike."""
    import json
    import shutil

    from mode.core.layout import WorkDir
    from mode.train.launch import plan_jobs

    work = WorkDir(shutil.copytree(toy_work, tmp_path / "work"))
    flags = ["--data-dir", str(toy_pool), "--mode-work-dir", str(work.root), "--expert", "0", "--workers", "1",
             "--dataset-resampled"]
    assert _parse(flags).train_num_samples > 0
    first = sorted(work.assign_dir.glob("*.stats.json"))[0]
    first.unlink()  # one rank has not finished
    summary = json.loads(WorkDir.summary(work.assign_dir).read_text())
    WorkDir.summary(work.assign_dir).write_text(json.dumps({**summary, "complete": False, "shards_done": 3}))
    with pytest.raises(UserError, match="`mode assign` is incomplete"):
        _parse(flags)
    with pytest.raises(UserError, match="`mode assign` is incomplete"):
        plan_jobs("toy_tiny_mode", "all", ["--mode-work-dir", str(work.root)])
