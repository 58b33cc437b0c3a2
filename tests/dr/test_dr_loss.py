"""open_clip_patch.loss.DRClipLoss against open_clip's ClipLoss, a hand computation, and a 2-process gather."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from open_clip_patch.loss import DRClipLoss, teacher_bounds

N, D_STUDENT, DIMS, SCALES = 4, 6, [3, 5], [10.0, 20.0]


def _unit(x):
    return F.normalize(x, dim=-1)


def _teacher(gen, n):
    """[n, 3 + 5] embeddings, each teacher's part unit-norm, as DataCompDR stores them."""
    return torch.cat([_unit(torch.randn(n, d, generator=gen)) for d in DIMS], dim=1)


def _batch(seed=0, n=N, grad=False):
    g = torch.Generator().manual_seed(seed)
    b = {"image_features": _unit(torch.randn(n, D_STUDENT, generator=g)),
         "text_features": _unit(torch.randn(n, D_STUDENT, generator=g)),
         "syn_text_features": _unit(torch.randn(n, D_STUDENT, generator=g)),
         "logit_scale": torch.tensor(7.0),
         "dist_image_features": _teacher(g, n), "dist_text_features": _teacher(g, n),
         "dist_syn_text_features": _teacher(g, n)}
    if grad:
        for k in ("image_features", "text_features", "syn_text_features", "logit_scale"):
            b[k] = b[k].clone().requires_grad_(True)
    return b


def _loss(weights=(1.0, 1.0), after=True, scales=SCALES, dims=DIMS, **kw):
    return DRClipLoss(distill_loss_weights=weights, dist_logit_scale=scales, teacher_dimension=dims,
                      average_after_softmax=after, **kw)


# --------------------------------------------------------------------------------- the CLIP part is ClipLoss


def test_clip_only_weights_equal_open_clip_clip_loss():
    b = _batch()
    clip = ClipLoss()(b["image_features"], b["text_features"], b["logit_scale"])
    gt_only = {k: v for k, v in b.items() if "syn" not in k}
    out = _loss(weights=(1.0, 0.0))(**gt_only, output_dict=True)
    assert torch.allclose(sum(out.values()), clip) and out["distill_loss"] == 0
    # the synthetic captions add their own CLIP loss (a sum, as ml-mobileclip's DRClipLoss)
    clip_syn = ClipLoss()(b["image_features"], b["syn_text_features"], b["logit_scale"])
    out = _loss(weights=(1.0, 0.0))(**b, output_dict=True)
    assert torch.allclose(out["contrastive_loss"], clip + clip_syn)
    # W_KD = 0 needs no teacher at all
    plain = _loss(weights=(1.0, 0.0))(b["image_features"], b["text_features"], b["logit_scale"])
    assert torch.allclose(plain[0], clip)


def test_weights_scale_each_term():
    b = _batch()
    c1, d1 = _loss(weights=(1.0, 1.0))(**b)
    c2, d2 = _loss(weights=(0.25, 3.0))(**b)
    assert torch.allclose(c2, 0.25 * c1) and torch.allclose(d2, 3.0 * d1)


# ----------------------------------------------------------------------------------- KD against a hand sum


def _log_softmax_row(row):
    m = max(row)
    log_z = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - log_z for v in row]


def _softmax_row(row):
    return [math.exp(v) for v in _log_softmax_row(row)]


def _hand_kd_direction(student_a, student_b, s, teacher_a, teacher_b, scales, dims, after):
    """mean_i -sum_j P[i, j] log Q[i, j] with explicit loops (float64)."""
    n, bounds, start = len(student_a), [], 0
    for d in dims:
        bounds.append((start, start + d))
        start += d
    total = 0.0
    for i in range(n):
        student_row = [s * float(np.dot(student_a[i], student_b[j])) for j in range(n)]
        per_teacher = [[c * float(np.dot(teacher_a[i][lo:hi], teacher_b[j][lo:hi])) for j in range(n)]
                       for c, (lo, hi) in zip(scales, bounds)]
        if after:
            probs = [_softmax_row(row) for row in per_teacher]
            target = [sum(p[j] for p in probs) / len(probs) for j in range(n)]
        else:
            target = _softmax_row([sum(row[j] for row in per_teacher) for j in range(n)])
        log_q = _log_softmax_row(student_row)
        total += -sum(target[j] * log_q[j] for j in range(n))
    return total / n


