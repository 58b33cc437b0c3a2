"""clip-rocket's objectives ("Improved baselines for vision-language pre-training", facebookresearch/clip-rocket):
CL2L (CLIP:rocket) and the non-contrastive terms SiamLIP, BYOLIP (SiamLIP with a momentum target), BarLIP and
SwALIP, as functions of the embeddings, the way its `losses.py` computes them.

Shapes: n samples on this rank, N = n x world size; `A` augmented views. As in clip-rocket, other ranks'
embeddings are gathered without gradient (only this rank's rows carry one) and the cross-entropy is averaged over
this rank's rows with labels `n * rank + arange(n)`. Embeddings are L2-normalised inside the losses (BarLIP's
and SiamLIP's projector outputs are used as they come, as there).

- CL2L: global InfoNCE (no label smoothing) plus, per direction, the mean over all A x A (image view, text view)
  pairs of the InfoNCE of the augmented-view heads with their own logit scale and `label_smoothing`;
  per direction (global + A * local) / (1 + A); the two directions averaged; `avg_or_sum == "sum"` doubles it.
- SiamLIP: D(p, v) = 2 - 2 mean cos(p, stop_grad(v)), image predictor vs text target and back, on the global pair
  and all A x A local pairs, divided by 2 + 2 A^2. BYOLIP: the targets come from the momentum model
  (`momentum_update` after each optimizer step, tau 0.99 constant, parameters only).
- BarLIP: C = z1^T z2 / n averaged over ranks (all_reduce, outside autograd), scale * (sum (1 - C_ii)^2 +
  lambda * sum_{i != j} C_ij^2) on the global pair and the A^2 local pairs, divided by 1 + A^2.
- SwALIP (CL2L's variant): Sinkhorn-Knopp targets (eps 0.05, 3 iterations, over the gathered batch) of each
  local view pair's similarities, predicted from the swapped pair with the local logit scale; A must be 2.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

LOG_SCALE_MAX = 4.6052  # ln 100: clip-rocket clamps both logit scales (in log space) to [0, ln 100] after a step


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows in rank order, without gradient (clip-rocket's `all_gather_batch`)."""
    rank, world = _world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def _labels(n: int, device) -> torch.Tensor:
    rank, _ = _world()
    return n * rank + torch.arange(n, device=device)


def infonce(a: torch.Tensor, b_all: torch.Tensor, scale, labels: torch.Tensor, smoothing: float = 0.0):
    """Cross-entropy of this rank's rows of `a` against every row of `b_all` (both unit norm)."""
    return F.cross_entropy(scale * a @ b_all.t(), labels, label_smoothing=smoothing)


def cl2l_loss(z_image, z_text, h_images, h_texts, logit_scale, h_logit_scale, label_smoothing: float = 0.0,
              avg_or_sum: str = "avg") -> torch.Tensor:
    """CLIP:rocket's loss. `z_*`: [n, d] global embeddings; `h_*`: A tensors [n, d] of the augmented views'
    heads; the scales exponentiated already (as the model returns them)."""
    z_image, z_text = F.normalize(z_image, dim=-1), F.normalize(z_text, dim=-1)
    labels = _labels(len(z_image), z_image.device)
    g_img = infonce(z_image, gather_no_grad(z_text), logit_scale, labels)
    g_txt = infonce(z_text, gather_no_grad(z_image), logit_scale, labels)
    a = len(h_images)
    if a:
        h_images = [F.normalize(h, dim=-1) for h in h_images]
        h_texts = [F.normalize(h, dim=-1) for h in h_texts]
        h_images_all = [gather_no_grad(h) for h in h_images]
        h_texts_all = [gather_no_grad(h) for h in h_texts]
        l_img = sum(infonce(h_images[j], h_texts_all[i], h_logit_scale, labels, label_smoothing)
                    for i in range(a) for j in range(a)) / a ** 2
        l_txt = sum(infonce(h_texts[j], h_images_all[i], h_logit_scale, labels, label_smoothing)
                    for i in range(a) for j in range(a)) / a ** 2
        g_img, g_txt = (g_img + a * l_img) / (1 + a), (g_txt + a * l_txt) / (1 + a)
    loss = (g_img + g_txt) / 2
    return loss * 2 if avg_or_sum == "sum" else loss


