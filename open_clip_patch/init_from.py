"""`--init-from CKPT`: start a run (e.g. every expert) from one seed checkpoint, then resume its own.

open_clip_train's `--resume latest` looks for the run's own newest checkpoint; with `--init-from`, a run that has
none yet starts from CKPT instead: model, optimizer state and epoch (so the LR schedule continues where the seed
run stopped, as MoDE continues a partly trained dense model), or the model alone with
`--init-from-model-only`. A relaunched run finds its own checkpoints and resumes those.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# The arguments of the run being set up in this process (open_clip_train trains one run per main() call).
_current = {"args": None}


def set_current(args) -> None:
    _current["args"] = args


def wrap_get_latest_checkpoint(stock):
    def get_latest_checkpoint(path: str, remote: bool):
        found = stock(path, remote)
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
