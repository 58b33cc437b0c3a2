"""clip-rocket through open_clip_train's own main and train_one_epoch (`--rocket OBJ`).

- `create_model_and_transforms`: the model open_clip_train builds for `--model` gets the rocket heads (and
  BYOLIP's momentum copy) before it is wrapped in DDP, so the optimizer trains them (weight decay as stock
  decides it: none for biases, norms, BN and logit scales, as clip-rocket), checkpoints hold them and
  `--resume` restores them (`open_clip_patch.rocket_model`).
- `create_loss`: `RocketLoss` with the flags' settings.
- `train_one_epoch`: stock, with an optimizer step hook that clamps the views' logit scale and moves the
  momentum copy after every step (stock clamps the CLIP's own scale). The loader already yields view batches
  (`open_clip_patch.rocket_data`), which the model's forward takes as they come.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)


def _args():
    from open_clip_patch.init_from import _current

    return _current["args"]


def wrap_create_model_and_transforms(stock):
    @functools.wraps(stock)
    def create_model_and_transforms(model_name, *a, **kw):
        model, preprocess_train, preprocess_val = stock(model_name, *a, **kw)
        args = _args()
        if args is not None and getattr(args, "rocket", None) and model_name == args.model:
            from open_clip_patch.rocket_model import attach

            attach(model, args.rocket, text_dropout=args.text_dropout_prob, separate_proj=args.separate_proj,
                   l2l_hidden_dim=args.l2l_hidden_dim, siamlip_last_bn=not args.siamlip_no_last_bn,
                   barlip_proj_dim=args.barlip_proj_dim, barlip_hidden_dim=args.barlip_hidden_dim,
                   siamlip_proj_dim=args.siamlip_proj_dim, siamlip_hidden_dim=args.siamlip_hidden_dim)
            n_heads = sum(p.numel() for p in model.rocket.parameters())
            log.info(f"--rocket {args.rocket}: {args.num_augs} augmented views; heads with {n_heads:,} parameters"
                     + (", momentum copy of the model" if args.rocket == "byolip" else ""))
        return model, preprocess_train, preprocess_val

    return create_model_and_transforms


def wrap_create_loss(stock):
    @functools.wraps(stock)
    def create_loss(args):
        if getattr(args, "rocket", None):
            from open_clip_patch.rocket import RocketLoss

            return RocketLoss.from_args(args)
        return stock(args)

    return create_loss


def wrap_train_one_epoch(stock):
    @functools.wraps(stock)
    def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None):
        if not getattr(args, "rocket", None):
            return stock(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args,
                         tb_writer=tb_writer)
        from open_clip_train.train import unwrap_model

        from open_clip_patch.rocket_model import after_step

        inner = unwrap_model(model)
        handle = optimizer.register_step_post_hook(lambda *_: after_step(inner, args.momentum_tau))
        try:
            return stock(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args,
                         tb_writer=tb_writer)
        finally:
            handle.remove()

    return train_one_epoch
