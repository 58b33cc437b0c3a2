"""clip-rocket's objectives (open_clip_patch.rocket) against hand computations on small tensors, and 2 gloo
processes against one."""

import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from open_clip_patch import rocket


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def test_cl2l_without_views_is_open_clips_clip_loss():
    from open_clip.loss import ClipLoss

    img, txt = _unit(8, 16, seed=1), _unit(8, 16, seed=2)
    scale = torch.tensor(14.3)
    ours = rocket.cl2l_loss(img, txt, [], [], scale, torch.tensor(10.0), label_smoothing=0.3)
    assert torch.allclose(ours, ClipLoss()(img, txt, scale), atol=1e-6)  # smoothing touches only the views
    assert torch.allclose(rocket.cl2l_loss(img, txt, [], [], scale, 10.0, avg_or_sum="sum"), 2 * ours)


def test_cl2l_with_views_by_hand():
    n, a, s, sh, eps = 4, 2, 5.0, 3.0, 0.1
    img, txt = _unit(n, 8, seed=3), _unit(n, 8, seed=4)
    hi = [_unit(n, 8, seed=5 + k) for k in range(a)]
    ht = [_unit(n, 8, seed=9 + k) for k in range(a)]
    labels = torch.arange(n)

    def ce(x, y, scale, smooth=0.0):
        logits = scale * x @ y.t()
        logp = logits.log_softmax(1)
        target = torch.full_like(logp, smooth / n)
        target[labels, labels] += 1 - smooth
        return -(target * logp).sum(1).mean()

    li = sum(ce(hi[j], ht[i], sh, eps) for i in range(a) for j in range(a)) / a ** 2
    lt = sum(ce(ht[j], hi[i], sh, eps) for i in range(a) for j in range(a)) / a ** 2
    want = ((ce(img, txt, s) + a * li) / (1 + a) + (ce(txt, img, s) + a * lt) / (1 + a)) / 2
    got = rocket.cl2l_loss(img, txt, hi, ht, s, sh, label_smoothing=eps)
    assert torch.allclose(got, want, atol=1e-6)
    # unnormalised inputs are normalised inside
    assert torch.allclose(rocket.cl2l_loss(3 * img, txt, [2 * h for h in hi], ht, s, sh, eps), want, atol=1e-6)


def test_siamlip_and_its_stop_gradient():
    v = _unit(6, 8, seed=1)
    assert rocket.negative_cosine(v, v).item() == pytest.approx(0.0, abs=1e-6)
    assert rocket.negative_cosine(v, -v).item() == pytest.approx(4.0, abs=1e-6)
    p = torch.randn(6, 8, requires_grad=True)
    target = torch.randn(6, 8, requires_grad=True)
    loss = rocket.siamlip_loss(p, p, target, target, [p], [p], [target], [target])
    want = (2 * rocket.negative_cosine(p, target) + 2 * rocket.negative_cosine(p, target)) / 4
    assert torch.allclose(loss, want)
    loss.backward()
    assert p.grad is not None and target.grad is None  # the target side is never trained through this loss


def test_barlow_twins_zero_at_identity_and_by_hand():
    n = 4
    z = 2 * torch.eye(n)  # C = z^T z / n = I
    assert rocket.barlow_twins(z, z).item() == pytest.approx(0.0, abs=1e-7)
    z1, z2 = torch.randn(5, 3), torch.randn(5, 3)
    c = z1.t() @ z2 / 5
    want = 0.025 * (((1 - c.diagonal()) ** 2).sum() + 5e-3 * (c ** 2 - torch.diag(c.diagonal() ** 2)).sum())
    assert torch.allclose(rocket.barlow_twins(z1, z2), want)
    pair = rocket.barlow_twins(z1, z2)
    assert torch.allclose(rocket.barlip_loss(z1, z2, [z1], [z2]), pair)  # (global + 1 local) / 2


def test_sinkhorn_marginals():
    scores = _unit(16, 8, seed=1) @ _unit(32, 8, seed=2).t()  # n = 16 samples, K = 32 "prototypes"
    q = rocket.sinkhorn(scores, eps=0.05, iters=3)
    assert q.shape == (16, 32)
    assert torch.allclose(q.sum(1), torch.ones(16), atol=1e-5)  # each sample's assignment sums to 1
    spread = q.sum(0) / (16 / 32)  # each prototype's share, ~ equal after 3 iterations
    assert spread.min() > 0.5 and spread.max() < 1.5
    many = rocket.sinkhorn(scores, eps=0.05, iters=50).sum(0) / 0.5
    assert torch.allclose(many, torch.ones(32), atol=1e-3)


