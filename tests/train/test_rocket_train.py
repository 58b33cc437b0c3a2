"""clip-rocket through the plugin: the towers' features, the heads on an open_clip model, the views, the flags,
and real training runs of every objective on the toy pool (CPU)."""

import os
import random
import signal
import subprocess
import time

import open_clip
import pytest
import torch

import open_clip_patch
import run_configs
from mode.core.errors import UserError
from mode.core.layout import Pool
from mode.train.trainlog import epoch_losses
from open_clip_patch import rocket, rocket_data, rocket_model

from ..conftest import PYTHON, REPO, run

MAIN = str(REPO / "src" / "training" / "main.py")


@pytest.fixture(scope="module")
def toy_model():
    open_clip_patch.apply()
    torch.manual_seed(0)
    model, preprocess, _ = open_clip.create_model_and_transforms("ViT-Toy-8")
    return model, preprocess, open_clip.get_tokenizer("ViT-Toy-8")


def test_tower_features_are_open_clips_before_projection(toy_model):
    model, _, tokenizer = toy_model
    model.eval()
    images, text = torch.randn(3, 3, 64, 64), tokenizer(["a red circle", "two squares", "x"])
    f_img, z_img = rocket_model.image_features(model, images)
    f_txt, z_txt = rocket_model.text_features(model, text)
    assert f_img.shape == (3, 128) and f_txt.shape == (3, 128)
    assert torch.allclose(z_img, model.encode_image(images), atol=1e-6)
    assert torch.allclose(z_txt, model.encode_text(text), atol=1e-6)
    # text dropout: only while training, only when asked
    assert torch.equal(rocket_model.text_features(model, text, dropout=0.5)[0], f_txt)
    model.train()
    try:
        assert not torch.allclose(rocket_model.text_features(model, text, dropout=0.5)[0], f_txt)
        assert torch.allclose(rocket_model.text_features(model, text)[0], f_txt, atol=1e-6)
    finally:
        model.eval()


def test_attached_model_forward_loss_and_step(toy_model):
    import copy

    base, _, tokenizer = toy_model
    model = rocket_model.attach(copy.deepcopy(base), "byolip", l2l_hidden_dim=32, siamlip_proj_dim=16,
                                siamlip_hidden_dim=32).train()
    assert type(model).__name__ == "RocketCLIP" and isinstance(model, open_clip.CLIP)
    keys = model.state_dict().keys()
    assert any(k.startswith("rocket.l2l_image_projector") for k in keys)
    assert sum(k.startswith("rocket_momentum.") for k in keys) == sum(not k.startswith("rocket_momentum.")
                                                                       for k in keys)
    assert not any(p.requires_grad for p in model.rocket_momentum.parameters())
    images, texts = torch.randn(4, 3, 3, 64, 64), torch.stack([tokenizer(["a", "b c", "d"])] * 4)
    out = model(images, texts)
    assert len(out["h_images"]) == 2 and out["h_images"][0].shape == (4, 64)
    assert out["p_image"].shape == (4, 16) and "v_texts_momentum" in out and "v_image_momentum" in out
    stock = model(images[:, 0], texts[:, 0])  # plain inputs: open_clip's own forward
    assert torch.allclose(stock[0], model.encode_image(images[:, 0], normalize=True))
    losses = rocket.RocketLoss("byolip", label_smoothing=0.1)(**out, output_dict=True)
    assert set(losses) == {"contrastive_loss", "byolip_loss"}
    sum(losses.values()).backward()
    assert model.rocket.l2l_image_projector.layer1.weight.grad is not None
    assert model.rocket.image_text_predictor[0].weight.grad is not None
    # after a step: the views' scale clamped, the momentum copy moved 1 % of the way
    before = [p.clone() for p in model.rocket_momentum.parameters()]
    with torch.no_grad():
        model.rocket.l2l_logit_scale.fill_(9.0)
        for p in rocket_model.online_parameters(model):
            p.add_(1.0)
    rocket_model.after_step(model, 0.99)
    assert model.rocket.l2l_logit_scale.item() == pytest.approx(4.6052)
    for b, p, pm in zip(before, rocket_model.online_parameters(model), model.rocket_momentum.parameters()):
        assert torch.allclose(pm, 0.99 * b + 0.01 * p, atol=1e-6)


