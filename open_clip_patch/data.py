"""Expert data on the fly (MoDE-style): the stock webdataset loader over the whole pool, keeping expert K's pairs.

With `--mode-work-dir W --expert K [--ooc-ratio r] [--ooc-mode share|additive]`, open_clip_train's own
`get_wds_dataset` builds the pipeline as usual, except that its sample filter also keeps only the samples whose
uid `mode assign` gave to coarse cluster K, plus out-of-cluster samples, each kept with the probability
`mode.prep.ooc.keep_rate` gives: a share `r` of what is kept, or (`additive`, MoDE's) r of the other clusters'
pairs, redrawn at every read as MoDE's loader does (seeded by --seed, the epoch and the loader worker). The uid
lookup is a binary search in a sorted `u8,u8` array (mode.core.uids.UidSet), not a Python set of strings.
Everything else (shard resampling, shuffling, batching, `--train-num-samples` per epoch) is stock.
"""

from __future__ import annotations

import logging
import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mode.core.errors import UserError
from mode.core.layout import WorkDir
from mode.core.uids import NoUid, UidSet, hex_to_pairs, sample_uid
from mode.prep import ooc

log = logging.getLogger(__name__)


def expert_counts(work_dir: str, expert: int) -> tuple[int, int]:
    """(pairs of `expert`, pairs in the pool) from a work dir's complete assign/ summary."""
    from mode.core.runner import read_complete_summary

    wd = WorkDir(Path(work_dir))
    if not WorkDir.summary(wd.assign_dir).exists():
        raise UserError(f"no assignment in {work_dir}: run `./run_mode.sh prep-steps SHARDS {work_dir}` first")
    counts = read_complete_summary(wd.assign_dir, "assign", "training an expert")["counts"]["coarse"]
    if not 0 <= expert < len(counts):
        raise UserError(f"--expert {expert}: {work_dir} has experts 0..{len(counts) - 1}")
    return int(counts[expert]), int(sum(counts))


def expert_shard_counts(work_dir: str, expert: int) -> dict[str, int]:
    """{shard id: pairs `mode assign` gave to `expert` in that shard}, from the assignment's coarse column."""
    counts = {}
    for path in sorted(WorkDir(Path(work_dir)).assign_dir.glob("*.parquet")):
        coarse = pq.read_table(path, columns=["coarse"]).column("coarse")
        counts[path.stem] = int(pc.sum(pc.equal(coarse, expert)).as_py() or 0)
    return counts


@lru_cache(maxsize=4)
def expert_uids(work_dir: str, expert: int) -> tuple[UidSet, int, int]:
    """(uids assigned to `expert`, pairs of that expert, pairs in the pool) from a work dir's assign/ step."""
    n_expert, n_total = expert_counts(work_dir, expert)
    uids = []
    for path in sorted(WorkDir(Path(work_dir)).assign_dir.glob("*.parquet")):
        t = pq.read_table(path, columns=["uid", "coarse"])
        mask = pc.equal(t.column("coarse"), expert)
        uids.append(hex_to_pairs(t.column("uid").filter(mask).to_pylist()))
    pairs = np.concatenate(uids) if uids else np.zeros(0, "u8,u8")
    if len(pairs) != n_expert:
        raise UserError(f"{work_dir}/assign holds {len(pairs)} pairs of expert {expert}, its summary {n_expert}: "
                        "rerun `mode assign`")
    return UidSet(pairs), n_expert, n_total


class ExpertFilter:
    """A webdataset `select` predicate: stock's caption-and-image check, then expert membership by uid."""

    def __init__(self, stock_filter, uids: UidSet, keep_outside: float, seed: int, epoch: int = 0):
        self.stock_filter, self.uids, self.keep_outside = stock_filter, uids, keep_outside
        self.seed, self.epoch, self._rng, self._warned = seed, epoch, None, False

    def __call__(self, sample: dict) -> bool:
        if not self.stock_filter(sample):
            return False
        try:
            inside = bool(self.uids.contains(hex_to_pairs([sample_uid(sample)]))[0])
        except NoUid:
            if not self._warned:
                log.warning(f"samples without a valid uid in their json are skipped (first: {sample.get('__key__')})")
                self._warned = True
            return False
        if inside:
            return True
        if self._rng is None:  # one stream per loader worker: seed, epoch, rank and worker id
            import torch.utils.data
            from open_clip_train.distributed import world_info_from_env

            info = torch.utils.data.get_worker_info()
            self._rng = random.Random(f"{self.seed}/{self.epoch}/{world_info_from_env()[1]}/{info.id if info else -1}")
        return self._rng.random() < self.keep_outside


def wrap_get_wds_dataset(stock_get_wds_dataset, oc_data):
    """open_clip_train's get_wds_dataset, with the expert filter in place of its sample filter when asked."""

    def get_wds_dataset(args, preprocess_img, is_train, epoch=0, floor=False, tokenizer=None):
        if not (is_train and getattr(args, "mode_work_dir", None) is not None):
            return stock_get_wds_dataset(args, preprocess_img, is_train, epoch=epoch, floor=floor, tokenizer=tokenizer)
        uids, n_expert, n_total = expert_uids(args.mode_work_dir, args.expert)
        keep = ooc.keep_rate(n_expert, n_total - n_expert, args.ooc_ratio or 0.0, args.ooc_mode)
        stock_filter = oc_data.filter_no_caption_or_no_image
        oc_data.filter_no_caption_or_no_image = ExpertFilter(stock_filter, uids, keep, args.seed, epoch)
        try:  # the pipeline captures the filter when built
            return stock_get_wds_dataset(args, preprocess_img, is_train, epoch=epoch, floor=floor, tokenizer=tokenizer)
        finally:
            oc_data.filter_no_caption_or_no_image = stock_filter

    get_wds_dataset.__wrapped__ = stock_get_wds_dataset
    return get_wds_dataset
