"""Resuming: skip checkpoints left incomplete by a kill, and `--init-from CKPT` for runs with none of their own.

open_clip_train's `--resume latest` looks for the run's own newest checkpoint; with `--init-from`, a run that has
none yet starts from CKPT instead: model, optimizer state and epoch (so the LR schedule continues where the seed
run stopped, as MoDE continues a partly trained dense model), or the model alone with
`--init-from-model-only`. A relaunched run finds its own checkpoints and resumes those.
"""

from __future__ import annotations

import glob
import logging
import zipfile

log = logging.getLogger(__name__)

# The arguments of the run being set up in this process (open_clip_train trains one run per main() call).
_current = {"args": None}


def set_current(args) -> None:
    _current["args"] = args


def is_complete_checkpoint(path: str) -> bool:
    """Whether a checkpoint file is whole: torch saves a zip, whose central directory is written last."""
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def newest_complete_checkpoint(path: str) -> str | None:
    """The newest checkpoint under `path` (open_clip's order) that was written completely.

    open_clip_train writes `epoch_K.pt` in place, so a job killed while saving leaves a truncated file that
    `--resume latest` would pick and fail on; this skips it (with a warning) and takes the one before.
    """
    from open_clip_train.main import natural_key

    for candidate in sorted(glob.glob(path + "**/*.pt", recursive=True), key=natural_key, reverse=True):
        if is_complete_checkpoint(candidate):
            return candidate
        log.warning(f"Skipping {candidate}: incomplete (the job was probably killed while saving it)")
    return None


def wrap_get_latest_checkpoint(stock):
    def get_latest_checkpoint(path: str, remote: bool):
        found = stock(path, remote)
        if found is not None and not remote and not is_complete_checkpoint(found):
            found = newest_complete_checkpoint(path)
        args = _current["args"]
        if found is None and args is not None and getattr(args, "init_from", None):
            log.info(f"No checkpoint of this run yet: starting from --init-from {args.init_from}")
            return args.init_from
        return found

    get_latest_checkpoint.__wrapped__ = stock
    return get_latest_checkpoint


def wrap_pt_load(stock):
    def pt_load(file_path, map_location=None):
        checkpoint = stock(file_path, map_location=map_location)
        args = _current["args"]
        if args is None or file_path != getattr(args, "init_from", None) or not args.init_from_model_only:
            return checkpoint
        state = checkpoint.get("state_dict", checkpoint)  # a bare state dict: open_clip loads the model only
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        if args.distributed:
            state = {f"module.{k}": v for k, v in state.items()}
        return state

    pt_load.__wrapped__ = stock
    return pt_load
