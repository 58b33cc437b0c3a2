"""Training on reinforcements through open_clip_train's own `train_one_epoch` (`--dataset-reinforcement`).

Stock `train_one_epoch` unpacks `images, texts = batch`, calls `model(images, texts)` and then
`loss(**model_out)`. For one epoch with reinforcements the plugin hands it:

- a train loader that yields `(images, texts)` where `texts` stacks the captions and, below them, the synthetic
  captions (one text-tower pass over both, as ml-mobileclip does), and keeps the batch's teacher embeddings
  aside for the model;
- the model inside `ReinforcedModel`, whose forward splits the text features back into caption and synthetic
  caption features and adds the teacher embeddings (`dist_*`) to the output, which `DRClipLoss` reads.

The optimizer, scaler, schedule, logging and checkpoints are stock; `unwrap_model` still reaches the CLIP
(the wrapper's `.module`). Gradient accumulation is refused by the flag check (`--accum-freq 1`).
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn

from mode.core.errors import UserError


class Side:
    """The current batch's teacher embeddings, handed from the loader to the model (same thread)."""

    batch = None


class Batches:
    """The train loader, yielding (images, captions + synthetic captions) and setting `Side.batch`."""

    def __init__(self, loader, side: Side, mix_synthetic: bool, epoch: int = 0):
        self.loader, self.side, self.mix, self.epoch = loader, side, mix_synthetic, epoch
        self.num_batches, self.num_samples = loader.num_batches, loader.num_samples

    def __len__(self):
        return self.num_batches

    def __iter__(self):
        counts = getattr(self.loader, "dr_skip_counts", None)
        before = counts.snapshot() if counts else None
        try:
            for images, texts, image_emb, text_emb, syn, syn_emb in self.loader:
                self.side.batch = (len(images), image_emb, text_emb, None if self.mix else syn_emb)
                if not self.mix:
                    texts = torch.cat([texts, syn[:, :texts.shape[-1]]])
                yield images, texts
        except UserError as e:  # a loader worker's comes wrapped in its traceback: keep the one line
            raise UserError(str(e).strip().splitlines()[-1].split("UserError: ", 1)[-1]) from None
        if counts:
            counts.log_since(before, self.epoch)


class ReinforcedModel(nn.Module):
    """The training model, its output extended with synthetic-caption features and teacher embeddings."""

    def __init__(self, model: nn.Module, side: Side):
        super().__init__()
        from open_clip_train.train import unwrap_model

        self.inner, self.side = model, side
        self.module = unwrap_model(model)  # what stock's unwrap_model(model) returns for the wrapper

    def forward(self, images, texts):
        out = self.inner(images, texts)
        n, image_emb, text_emb, syn_emb = self.side.batch
        device = out["image_features"].device
        if syn_emb is not None:
            features = out["text_features"]
            out["text_features"], out["syn_text_features"] = features[:n], features[n:]
            out["dist_syn_text_features"] = syn_emb.to(device, non_blocking=True)
        out["dist_image_features"] = image_emb.to(device, non_blocking=True)
        out["dist_text_features"] = text_emb.to(device, non_blocking=True)
        return out


def wrap_train_one_epoch(train_one_epoch):
    """Stock train_one_epoch, given the reinforced loader and model when `--dataset-reinforcement`."""

    @functools.wraps(train_one_epoch)
    def wrapped(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None):
        if not getattr(args, "dataset_reinforcement", False):
            return train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args,
                                   tb_writer=tb_writer)
        side = Side()
        train = data["train"]
        data = {**data, "train": dataclasses.replace(
            train, dataloader=Batches(train.dataloader, side, args.dataset_reinforcement_mix_synthetic, epoch))}
        return train_one_epoch(ReinforcedModel(model, side), data, loss, epoch, optimizer, scaler, scheduler,
                               dist_model, args, tb_writer=tb_writer)

    return wrapped


def wrap_create_loss(create_loss):
    """Stock create_loss, or DRClipLoss when `--dataset-reinforcement`."""

    @functools.wraps(create_loss)
    def wrapped(args):
        if getattr(args, "dataset_reinforcement", False):
            from open_clip_patch.loss import DRClipLoss

            return DRClipLoss.from_args(args)
        return create_loss(args)

    return wrapped
