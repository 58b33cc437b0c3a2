"""DataCompDR end to end on the toy pool: dr-generate -> (dr-join) -> reinforced loader -> toy_tiny_dr training."""

import io
import json

import numpy as np
import pytest
import torch

from dr import generate, join
from dr import sample as drs
from mode.core.layout import Pool
from mode.core.shards import expand, iter_tar, write_tar
from mode.train.trainlog import epoch_losses

from ..conftest import PYTHON, REPO, run

CFG = generate.GenerateConfig(num_augs=3, num_syn=2)


@pytest.fixture(scope="module")
def dr_pool(toy_pool, tmp_path_factory):
    out = tmp_path_factory.mktemp("dr") / "shards"
    summary = generate.run(str(Pool(toy_pool).shards_dir), str(out), CFG, 0, 1, workers=2)
    assert summary["complete"] and summary["kept"] == summary["processed"]
    return out


def test_generated_reinforcements_replay_to_their_teacher_embeddings(dr_pool):
    from PIL import Image

    transforms, teachers, _ = generate._setup(CFG)
    samples = list(iter_tar(expand(str(dr_pool))[0]))
    assert json.loads((dr_pool / (expand(str(dr_pool))[0].rsplit("/", 1)[1][:-4] + "_stats.json")).read_text())[
        "successes"] == len(samples)
    for key, members in samples[:5]:
        r = drs.reinforcement_from_sample(members, dim=64)
        assert r.n_aug == 3 and r.n_syn == 2 and {"jpg", "txt", "json"} <= members.keys()
        meta = json.loads(members["json"])
        assert all(meta["toy_class"] in s for s in r.syn_text)  # the toy captioner names the true class
        image = Image.open(io.BytesIO(members["jpg"])).convert("RGB")
        for i, entry in enumerate(r.param_aug):  # replaying a stored augmentation gives the stored embedding
            pixels = transforms.unnormalize(transforms.replay(image, entry))
            emb = teachers[0].images(pixels[None])[0].numpy()
            np.testing.assert_allclose(emb, r.image_emb[i], atol=1e-5)
        text = teachers[0].texts([members["txt"].decode(), *r.syn_text]).numpy()
        np.testing.assert_allclose(text, r.text_emb, atol=1e-5)
    # each shard draws its own augmentations (one torch seed for all once made every shard replay one stream)
    firsts = [[drs.reinforcement_from_sample(m, dim=64).param_aug for _, m in list(iter_tar(p))[:3]]
              for p in expand(str(dr_pool))[:2]]
    assert firsts[0] != firsts[1]


def test_reinforcements_only_then_join_equals_full_generation(toy_pool, dr_pool, tmp_path):
    only = tmp_path / "only"
    cfg = generate.GenerateConfig(num_augs=3, num_syn=2, only_reinforcements=True)
    first = expand(str(Pool(toy_pool).shards_dir))[0]
    generate.run(first, str(only), cfg, 0, 1)
    assert all(m.keys() == {"syn.json", "paug.json", "npz"} for _, m in iter_tar(expand(str(only))[0]))
    join.run(first, str(only), str(tmp_path / "joined"))
    joined = dict(iter_tar(expand(str(tmp_path / "joined"))[0]))
    assert joined == dict(iter_tar(str(dr_pool / first.rsplit("/", 1)[1])))


def _loader(shards, *flags, epoch=0, split="train"):
    import open_clip

    import open_clip_patch

    open_clip_patch.apply()
    import open_clip_train.data as oc_data
    import open_clip_train.main as oc_main

    args = oc_main.parse_args(["--dataset-type", "webdataset", "--batch-size", "16", "--workers", "0",
                               "--data-dir", str(shards), "--dataset-reinforcement",
                               "--dataset-reinforcement-config", "dr_augment_12m", "--distill-logit-scale", "100",
                               *flags])
    args.world_size, args.rank, args.distributed = 1, 0, False
    _, train, val = open_clip.create_model_and_transforms("ViT-Toy-8")
    return oc_data.get_data(args, (train, val), epoch=epoch, tokenizer=open_clip.get_tokenizer("ViT-Toy-8"))[split]