def negative_cosine(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SiamLIP's D(p, v) = 2 - 2 mean cos(p, stop_grad(v))."""
    return 2 - 2 * (F.normalize(p, dim=-1) * F.normalize(v.detach(), dim=-1)).sum(-1).mean()


def siamlip_loss(p_image, p_text, v_image, v_text, p_images_local=(), p_texts_local=(), v_images_local=(),
                 v_texts_local=()) -> torch.Tensor:
    """`p_image`: the image predictor's output (predicting the text side), `v_text` its target (the text
    projector's output, or the momentum model's for BYOLIP); the same for the other direction and the A local
    views (every image view i against every text view j)."""
    total = negative_cosine(p_image, v_text) + negative_cosine(p_text, v_image)
    a = len(p_images_local)
    for i in range(a):
        for j in range(a):
            total = total + negative_cosine(p_images_local[i], v_texts_local[j]) + \
                negative_cosine(p_texts_local[i], v_images_local[j])
    return total / (2 + 2 * a ** 2)


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lamb: float = 5e-3, scale: float = 0.025) -> torch.Tensor:
    """scale * (sum_i (1 - C_ii)^2 + lamb * sum_{i != j} C_ij^2), C = z1^T z2 / n averaged over ranks."""
    corr = z1.t() @ z2 / len(z1)
    _, world = _world()
    if world > 1:  # clip-rocket sums the ranks' matrices outside autograd, then divides by the world size
        summed = corr.detach().clone()
        dist.all_reduce(summed)
        corr = (corr + (summed - corr.detach())) / world
    on_diag = (1 - torch.diagonal(corr)).pow(2).sum()
    off_diag = corr.pow(2).sum() - torch.diagonal(corr).pow(2).sum()
    return scale * (on_diag + lamb * off_diag)


def barlip_loss(v_image, v_text, v_images_local=(), v_texts_local=(), lamb: float = 5e-3,
                scale: float = 0.025) -> torch.Tensor:
    total = barlow_twins(v_image, v_text, lamb, scale)
    a = len(v_images_local)
    for i in range(a):
        for j in range(a):
            total = total + barlow_twins(v_images_local[i], v_texts_local[j], lamb, scale)
    return total / (1 + a ** 2)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp over [n, K] scores (K = the gathered batch): soft assignments whose columns are used equally
    across all ranks' rows and whose rows sum to 1 (clip-rocket's `sinkhorn_knopp`)."""
    _, world = _world()
    q = torch.exp(scores.float() / eps).t()  # [K, n]
    k, b = q.shape[0], q.shape[1] * world

    def reduce(x):
        if world > 1:
            dist.all_reduce(x)
        return x

    q /= reduce(q.sum())
    for _ in range(iters):
        q /= reduce(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def swalip_loss(h_images, h_texts, h_logit_scale, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Swapped prediction over the two augmented views: the scores of view pair (l1, l2) predict the Sinkhorn
    targets of pair (1 - l1, 1 - l2), image->text and text->image, averaged over the 4 pairs."""
    if len(h_images) != 2:
        raise ValueError(f"SwALIP needs exactly 2 augmented views (--num-augs 2), got {len(h_images)}")
    h_images = [F.normalize(h, dim=-1) for h in h_images]
    h_texts = [F.normalize(h, dim=-1) for h in h_texts]
    texts_all = [gather_no_grad(h) for h in h_texts]
    images_all = [gather_no_grad(h) for h in h_images]
    s_img = [[h_images[a] @ texts_all[b].t() for b in range(2)] for a in range(2)]
    s_txt = [[h_texts[a] @ images_all[b].t() for b in range(2)] for a in range(2)]
    q_img = [[sinkhorn(s_img[a][b], eps, iters) for b in range(2)] for a in range(2)]
    q_txt = [[sinkhorn(s_txt[a][b], eps, iters) for b in range(2)] for a in range(2)]
    total = 0.0
    for a in range(2):
        for b in range(2):
            ce_img = -(q_img[1 - a][1 - b] * F.log_softmax(h_logit_scale * s_img[a][b], dim=1)).sum(1).mean()
            ce_txt = -(q_txt[1 - a][1 - b] * F.log_softmax(h_logit_scale * s_txt[a][b], dim=1)).sum(1).mean()
            total = total + (ce_img + ce_txt) / 2
    return total / 4