def test_timm_towers_and_unsupported_towers(toy_model):
    model, _, _ = toy_model
    with pytest.raises(UserError, match="built-in text tower"):
        rocket_model.attach(open_clip.create_model("ViT-Toy-8", force_custom_text=True), "cl2l")
    assert not hasattr(model, "rocket")
    text = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}
    timm = {"timm_model_name": "test_vit", "timm_model_pretrained": False, "image_size": 160}
    # a timm trunk with open_clip's projection head: the heads read the pooled trunk features
    clip = open_clip.model.CLIP(32, {**timm, "timm_pool": "", "timm_proj": "linear"}, text).eval()
    images = torch.randn(2, 3, 160, 160)
    feats, z = rocket_model.image_features(clip, images)
    assert feats.shape == (2, 64) and torch.allclose(z, clip.encode_image(images), atol=1e-5)
    rocket_model.attach(clip, "cl2l", l2l_hidden_dim=16)
    assert clip.rocket.l2l_image_projector.layer1.in_features == 64
    # a timm classifier head used as the projection: no features before it to read
    with pytest.raises(UserError, match="timm tower with open_clip's own projection head"):
        rocket_model.attach(open_clip.model.CLIP(32, {**timm, "timm_pool": "avg", "timm_proj": ""}, text), "cl2l")


def test_stopwords_and_eda(wordnet_dir):
    assert len(rocket_data.stopwords()) == 179 and {"the", "a", "of", "wouldn't"} <= rocket_data.stopwords()
    assert rocket_data.remove_stopwords("A photo of the red circle on a table.") == "photo red circle table ."
    eda = rocket_data.EDA(wordnet_dir, random.Random(0))
    text = "a small red circle beside a blue square"
    swapped = eda.random_swap(text)
    assert sorted(swapped.split()) == sorted(text.split()) and swapped != text
    assert eda.random_swap("alone") == "alone"
    kept = [eda.random_deletion(text, p=0.5) for _ in range(50)]
    assert all(set(k.split()) <= set(text.split()) and k for k in kept)
    assert any(len(k.split()) < len(text.split()) for k in kept)
    assert eda.random_deletion("word", p=1.0) == "word" and eda.random_deletion("a b", p=1.0) in ("a", "b")
    synonym = eda.synonym_replacement("the dog runs")
    changed = [w for w, v in zip("the dog runs".split(), synonym.split()) if w != v]
    assert synonym != "the dog runs" and synonym.startswith("the ")  # stop words are never replaced
    assert len(changed) == 1
    assert eda.synonym_replacement("dog") in set(eda.synonyms("dog"))  # e.g. "domestic dog", "canis familiaris"
    same = rocket_data.EDA(wordnet_dir, random.Random(0))
    assert [same.random_swap(text)] == [swapped]  # one seed, one augmentation


class _Draws(random.Random):
    def __init__(self, values):
        super().__init__(0)
        self.values = list(values)

    def randint(self, a, b):
        return self.values.pop(0)


@pytest.mark.parametrize("draws,expected", [
    ([0, 0, 0, 1], "b a c"),        # the third redraw differs: swapped
    ([0, 0, 0, 0, 1], "a b c"),     # textaugment 1.3.4 draws a fourth time and keeps the words as they are
    ([2, 1], "a c b"),
])
def test_random_swap_gives_up_as_textaugment_does(draws, expected):
    eda = rocket_data.EDA(None, _Draws(draws))
    assert eda.random_swap("a b c") == expected
    assert eda.rng.values == []  # as many draws as textaugment's swap_word makes


