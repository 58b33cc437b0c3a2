"""DataCompDR reinforcements in open_clip_train's own webdataset pipeline (`--dataset-reinforcement`).

open_clip_train's `get_wds_dataset` builds its pipeline from `wds.decode`, `wds.map_dict` and `wds.to_tuple`
calls. While it builds a training pipeline with `--dataset-reinforcement`, the plugin hands it a `wds` whose
three stages are the reinforced ones; shard lists, resampling, shuffling, batching and epoch sizes stay stock:

- decode: only images and captions; the reinforcement members stay bytes and are read by `dr.sample`, which
  never unpickles (stock webdataset would `torch.load` a `.pth.gz` with pickle). The validation pipeline of a
  reinforced run (`--val-data`) is stock but for this decode stage.
- map_dict(image=preprocess, text=tokenize): one stored augmentation is replayed on the image (`dr.transforms`,
  with the crop size, interpolation and normalisation of the model's own train transform, as ml-mobileclip
  does), the caption and one synthetic caption are tokenised, and the matching teacher embeddings are taken.
  A sample with bad reinforcements is counted by reason and skipped; the first of each reason is logged, and
  the counts of each epoch are logged at its end (`SkipCounts`, shared by the loader workers). A loader worker
  whose first `ALL_SKIPPED_LIMIT` samples were all skipped stops training with one line (webdataset's epoch
  would otherwise reread the shards forever: e.g. shards not joined, or the wrong --distill-teacher-dimension).
- to_tuple: (image, text, image_emb, text_emb, syn_text, syn_text_emb). With
  `--dataset-reinforcement-mix-synthetic`, the synthetic caption replaces the caption with the given chance and
  the two synthetic fields are empty (no separate synthetic loss term).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import torch

from dr import sample as drs
from mode.core.errors import UserError

log = logging.getLogger(__name__)
IMAGE_AND_TEXT = ("jpg", "jpeg", "png", "webp", "txt")
FIELDS = ("image", "text", "image_emb", "text_emb", "syn_text", "syn_text_emb")
ALL_SKIPPED_LIMIT = 1000


class SkipCounts:
    """Samples read and skipped by reason, added up over a rank's loader workers (shared memory, as open_clip's
    SharedEpoch), so the training process can log each epoch's counts."""

    def __init__(self):
        import multiprocessing as mp

        self.names = ("read", *drs.REASONS)
        self.shared = mp.Array("q", len(self.names))

    def add(self, name: str) -> None:
        with self.shared.get_lock():
            self.shared[self.names.index(name)] += 1

    def snapshot(self) -> Counter:
        with self.shared.get_lock():
            return Counter(dict(zip(self.names, self.shared[:])))

    def log_since(self, before: Counter, epoch) -> None:
        now = self.snapshot()
        now.subtract(before)
        skipped = {k: v for k, v in now.items() if k != "read" and v > 0}
        if skipped:
            log.warning(f"epoch {epoch}: skipped {sum(skipped.values())} of {now['read']} samples read for bad "
                        f"reinforcements ({', '.join(f'{k} {v}' for k, v in sorted(skipped.items()))})")


def augmentation_config(config: dict, preprocess_img) -> dict:
    """The stored augmentation's config with the model's crop size, interpolation and normalisation."""
    from torchvision import transforms as T

    cfg = dict(config.get("reinforce", {}).get("image_augmentation", config))
    for t in getattr(preprocess_img, "transforms", []):
        if isinstance(t, T.Normalize):
            cfg["normalize"] = {"mean": list(t.mean), "std": list(t.std)}
        if isinstance(t, T.RandomResizedCrop) and "random_resized_crop" in cfg:
            cfg["random_resized_crop"] = {**cfg["random_resized_crop"], "size": list(t.size),
                                          "interpolation": t.interpolation.value}
    return cfg