@torch.no_grad()
def momentum_update(online: torch.nn.Module, momentum: torch.nn.Module, tau: float = 0.99) -> None:
    """BYOLIP's target model: p_m <- tau p_m + (1 - tau) p for every parameter (buffers are not averaged), after
    each optimizer step."""
    for p, pm in zip(online.parameters(), momentum.parameters()):
        pm.mul_(tau).add_(p.detach(), alpha=1 - tau)


@torch.no_grad()
def clamp_logit_scales(*scales: torch.nn.Parameter) -> None:
    """After each optimizer step: log scales in [0, ln 100], so the scales stay within [1, 100]."""
    for s in scales:
        s.clamp_(0, LOG_SCALE_MAX)


# ------------------------------------------------------------------------------------------------------ heads

def l2l_mlp(in_dim: int, out_dim: int = 256, hidden: int = 4096) -> nn.Sequential:
    """`--separate-proj`'s head for the augmented views (clip-rocket's `_build_mlp`): two 4096-wide Linear + BN +
    ReLU layers, then a Linear to the embedding; biases everywhere, no final BN."""
    return nn.Sequential(OrderedDict([
        ("layer1", nn.Linear(in_dim, hidden)), ("bn1", nn.BatchNorm1d(hidden)), ("relu1", nn.ReLU(inplace=True)),
        ("layer2", nn.Linear(hidden, hidden)), ("bn2", nn.BatchNorm1d(hidden)), ("relu2", nn.ReLU(inplace=True)),
        ("layer3", nn.Linear(hidden, out_dim))]))


def siamlip_projector(in_dim: int, hidden: int = 2048, out_dim: int = 128, last_bn: bool = True) -> nn.Sequential:
    layers = [nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
              nn.Linear(hidden, out_dim, bias=False)]
    if last_bn:  # unless --siamlip-no-last-bn
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def siamlip_predictor(dim: int = 128, hidden: int = 2048) -> nn.Sequential:
    """128 -> 2048 -> 128, the last Linear with a bias."""
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim))