def test_reinforced_loader_batches_and_skips_bad_samples(dr_pool, tmp_path, caplog):
    samples = list(iter_tar(expand(str(dr_pool))[0]))
    samples[3][1]["npz"] = b"not an npz"  # counted and skipped, not fatal
    del samples[5][1]["syn.json"]
    samples[7][1]["paug.json"] = drs.encode_paug([[[0, 0, 8, 8], [[99, 0.1], [1, 0.1]]]] * 3)  # no op 99
    write_tar(tmp_path / "00000000.tar", samples)
    (tmp_path / "sizes.json").write_text(json.dumps({"00000000.tar": len(samples)}))
    good = {tuple(drs.reinforcement_from_sample(m, 64).text_emb[0].round(4)) for i, (_, m) in enumerate(samples)
            if i not in (3, 5, 7)}
    seen, n = set(), 0
    for batch in _loader(tmp_path / "00000000.tar", "--train-num-samples", str(len(samples))).dataloader:
        image, text, image_emb, text_emb, syn, syn_emb = batch
        assert image.shape[1:] == (3, 64, 64) and image_emb.shape[1:] == text_emb.shape[1:] == syn_emb.shape[1:]
        assert text.shape == syn.shape and image_emb.shape[1] == 64 and image_emb.dtype == torch.float32
        assert len(image) == len(text) == len(text_emb) == 16
        seen |= {tuple(row) for row in text_emb.numpy().round(4)}
        n += len(image)
    # open_clip rolls over to whole batches (ceil(147 / 16) of them); its batcher drops the first pass's last
    # partial batch (144 % 16 samples), which the roll-over may not bring back. The bad three are never seen.
    assert n == 16 * -(-len(samples) // 16)
    assert seen <= good and len(seen) >= len(good) - len(good) % 16
    assert "bad_embeddings" in caplog.text and "missing_member: syn.json" in caplog.text
    assert "bad_paug: rand_augment op 0" in caplog.text

    mixed = next(iter(_loader(tmp_path / "00000000.tar", "--train-num-samples", "16",
                              "--dataset-reinforcement-mix-synthetic",
                              "--dataset-reinforcement-mix-synthetic-ratio", "1").dataloader))
    assert mixed[4].numel() == 0 and mixed[5].numel() == 0  # no separate synthetic term when mixing


def test_toy_tiny_dr_trains_and_its_loss_falls(dr_pool, tmp_path):
    res = run([PYTHON, str(REPO / "src" / "training" / "main.py"), "toy_tiny_dr", "--data-dir", str(dr_pool),
               "--epochs", "4", "--logs", str(tmp_path / "logs"), "--name", "dr", "--log-every-n-steps", "2"],
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    log = tmp_path / "logs" / "dr" / "out.log"
    total, distill = epoch_losses(log, "loss"), epoch_losses(log, "distill_loss")
    assert set(total) == set(distill) == {1, 2, 3, 4}
    assert total[4] < total[1] and distill[4] < distill[1]
    assert (tmp_path / "logs" / "dr" / "checkpoints" / "epoch_4.pt").exists()
    table = run([PYTHON, "-m", "mode", "losses", str(log)]).stdout.splitlines()
    assert table[0].split() == ["epoch", "contrastive", "distill", "total"] and len(table) == 5
    assert [float(v) for v in table[4].split()[1:]] == pytest.approx(
        [epoch_losses(log)[4], distill[4], total[4]], abs=1e-4)


def test_all_samples_skipped_stops_in_one_line(toy_pool, dr_pool, tmp_path):
    """Shards without reinforcements (not joined), or a --distill-teacher-dimension that fits no sample, once made
    webdataset reread the shards forever; now a loader worker stops after its first 1000 samples all skipped."""
    from mode.core.errors import UserError
    from open_clip_patch.dr_train import Batches, Side

    unjoined = expand(str(Pool(toy_pool).shards_dir))[0]
    with pytest.raises(UserError, match=r"first 1000 samples a loader worker read were all skipped "
                                        r"\(missing_member 1000; last: missing_member: syn.json"):
        next(iter(_loader(unjoined, "--train-num-samples", "16").dataloader))
    wrong_dim = _loader(expand(str(dr_pool))[0], "--train-num-samples", "16", "--workers", "1",
                        "--distill-teacher-dimension", "32")
    with pytest.raises(UserError) as e:  # from a loader worker process: the one line, not its traceback
        next(iter(Batches(wrong_dim.dataloader, Side(), False)))
    assert str(e.value).startswith("--dataset-reinforcement: the first 1000 samples") and "\n" not in str(e.value)
    assert "(dim_mismatch 1000; last: dim_mismatch: widths [64], expected 32)" in str(e.value)


def test_skip_counts_are_logged_per_epoch(dr_pool, tmp_path, caplog):
    from open_clip_patch.dr_train import Batches, Side

    samples = list(iter_tar(expand(str(dr_pool))[0]))[:32]
    samples[3][1]["npz"] = b"not an npz"
    del samples[5][1]["syn.json"]
    write_tar(tmp_path / "00000000.tar", samples)
    for workers in ("0", "1"):
        caplog.clear()
        loader = _loader(tmp_path / "00000000.tar", "--train-num-samples", "32", "--workers", workers)
        assert len(list(Batches(loader.dataloader, Side(), False, epoch=3))) == 2  # reads every sample
        line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 3: skipped"))
        assert line.endswith("samples read for bad reinforcements (bad_embeddings 1, missing_member 1)"), line


def test_an_epochs_draws_do_not_depend_on_resuming(dr_pool):
    """Which augmentation and synthetic caption each sample gets in epoch 1: a persistent loader worker kept the
    stream it started in epoch 0, so a run resumed at epoch 1 drew others."""
    def picks(data, epoch):
        data.set_epoch(epoch)
        return {tuple(t[:4].tolist()): (tuple(i[:4].tolist()), tuple(s[:4].tolist()))
                for _, _, image_emb, text_emb, _, syn_emb in data.dataloader
                for i, t, s in zip(image_emb, text_emb, syn_emb)}

    flags = ("--train-num-samples", "32", "--workers", "1")
    shard = expand(str(dr_pool))[0]
    uninterrupted = _loader(shard, *flags)
    first = picks(uninterrupted, 0)
    second = picks(uninterrupted, 1)
    resumed = picks(_loader(shard, *flags, epoch=1), 1)
    assert second == resumed and len(second) >= 16
    assert first != second  # each epoch draws afresh


class _Payload:
    def __init__(self, mark):
        self.mark = mark

    def __reduce__(self):
        return (open, (str(self.mark), "w"))  # unpickling creates the file


def test_validation_on_reinforced_shards_never_unpickles(dr_pool, tmp_path):
    """--val-data on reinforced shards went through stock decode, which unpickles `.pyd`/`.pickle` and
    torch.loads `.pth.gz`; now it decodes only the image and caption, as the training pipeline does."""
    import gzip
    import pickle

    mark = tmp_path / "unpickled"
    samples = list(iter_tar(expand(str(dr_pool))[0]))[:8]
    for _, m in samples:
        m["pyd"] = pickle.dumps(_Payload(mark))
        buf = io.BytesIO()
        torch.save({"image_emb": _Payload(mark)}, buf)
        m["pth.gz"] = gzip.compress(buf.getvalue())
    shard = tmp_path / "00000000.tar"
    write_tar(shard, samples)
    val = _loader(shard, "--train-num-samples", "8", "--val-data", str(shard), "--val-num-samples", "8",
                  split="val")
    assert sum(len(images) for images, _ in val.dataloader) == 8
    assert not mark.exists()