def test_caption_and_image_views(toy_model, wordnet_dir):
    from PIL import Image

    _, preprocess, tokenizer = toy_model
    views = rocket_data.CaptionViews(tokenizer, 2, remove_stopwords_prob=1.0, text_augment=True,
                                     weights=(0, 1, 1, 1), clean_before_augment=True, wordnet_dir=wordnet_dir)
    random.seed(3)
    texts = views.views("A &amp; Photo   of THE Red Circle")
    assert texts[0] == "& photo red circle"  # cleaned, lower case, stop words gone
    assert len(texts) == 3 and all(t for t in texts)
    assert views("a red circle").shape == (3, 32)
    assert views.views("") == ["", "", ""]
    images = rocket_data.ImageViews(preprocess, 2)
    img = Image.new("RGB", (100, 80), (200, 30, 30))
    torch.manual_seed(0)
    a = images(img)
    torch.manual_seed(0)
    assert a.shape == (3, 3, 64, 64) and torch.equal(images(img), a)  # seeded: the same views
    # the global view is the model's normalisation of a plain crop (uniform colour stays uniform)
    want = (torch.tensor([200, 30, 30]) / 255 - torch.tensor(preprocess.transforms[-1].mean)) / \
        torch.tensor(preprocess.transforms[-1].std)
    assert torch.allclose(a[0].mean(dim=(1, 2)), want, atol=1e-2)


@pytest.mark.parametrize("extra,message", [
    (["--num-augs", "3"], "--num-augs needs --rocket"),
    (["--rocket", "swalip", "--num-augs", "3", "--label-smoothing", "0"], "needs --num-augs 2"),
    (["--rocket", "swalip", "--label-smoothing", "0.1"], "needs --label-smoothing 0"),
    (["--rocket", "cl2l", "--label-smoothing", "1.5"], "--label-smoothing 1.5: expected a value in [0, 1]"),
    (["--rocket", "cl2l", "--text-augment"], "synonym replacement needs WordNet"),
    (["--rocket", "cl2l", "--accum-freq", "2"], "--accum-freq 1 only"),
    (["--rocket", "siamlip", "--num-augs", "0"], "expected >= 1"),
    (["--rocket", "cl2l", "--num-augs", "0", "--separate-proj"], "no views for --separate-proj's heads"),
    (["--rocket", "cl2l", "--siglip"], "drop --siglip"),
    (["--rocket", "cl2l", "--dataset-type", "csv"], "--rocket works in open_clip's webdataset loader"),
    (["--rocket", "simclr"], None),
])
def test_rocket_flags_are_checked(toy_pool, extra, message):
    res = run([PYTHON, MAIN, "toy_tiny", "--toy-pool", str(toy_pool), "--logs", "none", *extra])
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    if message is None:  # argparse's own refusal of a choice
        assert "invalid choice: 'simclr'" in res.stderr
    else:
        assert len(lines) == 1 and message in lines[0] or pytest.fail(res.stderr[-2000:])


def _train(toy_pool, logs, name, *extra, samples=1280, epochs=3):
    return [PYTHON, MAIN, "toy_tiny_rocket", "--toy-pool", str(toy_pool), "--train-num-samples", str(samples),
            "--epochs", str(epochs), "--logs", str(logs), "--name", name, *extra]


