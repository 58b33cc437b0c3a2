"""DataCompDR's training loss: CLIP loss plus distillation from an ensemble of teachers (MobileCLIP's DRClipLoss).

For one batch of N pairs, with student features (image x_i, caption y_i, synthetic caption z_i), the student's
scale s, and the teachers' stored embeddings (u_i of the image, v_i of the caption, w_i of the synthetic
caption; each the concatenation of T teachers' parts, u_i = [u_i^1, ..., u_i^T]) with teacher scales c_t:

    student logits   S_xy[i, j] = s <x_i, y_j>             (open_clip's ClipLoss.get_logits)
    teacher targets  P_uv = mean_t softmax_j(c_t <u_i^t, v_j^t>)           --distill-average-after-softmax
                     P_uv = softmax_j(sum_t c_t <u_i^t, v_j^t>)             otherwise (one scale c: c <u_i, v_j>)
    CLIP(x, y)     = (CE(S_xy, I) + CE(S_yx, I)) / 2
    KD(x, y; u, v) = (H(P_uv, S_xy) + H(P_vu, S_yx)) / 2,   H(P, S) = mean_i -sum_j P[i, j] log softmax_j S[i, j]

    contrastive_loss = W_CLIP * (CLIP(x, y) + CLIP(x, z))
    distill_loss     = W_KD   * (KD(x, y; u, v) + KD(x, z; u, w))

The synthetic-caption terms are added, not averaged, to the original-caption ones, and are absent when no
synthetic caption is given; each KD term averages its two directions. This is ml-mobileclip's DRClipLoss
(training/open_clip*.patch) with these differences, all in corner cases:

- ml-mobileclip's gathered, non-local path with average-after-softmax takes the text->image targets as the
  transpose of the image->text ones (whose rows then do not sum to 1); here each direction is its own softmax,
  so a gathered loss equals the single-process loss on the whole batch.
- one --distill-logit-scale is used for every teacher; several scales without average-after-softmax weight each
  teacher's similarities before the sum (with one scale this is ml-mobileclip's dot product of the
  concatenated embeddings).
- targets are computed in float32 outside autocast and without gradient; with W_KD = 0 they are not computed.
- --distill-teacher-dimension -1 with --distill-average-after-softmax: ml-mobileclip's ensemble slices each
  teacher by the cumulative sum of the widths, [0:-1] for -1, so it leaves out the embeddings' last column;
  here -1 is one teacher over every column, as it is there without average-after-softmax.

The teachers' embeddings are used as stored (each part L2-normalised by the generator), as ml-mobileclip does.
Distributed gathering is open_clip's (`gather_features`, `ClipLoss.get_logits`), with the same local-loss and
gather-with-grad semantics.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from open_clip.loss import ClipLoss, gather_features
from torch.nn import functional as F


def teacher_bounds(teacher_dimension: Sequence[int], width: int) -> list[tuple[int, int]]:
    """Column ranges of each teacher inside the concatenated embedding.

    Args:
        teacher_dimension: the teachers' widths in order, or [-1] for one teacher using all `width` columns.
        width: the width D of the stored embeddings.

    Returns:
        [(start, stop), ...], one per teacher; raises ValueError when the widths do not sum to D.
    """
    dims = [width] if list(teacher_dimension) == [-1] else [int(d) for d in teacher_dimension]
    if sum(dims) != width:
        raise ValueError(f"--distill-teacher-dimension {' '.join(map(str, teacher_dimension))} sums to {sum(dims)}"
                         f" but the teacher embeddings have {width} columns")
    stops = torch.tensor(dims).cumsum(0).tolist()
    return [(stop - d, stop) for d, stop in zip(dims, stops)]


def ensemble_targets(rows: torch.Tensor, cols: torch.Tensor, scales: Sequence[float],
                     bounds: Sequence[tuple[int, int]], average_after_softmax: bool) -> torch.Tensor:
    """The teachers' distribution over `cols` for each of `rows` (each row sums to 1).

    Args:
        rows: [n, D] teacher embeddings of the anchors (e.g. images).
        cols: [m, D] teacher embeddings of the candidates (e.g. captions).
        scales: one logit scale per teacher.
        bounds: each teacher's column range (`teacher_bounds`).
        average_after_softmax: average the teachers' softmaxes; otherwise softmax the sum of scaled similarities.

    Returns:
        [n, m] probabilities.
    """
    logits = [c * rows[:, a:b] @ cols[:, a:b].T for c, (a, b) in zip(scales, bounds)]
    if average_after_softmax:
        return sum(lg.softmax(dim=1) for lg in logits) / len(logits)
    return sum(logits).softmax(dim=1)


def soft_cross_entropy(target: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """mean_i -sum_j target[i, j] * log_softmax(student_logits)[i, j]."""
    return -(target * student_logits.log_softmax(dim=1)).sum(dim=1).mean(dim=0)


class DRClipLoss(ClipLoss):
    """CLIP loss on (image, caption) and (image, synthetic caption) plus distillation from stored teachers.

    Configured like open_clip's ClipLoss; the extra arguments mirror ml-mobileclip's flags:
    distill_loss_weights (--distill-loss-weights W_CLIP W_KD), dist_logit_scale (--distill-logit-scale, one
    value or one per teacher; None takes the scale passed to forward), teacher_dimension
    (--distill-teacher-dimension, [-1] = one teacher) and average_after_softmax (--distill-average-after-softmax).
    """

    def __init__(
            self,
            local_loss: bool = False,
            gather_with_grad: bool = False,
            cache_labels: bool = False,
            rank: int = 0,
            world_size: int = 1,
            use_horovod: bool = False,
            distill_loss_weights: Sequence[float] = (1.0, 1.0),
            dist_logit_scale: Optional[Sequence[float] | float] = None,
            teacher_dimension: Sequence[int] = (-1,),
            average_after_softmax: bool = False,
    ):
        super().__init__(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=cache_labels,
                         rank=rank, world_size=world_size, use_horovod=use_horovod)
        if len(distill_loss_weights) != 2:
            raise ValueError(f"--distill-loss-weights takes 2 values (W_CLIP W_KD), got {list(distill_loss_weights)}")
        dims = [int(d) for d in teacher_dimension]
        if not dims or (dims != [-1] and min(dims) <= 0):
            raise ValueError(f"--distill-teacher-dimension takes positive widths or -1 alone, got {dims}")
        if isinstance(dist_logit_scale, (int, float)):
            dist_logit_scale = [dist_logit_scale]
        if dist_logit_scale is not None and len(dist_logit_scale) not in (1, len(dims)):
            raise ValueError(f"--distill-logit-scale takes 1 value or one per teacher ({len(dims)}), "
                             f"got {list(dist_logit_scale)}")
        self.w_clip, self.w_kd = (float(w) for w in distill_loss_weights)
        self.dist_logit_scale = None if dist_logit_scale is None else [float(c) for c in dist_logit_scale]
        self.teacher_dimension = dims
        self.average_after_softmax = bool(average_after_softmax)

    @classmethod
    def from_args(cls, args) -> "DRClipLoss":
        """Build from open_clip_train's args plus the plugin's distill flags (None means the flag's default)."""
        def flag(name, default):
            value = getattr(args, name, None)
            return default if value is None else value

        return cls(local_loss=args.local_loss, gather_with_grad=args.gather_with_grad, cache_labels=True,
                   rank=args.rank, world_size=args.world_size, use_horovod=getattr(args, "horovod", False),
                   distill_loss_weights=flag("distill_loss_weights", (1.0, 1.0)),
                   dist_logit_scale=getattr(args, "distill_logit_scale", None),
                   teacher_dimension=flag("distill_teacher_dimension", (-1,)),
                   average_after_softmax=flag("distill_average_after_softmax", False))

    def teacher_scales(self, n_teachers: int, dist_logit_scale=None) -> list[float]:
        """One scale per teacher: the configured ones, else forward's `dist_logit_scale` for every teacher."""
        scales = self.dist_logit_scale
        if scales is None:
            if dist_logit_scale is None:
                raise ValueError("distillation needs the teachers' logit scale: pass --distill-logit-scale")
            scales = [float(dist_logit_scale)]
        return scales * n_teachers if len(scales) == 1 else list(scales)

    def teacher_targets(self, dist_image_features: torch.Tensor, dist_text_features: torch.Tensor,
                        dist_logit_scale=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The teachers' image->text and text->image distributions, laid out like `get_logits`'s outputs."""
        bounds = teacher_bounds(self.teacher_dimension, dist_image_features.shape[-1])
        scales = self.teacher_scales(len(bounds), dist_logit_scale)
        with torch.no_grad(), torch.autocast(dist_image_features.device.type, enabled=False):
            img, txt = dist_image_features.float(), dist_text_features.float()
            pairs = [(img, txt), (txt, img)]
            if self.world_size > 1:
                all_img, all_txt = gather_features(img, txt, local_loss=self.local_loss, gather_with_grad=False,
                                                   rank=self.rank, world_size=self.world_size,
                                                   use_horovod=self.use_horovod)
                rows_img, rows_txt = (img, txt) if self.local_loss else (all_img, all_txt)
                pairs = [(rows_img, all_txt), (rows_txt, all_img)]
            return tuple(ensemble_targets(a, b, scales, bounds, self.average_after_softmax) for a, b in pairs)

    def _pair_losses(self, image_features, text_features, logit_scale, logit_bias,
                     dist_image_features, dist_text_features, dist_logit_scale):
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, logit_scale,
                                                            logit_bias=logit_bias)
        labels = self.get_ground_truth(image_features.device, logits_per_image.shape[0])
        contrastive = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        if self.w_kd == 0:
            return self.w_clip * contrastive, logits_per_image.new_zeros(())
        if dist_image_features is None or dist_text_features is None:
            raise ValueError("W_KD > 0 needs the teachers' embeddings (dist_image_features and dist_*text_features)")
        target_image, target_text = self.teacher_targets(dist_image_features, dist_text_features, dist_logit_scale)
        distill = (soft_cross_entropy(target_image, logits_per_image)
                   + soft_cross_entropy(target_text, logits_per_text)) / 2
        return self.w_clip * contrastive, self.w_kd * distill

    def forward(
            self,
            image_features: torch.Tensor,
            text_features: torch.Tensor,
            logit_scale: torch.Tensor,
            dist_image_features: Optional[torch.Tensor] = None,
            dist_text_features: Optional[torch.Tensor] = None,
            syn_text_features: Optional[torch.Tensor] = None,
            dist_syn_text_features: Optional[torch.Tensor] = None,
            dist_logit_scale=None,
            logit_bias: Optional[torch.Tensor] = None,
            output_dict: bool = False,
    ):
        """Weighted CLIP and distillation losses of one batch.

        Args:
            image_features, text_features: the student's [N, d] normalised features (original captions).
            logit_scale: the student's (exponentiated) logit scale.
            dist_image_features, dist_text_features: the teachers' [N, D] embeddings of the same pairs.
            syn_text_features, dist_syn_text_features: the same for the synthetic captions; None skips them.
            dist_logit_scale: the teachers' scale when none was configured (online distillation's model output).
            logit_bias: the student's logit bias, as ClipLoss takes it.
            output_dict: return {"contrastive_loss", "distill_loss"} instead of the tuple.

        Returns:
            (contrastive_loss, distill_loss), already weighted by W_CLIP and W_KD, or the dict.
        """
        pairs = [(text_features, dist_text_features)]
        if syn_text_features is not None:
            pairs.append((syn_text_features, dist_syn_text_features))
        terms = [self._pair_losses(image_features, text, logit_scale, logit_bias, dist_image_features, dist_text,
                                   dist_logit_scale) for text, dist_text in pairs]
        contrastive_loss = sum(c for c, _ in terms)
        distill_loss = sum(d for _, d in terms)
        if output_dict:
            return {"contrastive_loss": contrastive_loss, "distill_loss": distill_loss}
        return contrastive_loss, distill_loss