def test_swalip_needs_two_views_and_is_finite():
    hi, ht = [_unit(8, 16, seed=k) for k in range(2)], [_unit(8, 16, seed=10 + k) for k in range(2)]
    loss = rocket.swalip_loss(hi, ht, torch.tensor(10.0))
    assert math.isfinite(loss.item()) and loss.item() > 0
    with pytest.raises(ValueError, match="exactly 2"):
        rocket.swalip_loss(hi[:1], ht[:1], 10.0)


def test_momentum_update_and_scale_clamp():
    online, target = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        online.weight.fill_(1.0), target.weight.fill_(0.0)
        online.running_mean.fill_(5.0)
    rocket.momentum_update(online, target, tau=0.99)
    assert torch.allclose(target.weight, torch.full((3,), 0.01))
    assert torch.equal(target.running_mean, torch.zeros(3))  # buffers are not averaged
    s = torch.nn.Parameter(torch.tensor([7.0, -1.0, 2.0]))
    rocket.clamp_logit_scales(s)
    assert s.tolist() == pytest.approx([math.log(100), 0.0, 2.0], abs=1e-4)


def _two_rank_worker(rank, port, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    img, txt = _unit(8, 16, seed=1), _unit(8, 16, seed=2)
    hi, ht = [_unit(8, 16, seed=3 + k) for k in range(2)], [_unit(8, 16, seed=6 + k) for k in range(2)]
    rows = slice(4 * rank, 4 * rank + 4)
    cl2l = rocket.cl2l_loss(img[rows], txt[rows], [h[rows] for h in hi], [h[rows] for h in ht], 5.0, 3.0, 0.1)
    bar = rocket.barlip_loss(img[rows], txt[rows], [h[rows] for h in hi], [h[rows] for h in ht])
    swa = rocket.swalip_loss([h[rows] for h in hi], [h[rows] for h in ht], 3.0)
    torch.save({"cl2l": cl2l, "barlip": bar, "swalip": swa}, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    """Each rank has half the batch: the ranks' CL2L and SwALIP losses average to the one-process loss (each
    rank's rows against all columns), BarLIP's is the one-process value on every rank (averaged correlation)."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_rank_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    img, txt = _unit(8, 16, seed=1), _unit(8, 16, seed=2)
    hi, ht = [_unit(8, 16, seed=3 + k) for k in range(2)], [_unit(8, 16, seed=6 + k) for k in range(2)]
    one = {"cl2l": rocket.cl2l_loss(img, txt, hi, ht, 5.0, 3.0, 0.1), "barlip": rocket.barlip_loss(img, txt, hi, ht),
           "swalip": rocket.swalip_loss(hi, ht, 3.0)}
    assert torch.allclose((ranks[0]["cl2l"] + ranks[1]["cl2l"]) / 2, one["cl2l"], atol=1e-5)
    assert torch.allclose((ranks[0]["swalip"] + ranks[1]["swalip"]) / 2, one["swalip"], atol=1e-5)
    for r in ranks:
        assert torch.allclose(r["barlip"], one["barlip"], atol=1e-6)


def test_heads_shapes_and_parameters():
    heads = rocket.RocketHeads(64, 32, embed_dim=16, objective="siamlip").eval()
    x, t = torch.randn(4, 64), torch.randn(4, 32)
    assert heads.l2l_image_projector(x).shape == (4, 16) and heads.l2l_text_projector(t).shape == (4, 16)
    assert heads.l2l_logit_scale.exp().item() == pytest.approx(10.0)
    assert heads.image_projector_ssl(x).shape == (4, 128)
    assert heads.image_text_predictor(heads.image_projector_ssl(x)).shape == (4, 128)
    assert [m.out_features for m in heads.l2l_image_projector if isinstance(m, torch.nn.Linear)] == [4096, 4096, 16]
    bar = rocket.RocketHeads(64, 32, objective="barlip")
    assert bar.text_projector_ssl[-1].num_features == 8192 and not hasattr(bar, "image_text_predictor")
    with pytest.raises(ValueError, match="expected one of"):
        rocket.RocketHeads(64, 32, objective="simclr")