class Reinforced:
    """`wds.map` stage: a decoded sample -> the six training fields (see the module docstring)."""

    def __init__(self, transforms, tokenizer, args, shared_epoch, counts: SkipCounts | None = None):
        self.transforms, self.tokenizer, self.counts = transforms, tokenizer, counts
        self.mix = args.dataset_reinforcement_mix_synthetic
        self.mix_ratio = args.dataset_reinforcement_mix_synthetic_ratio
        self.sequential = args.dataset_reinforcement_sample_sequential
        self.dim = sum(args.distill_teacher_dimension) if args.distill_teacher_dimension and \
            -1 not in args.distill_teacher_dimension else None
        self.shared_epoch, self.seed = shared_epoch, args.seed
        self.skipped, self.read, self._rng, self._rng_epoch = Counter(), 0, None, None

    def rng(self) -> np.random.Generator:
        """One stream per rank, loader worker and epoch, started afresh each epoch: epoch e's draws are the same
        whether the run was resumed at e or not (a persistent worker once kept its first epoch's stream)."""
        epoch = self.shared_epoch.get_value() if self.shared_epoch else 0
        if self._rng is None or self._rng_epoch != epoch:
            info = torch.utils.data.get_worker_info()
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            self._rng = np.random.default_rng([self.seed, rank, info.id if info else 0, epoch])
            self._rng_epoch = epoch
        return self._rng

    def _count(self, name: str) -> None:
        if self.counts is not None:
            self.counts.add(name)

    def __call__(self, sample: dict) -> dict:
        from dr.transforms import BadAugmentation

        self.read += 1
        self._count("read")
        try:
            r = drs.reinforcement_from_sample(sample, self.dim)
            if self.sequential:
                epoch = self.shared_epoch.get_value()
                p = drs.pick(r, aug_idx=epoch, syn_idx=epoch)
            else:
                p = drs.pick(r, self.rng())
            try:
                image = self.transforms.replay(sample["image"].convert("RGB"), p.param_aug)
            except BadAugmentation as e:  # an entry that does not fit the config: counted like the others
                raise drs.BadReinforcement("bad_paug", str(e)) from None
        except drs.BadReinforcement as e:
            self.skipped[e.reason] += 1
            self._count(e.reason)
            if self.skipped[e.reason] == 1:
                log.warning(f"skipping samples with bad reinforcements ({e.reason}: {e.detail}; first: "
                            f"{sample.get('__key__')}); later ones are counted, not logged")
            if self.read >= ALL_SKIPPED_LIMIT and self.skipped.total() == self.read:
                raise UserError(f"--dataset-reinforcement: the first {self.read} samples a loader worker read were "
                                f"all skipped ({', '.join(f'{k} {v}' for k, v in sorted(self.skipped.items()))}; "
                                f"last: {e}): train on reinforced shards (`mode dr-join` or `mode dr-generate` "
                                "output) with --distill-teacher-dimension matching their embeddings") from None
            raise
        text, text_emb = sample["text"], p.text_emb
        if self.mix:
            if self.rng().random() < self.mix_ratio:
                text, text_emb = p.syn_text, p.syn_text_emb
            syn, syn_emb = torch.zeros(0, dtype=torch.long), torch.zeros(0)
        else:
            syn, syn_emb = self.tokenizer(p.syn_text)[0], p.syn_text_emb
        return {"image": image, "text": self.tokenizer(text)[0], "image_emb": p.image_emb, "text_emb": text_emb,
                "syn_text": syn, "syn_text_emb": syn_emb}


def skip_bad_reinforcement(exn: Exception) -> bool:
    """webdataset handler: samples with bad reinforcements were counted; skip them. Others: stock's handler."""
    if isinstance(exn, drs.BadReinforcement):
        return True
    if isinstance(exn, UserError):  # nothing trainable: stop, not skip
        raise exn
    from open_clip_train.data import log_and_continue

    return log_and_continue(exn)


class SafeDecodeWds:
    """The `webdataset` module whose decode stage decodes only images and captions: stock would also decode a
    shard's `.pth.gz` with `torch.load` and its `.pyd`/`.pickle` with pickle (the validation pipeline's case)."""

    def __init__(self, wds):
        self._wds = wds

    def __getattr__(self, name):
        return getattr(self._wds, name)

    def decode(self, *handlers, **kw):
        return self._wds.decode(*handlers, only=IMAGE_AND_TEXT, **kw)


class ReinforcedWds(SafeDecodeWds):
    """The `webdataset` module as get_wds_dataset sees it while building a reinforced training pipeline."""

    def __init__(self, wds, args, tokenizer):
        super().__init__(wds)
        self._args, self._tokenizer, self._epoch = args, tokenizer, None
        self.counts = SkipCounts()

    def map_dict(self, image=None, text=None, **kw):
        from dr.transforms import from_config

        transforms = from_config(augmentation_config(self._args.dr_augment_config, image))
        return self._wds.map(Reinforced(transforms, self._tokenizer, self._args, self._epoch, self.counts),
                             handler=skip_bad_reinforcement)

    def to_tuple(self, *fields, **kw):
        return self._wds.to_tuple(*FIELDS, **kw)


def wrap_get_wds_dataset(get_wds_dataset, oc_data):
    """get_wds_dataset that builds the reinforced pipeline for training when `--dataset-reinforcement`."""

    def wrapped(args, preprocess_img, is_train, epoch=0, floor=False, tokenizer=None):
        if not getattr(args, "dataset_reinforcement", False):
            return get_wds_dataset(args, preprocess_img, is_train, epoch=epoch, floor=floor, tokenizer=tokenizer)
        if not is_train:  # stock validation on reinforced shards, decoding only what it reads
            stock_wds, oc_data.wds = oc_data.wds, SafeDecodeWds(oc_data.wds)
            try:
                return get_wds_dataset(args, preprocess_img, is_train, epoch=epoch, floor=floor, tokenizer=tokenizer)
            finally:
                oc_data.wds = stock_wds
        stock_wds, stock_shared_epoch = oc_data.wds, oc_data.SharedEpoch
        made = {}

        def shared_epoch(*a, **k):  # the pipeline's epoch counter, also read by the reinforced stage
            made["epoch"] = stock_shared_epoch(*a, **k)
            proxy._epoch = made["epoch"]
            return made["epoch"]

        proxy = ReinforcedWds(stock_wds, args, tokenizer)
        oc_data.wds, oc_data.SharedEpoch = proxy, shared_epoch
        try:
            info = get_wds_dataset(args, preprocess_img, is_train, epoch=epoch, floor=floor, tokenizer=tokenizer)
        finally:
            oc_data.wds, oc_data.SharedEpoch = stock_wds, stock_shared_epoch
        info.dataloader.dr_skip_counts = proxy.counts  # logged per epoch by dr_train.Batches
        return info

    wrapped.__wrapped__ = get_wds_dataset
    return wrapped