@pytest.mark.parametrize("objective", rocket.OBJECTIVES)
def test_each_objective_trains_on_the_toy_pool(objective, toy_pool, tmp_path, wordnet_dir):
    extra = ["--label-smoothing", "0"] if objective == "swalip" else []
    res = run(_train(toy_pool, tmp_path, objective, "--rocket", objective, "--synonym-replacement-prob", "0.4",
                     "--wordnet-dir", wordnet_dir, "--text-dropout-prob", "0.1", "--warmup", "5", *extra,
                     samples=768), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    log = tmp_path / objective / "out.log"
    total = epoch_losses(log, "loss")
    assert sorted(total) == [1, 2, 3] and total[3] < total[1], total
    if objective != "cl2l":
        assert set(epoch_losses(log, f"{objective}_loss")) == {1, 2, 3}
    state = torch.load(tmp_path / objective / "checkpoints" / "epoch_3.pt", map_location="cpu",
                       weights_only=True)["state_dict"]
    assert 0 <= state["rocket.l2l_logit_scale"].item() <= 4.6052 + 1e-6
    assert ("rocket_momentum.logit_scale" in state) == (objective == "byolip")
    assert ("rocket.image_projector_ssl.0.weight" in state) == (objective in ("siamlip", "byolip", "barlip"))


def test_same_seed_same_rocket_training(toy_pool, tmp_path):
    states = []
    for name in ("a", "b"):
        res = run(_train(toy_pool, tmp_path, name, samples=256, epochs=1), cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        states.append(torch.load(tmp_path / name / "checkpoints" / "epoch_1.pt", weights_only=True)["state_dict"])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_byolip_resumes_heads_and_momentum_after_kill(toy_pool, tmp_path):
    argv = _train(toy_pool, tmp_path, "byol", "--rocket", "byolip", "--resume", "latest", "--save-most-recent",
                  samples=640)
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first = tmp_path / "byol" / "checkpoints" / "epoch_1.pt"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # into epoch 2 (or saving epoch_latest.pt): a kill there must not lose epoch 1
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists()
    res = run(argv, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (tmp_path / "byol" / "out.log").read_text()
    assert "resum" in log.lower()
    s1 = torch.load(first, weights_only=True)["state_dict"]
    s3 = torch.load(tmp_path / "byol" / "checkpoints" / "epoch_3.pt", weights_only=True)["state_dict"]
    assert s1.keys() == s3.keys()
    moved = [k for k in s1 if k.startswith("rocket_momentum.") and s1[k].is_floating_point()
             and not torch.equal(s1[k], s3[k])]
    assert moved, "the momentum copy did not move after the resume"
    assert not torch.equal(s3["rocket_momentum.visual.proj"], s3["visual.proj"])  # an average, not a copy
    assert set(epoch_losses(tmp_path / "byol" / "out.log", "loss")) == {1, 2, 3}


def test_real_rocket_recipe_takes_a_step_on_cpu(toy_pool, tmp_path, wordnet_dir):
    """cliprocket_b16's own flags (ViT-B-16-rocket, 4096-wide heads, text augmentation, smoothing, sum, warm-up
    in epochs, BN sync), on two toy samples per step, fp32 on CPU: the recipe trains as written."""
    recipe = run_configs.get_recipe("cliprocket_b16")
    assert (recipe.model, recipe.global_batch_size, recipe.lr, recipe.epochs, recipe.rocket) == \
        ("ViT-B-16-rocket", 4096, 3e-3, 32, "cl2l")
    res = run([PYTHON, MAIN, "cliprocket_b16", "--data-dir", str(toy_pool), "--wordnet-dir", wordnet_dir,
               "--global-batch-size", "2", "--train-num-samples", "4", "--epochs", "1", "--workers", "1",
               "--precision", "fp32", "--logs", "none", "--log-every-n-steps", "1"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "Contrastive_loss:" in out and "--rocket cl2l: 2 augmented views" in out
    assert "warmup: 2\n" in out  # 1 warm-up epoch of 2 steps


def test_mode_evaluate_loads_rocket_checkpoints_and_ensembles_z_and_h(toy_model, toy_pool, tmp_path):
    """A --rocket checkpoint: branch z = the CLIP alone (what the checkpoint's CLIP keys give), h = the views'
    heads, zh0.5 = clip-rocket's ensemble, half of each cosine."""
    import copy

    import numpy as np

    from mode.core.layout import Pool
    from mode.evaluation import evaluate

    base, _, _ = toy_model
    torch.manual_seed(1)
    model = rocket_model.attach(copy.deepcopy(base), "byolip", l2l_hidden_dim=32, siamlip_proj_dim=16,
                                siamlip_hidden_dim=32)
    with torch.no_grad():  # running statistics as training leaves them, so that eval-mode BN matters
        for m in model.rocket.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2)
    state = model.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 1}, tmp_path / "rocket.pt")
    plain = {k: v for k, v in state.items() if not k.startswith("rocket")}
    torch.save({"state_dict": plain, "epoch": 1}, tmp_path / "plain.pt")
    specs = [evaluate.ModelSpec.parse(s) for s in (
        f"z=ViT-Toy-8:{tmp_path / 'rocket.pt'}", f"h=ViT-Toy-8:{tmp_path / 'rocket.pt'}:h",
        f"zh=ViT-Toy-8:{tmp_path / 'rocket.pt'}:zh0.5", f"plain=ViT-Toy-8:{tmp_path / 'plain.pt'}")]
    assert [s.branch for s in specs] == ["z", "h", "zh0.5", "z"]
    evaluate.run(specs, str(Pool(toy_pool).eval_tasks_dir), str(tmp_path / "eval"), device="cpu")
    got = {s.label: np.load(tmp_path / "eval" / s.label / "toy_shapes.npz")["logits"] for s in specs}
    assert np.array_equal(got["z"], got["plain"])
    assert not np.allclose(got["h"], got["z"], atol=1e-3)
    assert np.allclose(got["zh"], 0.5 * got["z"] + 0.5 * got["h"], atol=1e-5)
    with pytest.raises(UserError, match="zhW with W in"):
        evaluate.ModelSpec.parse(f"x=ViT-Toy-8:{tmp_path / 'rocket.pt'}:zh2")
    with pytest.raises(UserError, match="needs a checkpoint trained with --rocket"):
        evaluate.load_model(evaluate.ModelSpec.parse(f"x=ViT-Toy-8:{tmp_path / 'plain.pt'}:h"), "cpu")


def test_torchrun_two_cpu_processes_train_byolip(toy_pool, tmp_path):
    """DDP over the rocket model (heads, momentum copy without gradients) and the gathered losses, on gloo."""
    from pathlib import Path

    torchrun = Path(PYTHON).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.exists() else [PYTHON, "-m", "torch.distributed.run"]
    res = run([*launcher, "--standalone", "--nproc_per_node", "2", "--",
               *_train(toy_pool, tmp_path, "ddp", "--rocket", "byolip", samples=512, epochs=2)[1:]], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "world_size: 2\n" in (tmp_path / "ddp" / "params.txt").read_text()
    assert set(epoch_losses(tmp_path / "ddp" / "out.log", "byolip_loss")) == {1, 2}
    state = torch.load(tmp_path / "ddp" / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    assert "module.rocket_momentum.visual.proj" in state  # saved from the DDP-wrapped model, as stock saves


def test_mode_experts_train_with_the_rocket_objective(toy_pool, toy_work, tmp_path):
    """MoDE's protocol with clip-rocket's objective: the seed run and an expert forked from it, heads included."""
    logs = tmp_path / "logs"
    res = run([PYTHON, "-m", "mode", "train-experts", "toy_tiny_rocket", "--experts", "0", "--seed-epochs", "1",
               "--folder", str(tmp_path / "submitit"), "--", "--mode-work-dir", str(toy_work), "--data-dir",
               str(Pool(toy_pool).shards_dir), "--epochs", "2", "--train-num-samples", "256", "--workers", "1",
               "--dataset-resampled", "--logs", str(logs)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = logs / "toy_tiny_rocket_n3m8"
    seed = torch.load(run_dir / "seed" / "checkpoints" / "epoch_1.pt", weights_only=True)["state_dict"]
    expert = torch.load(run_dir / "expert_0" / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    assert seed.keys() == expert.keys() and any(k.startswith("rocket.") for k in expert)
    assert "seed/checkpoints/epoch_1.pt' (epoch 1)" in (run_dir / "expert_0" / "out.log").read_text()