def _hand_kd(b, text_key, scales, dims, after):
    x = {k: v.detach().double().numpy() for k, v in b.items() if k != "logit_scale"}
    s = float(b["logit_scale"])
    i2t = _hand_kd_direction(x["image_features"], x[text_key], s, x["dist_image_features"], x["dist_" + text_key],
                             scales, dims, after)
    t2i = _hand_kd_direction(x[text_key], x["image_features"], s, x["dist_" + text_key], x["dist_image_features"],
                             scales, dims, after)
    return (i2t + t2i) / 2


@pytest.mark.parametrize("after", [True, False])
def test_kd_term_matches_a_hand_computation(after):
    b = _batch(seed=1)
    w_kd = 1.5
    want = w_kd * (_hand_kd(b, "text_features", SCALES, DIMS, after)
                   + _hand_kd(b, "syn_text_features", SCALES, DIMS, after))
    got = _loss(weights=(1.0, w_kd), after=after)(**b, output_dict=True)["distill_loss"]
    assert got.item() == pytest.approx(want, rel=1e-5)
    gt_only = {k: v for k, v in b.items() if "syn" not in k}
    got = _loss(weights=(1.0, w_kd), after=after)(**gt_only, output_dict=True)["distill_loss"]
    assert got.item() == pytest.approx(w_kd * _hand_kd(b, "text_features", SCALES, DIMS, after), rel=1e-5)


def test_average_after_softmax_differs_and_one_scale_is_broadcast():
    b = _batch(seed=2)
    after, before = (_loss(after=a)(**b)[1] for a in (True, False))
    assert not torch.allclose(after, before)
    one = _loss(scales=[10.0])(**b)[1]
    assert torch.allclose(one, _loss(scales=[10.0, 10.0])(**b)[1])
    assert one.item() == pytest.approx(_hand_kd(b, "text_features", [10.0] * 2, DIMS, True)
                                       + _hand_kd(b, "syn_text_features", [10.0] * 2, DIMS, True), rel=1e-5)


def test_before_softmax_with_one_scale_is_the_concatenated_dot_product():
    """ml-mobileclip without --distill-average-after-softmax: softmax(c * u @ v.T) over the full D."""
    b = _batch(seed=3)
    u, v, c = b["dist_image_features"], b["dist_text_features"], 10.0
    student = b["logit_scale"] * b["image_features"] @ b["text_features"].T
    want = (F.cross_entropy(student, (c * u @ v.T).softmax(1))
            + F.cross_entropy(student.T, (c * v @ u.T).softmax(1))) / 2
    gt_only = {k: val for k, val in b.items() if "syn" not in k}
    assert torch.allclose(_loss(after=False, scales=[c])(**gt_only)[1], want)
    assert torch.allclose(_loss(after=False, scales=[c], dims=[-1])(**gt_only)[1], want)


def test_teacher_scale_from_forward_when_not_configured():
    b = _batch(seed=4)
    want = _loss(scales=[12.0])(**b)[1]
    assert torch.allclose(_loss(scales=None)(**b, dist_logit_scale=torch.tensor(12.0))[1], want)
    with pytest.raises(ValueError, match="--distill-logit-scale"):
        _loss(scales=None)(**b)


def test_gradients_reach_the_student():
    b = _batch(seed=5, grad=True)
    total = sum(_loss(weights=(0.0, 1.0))(**b, output_dict=True).values())
    total.backward()
    for k in ("image_features", "text_features", "syn_text_features", "logit_scale"):
        assert b[k].grad is not None and torch.isfinite(b[k].grad).all() and b[k].grad.abs().sum() > 0, k


