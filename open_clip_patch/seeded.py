"""A seeded sample shuffle for open_clip_train's webdataset training pipeline: same --seed, same batches.

Stock `get_wds_dataset` shuffles shards deterministically (`detshuffle2`, `ResampledShards2`) but shuffles
samples with `wds.shuffle`, whose generator is seeded from the process id and the clock, so two runs with one
seed see different batches. While it builds a training pipeline, the plugin hands it a `wds` whose `shuffle`
is the same buffer shuffle (same sizes) drawn from `random.Random("<seed>/<epoch>/<rank>/<worker>")`.
"""

from __future__ import annotations

import random

import webdataset as wds
from webdataset.filters import _shuffle


class SeededShuffle(wds.PipelineStage):
    """webdataset's buffer shuffle with a generator seeded by --seed, the epoch, the rank and the loader worker."""

    def __init__(self, bufsize: int, initial: int, seed: int, epoch=None):
        self.bufsize, self.initial, self.seed, self.epoch = bufsize, initial, seed, epoch

    def run(self, src):
        import torch.utils.data
        from open_clip_train.distributed import world_info_from_env

        info = torch.utils.data.get_worker_info()
        epoch = self.epoch.get_value() if self.epoch is not None else 0
        rng = random.Random(f"{self.seed}/{epoch}/{world_info_from_env()[1]}/{info.id if info else 0}")
        return _shuffle(src, self.bufsize, self.initial, rng)


class _SeededWds:
    """The `webdataset` module as get_wds_dataset sees it while building a training pipeline."""

    def __init__(self, module, seed: int):
        self._wds, self._seed, self.stages = module, seed, []

    def __getattr__(self, name):
        return getattr(self._wds, name)

    def shuffle(self, bufsize=1000, initial=100, **kw):
        stage = SeededShuffle(bufsize, initial, self._seed)
        self.stages.append(stage)
        return stage


def wrap_get_wds_dataset(get_wds_dataset, oc_data):
    """get_wds_dataset whose training pipeline shuffles samples with `SeededShuffle`."""

    def wrapped(args, preprocess_img, is_train, epoch=0, floor=False, tokenizer=None):
        if not is_train:
            return get_wds_dataset(args, preprocess_img, is_train, epoch=epoch, floor=floor, tokenizer=tokenizer)
        stock_wds = oc_data.wds
        proxy = oc_data.wds = _SeededWds(stock_wds, int(args.seed))
        try:
            info = get_wds_dataset(args, preprocess_img, is_train, epoch=epoch, floor=floor, tokenizer=tokenizer)
        finally:
            oc_data.wds = stock_wds
        for stage in proxy.stages:  # the pipeline's epoch counter, which open_clip sets before each epoch
            stage.epoch = info.shared_epoch
        return info

    wrapped.__wrapped__ = get_wds_dataset
    return wrapped