def barlip_projector(in_dim: int, hidden: int = 3000, out_dim: int = 8192) -> nn.Sequential:
    """3000 -> 3000 -> 8192, BN after every Linear (the last BN affine, standardising the features for C)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim), nn.BatchNorm1d(out_dim))


OBJECTIVES = ("cl2l", "siamlip", "byolip", "barlip", "swalip")


class RocketHeads(nn.Module):
    """What clip-rocket adds to a CLIP model, on its towers' features before their projections: the augmented
    views' heads and their logit scale (init log 10, as the local temperature 0.1; without `separate_proj` the
    views use the CLIP's own projections and scale, as clip-rocket without --separate-proj), and the chosen
    objective's projectors (SiamLIP/BYOLIP: one projector per tower and one predictor per direction; BarLIP: one
    projector per tower). CL2L and SwALIP use the view heads only."""

    def __init__(self, vision_width: int, text_width: int, embed_dim: int = 256, objective: str = "cl2l",
                 separate_proj: bool = True, l2l_hidden_dim: int = 4096, siamlip_last_bn: bool = True,
                 barlip_proj_dim: int = 8192, barlip_hidden_dim: int = 3000, siamlip_proj_dim: int = 128,
                 siamlip_hidden_dim: int = 2048):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
        self.objective, self.separate_proj = objective, bool(separate_proj)
        if separate_proj:
            self.l2l_image_projector = l2l_mlp(vision_width, embed_dim, l2l_hidden_dim)
            self.l2l_text_projector = l2l_mlp(text_width, embed_dim, l2l_hidden_dim)
            self.l2l_logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        if objective in ("siamlip", "byolip"):
            self.image_projector_ssl = siamlip_projector(vision_width, siamlip_hidden_dim, siamlip_proj_dim,
                                                         last_bn=siamlip_last_bn)
            self.text_projector_ssl = siamlip_projector(text_width, siamlip_hidden_dim, siamlip_proj_dim,
                                                        last_bn=siamlip_last_bn)
            self.image_text_predictor = siamlip_predictor(siamlip_proj_dim, siamlip_hidden_dim)
            self.text_image_predictor = siamlip_predictor(siamlip_proj_dim, siamlip_hidden_dim)
        elif objective == "barlip":
            self.image_projector_ssl = barlip_projector(vision_width, barlip_hidden_dim, barlip_proj_dim)
            self.text_projector_ssl = barlip_projector(text_width, barlip_hidden_dim, barlip_proj_dim)


class RocketLoss(nn.Module):
    """The loss open_clip_train gets with `--rocket OBJ`: CL2L, plus the objective's term (SiamLIP and BYOLIP
    with weight 1, BarLIP with its own scale inside, SwALIP with `swalip_weight`), as clip-rocket's losses add
    them. Called with the model's rocket output; returns {"contrastive_loss": CL2L, "<obj>_loss": term}, which
    open_clip_train sums and logs."""

    def __init__(self, objective: str = "cl2l", label_smoothing: float = 0.0, avg_or_sum: str = "avg",
                 barlip_lamb: float = 5e-3, barlip_scale_loss: float = 0.025, swalip_weight: float = 0.2,
                 sk_iters: int = 3, target_epsilon: float = 0.05):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
        if avg_or_sum not in ("avg", "sum"):
            raise ValueError(f"loss_avg_or_sum {avg_or_sum!r}: expected avg or sum")
        self.objective, self.label_smoothing, self.avg_or_sum = objective, label_smoothing, avg_or_sum
        self.barlip = (barlip_lamb, barlip_scale_loss)
        self.swalip_weight, self.sk_iters, self.target_epsilon = swalip_weight, sk_iters, target_epsilon

    @classmethod
    def from_args(cls, args) -> "RocketLoss":
        return cls(args.rocket, args.label_smoothing, args.loss_avg_or_sum, args.barlip_lamb,
                   args.barlip_scale_loss, args.swalip_weight, args.sk_iters, args.target_epsilon)

    def forward(self, image_features, text_features, logit_scale, h_images, h_texts, h_logit_scale,
                output_dict: bool = False, **out):
        losses = {"contrastive_loss": cl2l_loss(image_features, text_features, h_images, h_texts, logit_scale,
                                                h_logit_scale, self.label_smoothing, self.avg_or_sum)}
        if self.objective in ("siamlip", "byolip"):
            sfx = "_momentum" if self.objective == "byolip" else ""
            losses[f"{self.objective}_loss"] = siamlip_loss(
                out["p_image"], out["p_text"], out["v_image" + sfx], out["v_text" + sfx], out["p_images"],
                out["p_texts"], out["v_images" + sfx], out["v_texts" + sfx])
        elif self.objective == "barlip":
            losses["barlip_loss"] = barlip_loss(out["v_image"], out["v_text"], out["v_images"], out["v_texts"],
                                                *self.barlip)
        elif self.objective == "swalip":
            losses["swalip_loss"] = self.swalip_weight * swalip_loss(h_images, h_texts, h_logit_scale,
                                                                     self.target_epsilon, self.sk_iters)
        return losses if output_dict else tuple(losses.values())