def test_bad_configurations_say_what_is_wrong():
    b = _batch()
    with pytest.raises(ValueError, match="sums to 7 but the teacher embeddings have 8"):
        _loss(dims=[3, 4])(**b)
    with pytest.raises(ValueError, match="2 values"):
        _loss(weights=(1.0,))
    with pytest.raises(ValueError, match="one per teacher"):
        _loss(scales=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="-1 alone"):
        _loss(dims=[-1, 3])
    with pytest.raises(ValueError, match="teachers' embeddings"):
        _loss()(b["image_features"], b["text_features"], b["logit_scale"])
    assert teacher_bounds([3, 5], 8) == [(0, 3), (3, 8)] and teacher_bounds([-1], 8) == [(0, 8)]


def test_from_args_reads_the_distill_flags():
    from types import SimpleNamespace

    args = SimpleNamespace(local_loss=True, gather_with_grad=True, rank=0, world_size=1, horovod=False,
                           distill_loss_weights=[0.0, 1.0], distill_logit_scale=[70.0, 60.0],
                           distill_teacher_dimension=[3, 5], distill_average_after_softmax=True)
    loss = DRClipLoss.from_args(args)
    assert (loss.w_clip, loss.w_kd, loss.dist_logit_scale, loss.teacher_dimension, loss.average_after_softmax) \
        == (0.0, 1.0, [70.0, 60.0], [3, 5], True)
    defaults = DRClipLoss.from_args(SimpleNamespace(local_loss=False, gather_with_grad=False, rank=0, world_size=1))
    assert (defaults.w_clip, defaults.w_kd, defaults.teacher_dimension, defaults.dist_logit_scale) == \
        (1.0, 1.0, [-1], None)


# ------------------------------------------------------------------------------------------ 2 processes, gloo

WORLD = 2
MODES = [(False, False), (True, False), (True, True), (False, True)]  # (local_loss, gather_with_grad)


def _worker(rank, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        full = _batch(seed=6, n=2 * N)
        for after in (True, False):
            for local_loss, with_grad in MODES:
                part = {k: (v if k == "logit_scale" else v[rank * N:(rank + 1) * N]).detach().clone()
                        for k, v in full.items()}
                for k in ("image_features", "text_features", "syn_text_features"):
                    part[k].requires_grad_(True)
                loss = _loss(after=after, local_loss=local_loss, gather_with_grad=with_grad, rank=rank,
                             world_size=WORLD)
                out = loss(**part, output_dict=True)
                sum(out.values()).backward()
                torch.save({"loss": {k: v.detach() for k, v in out.items()}, "grad": part["image_features"].grad},
                           f"{out_dir}/{rank}_{after}_{local_loss}_{with_grad}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~15 s: each spawned process imports torch and open_clip
def test_two_process_gather_equals_the_single_process_loss(tmp_path):
    import torch.multiprocessing as mp

    # spawn, not fork: a forked child of a process that already ran torch ops can hang in its thread pool
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    full = _batch(seed=6, n=2 * N, grad=True)
    for after in (True, False):
        ref = _loss(after=after)(**full, output_dict=True)
        for k in full:
            if full[k].grad is not None:
                full[k].grad = None
        sum(ref.values()).backward()
        for local_loss, with_grad in MODES:
            got = [torch.load(tmp_path / f"{r}_{after}_{local_loss}_{with_grad}.pt") for r in range(WORLD)]
            for key in ("contrastive_loss", "distill_loss"):
                # local loss: each rank's rows, averaged over ranks; otherwise every rank has the global loss
                per_rank = torch.stack([g["loss"][key] for g in got])
                value = per_rank.mean() if local_loss else per_rank[0]
                assert torch.allclose(value, ref[key], atol=1e-6), (after, local_loss, with_grad, key)
                if not local_loss:
                    assert torch.allclose(per_rank[0], per_rank[1])
            if local_loss and with_grad:
                # gather_with_grad sums every rank's gradient; DDP then averages over ranks
                grad = torch.cat([g["grad"] for g in got]) / WORLD
                assert torch.allclose(grad, full["image_features"].grad, atol=1e-6)
