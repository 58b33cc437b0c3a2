"""Before training: what OpenCLIP users most often trip on, checked or stated up front.

- `check` (parse time, before any process group or loader starts): webdataset training without
  `--dataset-resampled` needs a shard per loader worker (open_clip asserts `shards >= workers x world size`
  deep in its loader, and a short pool otherwise hangs some workers) and, on average, a full batch per loader
  worker (a small expert otherwise hangs its first epoch: the loader drops partial batches and open_clip's
  epoch restarts an empty stream forever); either is a one-line error saying what to change. It also records
  how many distinct samples the data holds, when its shards say so.
- `report` (once logging is set up, with the epoch training starts at): how often each sample repeats when
  `--train-num-samples` exceeds the data (a filtered subset smaller than one epoch is upsampled silently by
  webdataset), and on a resumed run how many samples were drawn so far and about how many distinct ones.
"""

from __future__ import annotations

import argparse
import logging
import math

from mode.core.errors import UserError

log = logging.getLogger(__name__)


def _train_shards(args: argparse.Namespace) -> list[str] | None:
    """The training tars, when the data is webdataset shards; None otherwise."""
    if not args.train_data or args.dataset_type not in ("webdataset", "auto"):
        return None
    import braceexpand

    paths = [p for part in str(args.train_data).split("::") for p in braceexpand.braceexpand(part)]
    return paths if all(p.endswith(".tar") for p in paths) else None


def check(args: argparse.Namespace, world_size: int) -> None:
    """Raise a UserError for data the loader cannot split; set `args.mode_distinct_samples` (None if unknown).

    Expert runs that filter the whole pool on the fly leave the distinct count to `expected` (set by the caller).
    """
    paths = _train_shards(args)
    if paths is not None and not args.dataset_resampled:
        need = args.workers * world_size
        if len(paths) < need:
            raise UserError(
                f"{len(paths)} training shard(s) for {world_size} process(es) x --workers {args.workers} = {need} "
                "loader workers: webdataset gives each worker whole shards, so open_clip needs at least one shard "
                f"per worker. Pass --workers {max(1, len(paths) // world_size)}, reshard into more shards "
                "(`mode reshard --shard-size`), or add --dataset-resampled")
    if args.mode_distinct_samples is None and paths is not None:
        from mode.core.shards import total_samples

        args.mode_distinct_samples = total_samples(paths)
    distinct, workers = args.mode_distinct_samples, max(1, args.workers) * world_size
    fixes = ("Pass a smaller --batch-size or --global-batch-size, fewer --workers, or --dataset-resampled (as the "
             "MoDE recipes do)")
    if paths is None or args.dataset_resampled:
        return
    if distinct is not None and distinct < args.batch_size * workers:
        raise UserError(
            f"the data holds {distinct} samples, fewer than one batch of {args.batch_size} for each of the {workers} "
            "loader worker(s): a worker that cannot fill a batch yields none, and open_clip's epoch then waits "
            f"forever. {fixes}")
    sizes = _kept_per_shard(args, paths)
    if sizes is not None:  # each epoch deals the shuffled shards out: a worker may get the smallest ones
        least = len(sizes) // workers
        worst = sum(sorted(sizes)[:least])
        if worst < args.batch_size:
            raise UserError(
                f"a loader worker may be dealt the {least} smallest of the {len(sizes)} shards, which hold {worst} "
                f"training samples, fewer than one batch of {args.batch_size}: it would yield none, and open_clip's "
                f"epoch then waits forever. {fixes}")


def _kept_per_shard(args: argparse.Namespace, paths: list[str]) -> list[int] | None:
    """The training samples in each shard (an expert's pairs with --mode-work-dir), or None if unknown."""
    from mode.core.shards import shard_ids, shard_sizes

    if not getattr(args, "mode_work_dir", None):
        return shard_sizes(paths)
    from open_clip_patch.data import expert_shard_counts

    counts, ids = expert_shard_counts(args.mode_work_dir, args.expert), shard_ids(paths)  # ids as the steps name them
    sizes = [counts.get(ids[p]) for p in paths]
    return None if any(s is None for s in sizes) else sizes


def expected_distinct(drawn: int, distinct: int, per_epoch: int, resampled: bool) -> int:
    """About how many distinct samples `drawn` draws have covered.

    Resampled shards draw with replacement: d (1 - exp(-drawn / d)). Otherwise each epoch walks a fresh shuffle
    of the shards and stops after `per_epoch` samples: all of them once an epoch covers the data, else about
    d (1 - (1 - n / d) ^ epochs).
    """
    if distinct <= 0 or drawn <= 0:
        return 0
    if resampled:
        return round(distinct * -math.expm1(-drawn / distinct))
    if per_epoch >= distinct:
        return distinct
    epochs = drawn / per_epoch
    return round(distinct * (1 - (1 - per_epoch / distinct) ** epochs))


def report(args: argparse.Namespace, start_epoch: int) -> None:
    """Log the data's repeat factor and, on a resumed run, the coverage so far."""
    distinct, per_epoch = getattr(args, "mode_distinct_samples", None), args.train_num_samples
    if not distinct or not per_epoch:
        return
    if per_epoch > distinct:
        log.warning(f"--train-num-samples {per_epoch} exceeds the {distinct} distinct samples of the data: each is "
                    f"seen about {per_epoch / distinct:.2f} times per epoch (webdataset repeats the shards); pass "
                    f"--train-num-samples {distinct} for one pass per epoch")
    else:
        log.info(f"Data: {distinct} distinct samples, {per_epoch} per epoch ({per_epoch / distinct:.1%})")
    if start_epoch > 0:
        drawn = start_epoch * per_epoch
        covered = expected_distinct(drawn, distinct, per_epoch, bool(args.dataset_resampled))
        log.info(f"Resuming at epoch {start_epoch}: {drawn} samples drawn so far, about {covered} distinct of "
                 f"{distinct} ({covered / distinct:.1%})")


def wrap_get_data(stock_get_data):
    """open_clip_train's get_data (called once logging is set up, with the start epoch), reporting first."""

    def get_data(args, preprocess_fns, epoch=0, tokenizer=None):
        if getattr(args, "rank", 0) == 0:
            report(args, epoch)
        data = stock_get_data(args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)
        if not data:  # stock asserts next, with a traceback
            need = "--expert K filters the pool on the fly, but " if getattr(args, "mode_work_dir", None) else ""
            raise UserError(f"{need}no training or evaluation data was given: pass the pool's shards (--data-dir "
                            "POOL/shards, --train-data SPEC or --toy-pool DIR)")
        return data

    get_data.__wrapped__ = stock_get_data
    return get_data
