"""Where a run starts and stops: checkpoints left incomplete by a kill are skipped, `--init-from CKPT` starts a
run that has no checkpoint of its own, `--stop-epoch E` ends one early on its full-length LR schedule.

A run started with `--init-from CKPT` (a MoDE expert forked from the dense seed run) starts from CKPT: model,
optimizer, scaler and epoch, so the LR schedule continues where the seed run stopped, or the model alone with
`--init-from-model-only`. Once the run has a complete checkpoint of its own, a relaunch resumes that instead.

The choice is made when the arguments are parsed (`resolve_start`), because open_clip_train's `--resume latest`
has two lookups and only one goes through a function we can wrap: with `--save-most-recent` it checks for
`epoch_latest.pt` itself, and stock would then start a forked run from scratch. Where the run's own newest
complete checkpoint is what stock's lookup finds, `--resume latest` stays; otherwise `--resume` is set to the
file chosen here. open_clip_train refuses an explicit `--resume` for a run whose log exists (a relaunch after a
kill before the first checkpoint), so that log is first moved aside to `out.log.<n>`, never deleted.
"""

from __future__ import annotations

import glob
import logging
import os
import re

from mode.core.errors import UserError
from mode.core.shards import is_complete_checkpoint  # noqa: F401  (imported from here too)

log = logging.getLogger(__name__)

LATEST = "epoch_latest.pt"  # open_clip_train's name for --save-most-recent's checkpoint
_CHECKPOINT_NAME = re.compile(r"epoch_(\d+|latest)\.pt")
_NUMBERED = re.compile(r"epoch_\d+\.pt")

# The arguments and model of the run being set up in this process (open_clip_train trains one run per main()).
_current = {"args": None, "model": None}


def set_current(args) -> None:
    _current["args"], _current["model"] = args, None


def newest_complete_checkpoint(path: str, numbered_only: bool = False) -> str | None:
    """The newest `epoch_K.pt` / `epoch_latest.pt` under `path` (open_clip's order) that was written completely.

    open_clip_train writes `epoch_K.pt` in place, so a job killed while saving leaves a truncated file that
    `--resume latest` would pick and fail on; this skips it (with a warning) and takes the one before. Other
    `.pt` files (`tmp.pt` of an interrupted `--save-most-recent`) are not checkpoints of the run;
    `numbered_only` leaves out `epoch_latest.pt` too.
    """
    from open_clip_train.main import natural_key

    name = _NUMBERED if numbered_only else _CHECKPOINT_NAME
    candidates = [p for p in glob.glob(os.path.join(path, "**", "*.pt"), recursive=True)
                  if name.fullmatch(os.path.basename(p))]
    for candidate in sorted(candidates, key=natural_key, reverse=True):
        if is_complete_checkpoint(candidate):
            return candidate
        log.warning(f"Skipping {candidate}: incomplete (the job was probably killed while saving it)")
    return None


def own_checkpoint(checkpoint_dir: str, save_most_recent: bool) -> tuple[str | None, str | None]:
    """(the run's newest complete checkpoint, what open_clip_train's `--resume latest` lookup finds).

    Stock's lookup with `--save-most-recent` is `epoch_latest.pt` if it exists, else nothing; without it, the
    newest `*.pt` (the plugin's wrapper skips incomplete ones, as here). They differ when a job was killed after
    saving `epoch_K.pt` but before replacing `epoch_latest.pt` (the newer file wins, by modification time).
    """
    if not os.path.isdir(checkpoint_dir):
        return None, None
    if not save_most_recent:
        newest = newest_complete_checkpoint(checkpoint_dir)
        return newest, newest
    latest = os.path.join(checkpoint_dir, LATEST)
    stock = latest if os.path.exists(latest) else None  # written to tmp.pt, then renamed; but a disk may fill
    usable = stock if stock is not None and is_complete_checkpoint(stock) else None
    numbered = newest_complete_checkpoint(checkpoint_dir, numbered_only=True)
    if numbered is not None and (usable is None or os.path.getmtime(numbered) > os.path.getmtime(usable)):
        return numbered, stock
    return usable, stock


def resolve_start(args) -> None:
    """Decide where a run with `--init-from` starts (see the module docstring), or which checkpoint a plain
    `--resume latest --save-most-recent` takes when `epoch_latest.pt` is cut short; changes `args.resume`."""
    if not args.init_from:
        if getattr(args, "init_from_model_only", False):
            raise UserError("--init-from-model-only needs --init-from CKPT")
        _skip_cut_latest(args)
        return
    if args.resume not in (None, "latest"):
        raise UserError(f"--init-from {args.init_from} and --resume {args.resume}: pass one of them")
    if getattr(args, "remote_sync", None):
        raise UserError("--init-from does not support --remote-sync (its checkpoints are looked up remotely)")
    if not os.path.isfile(args.init_from) or not is_complete_checkpoint(args.init_from):
        raise UserError(f"--init-from {args.init_from}: not a complete checkpoint file")
    args.resume = "latest"
    if not args.name:  # open_clip names the run after the date and time: it is new, with no checkpoint
        args.resume = args.init_from
        return
    run_dir = os.path.join(args.logs, args.name)
    newest, stock = own_checkpoint(os.path.join(run_dir, "checkpoints"), bool(args.save_most_recent))
    if newest is not None and newest == stock:
        return  # stock's `--resume latest` finds the run's own newest checkpoint
    args.resume = newest or args.init_from
    log.info(f"Starting from {args.resume} ({'the run' if newest else 'no checkpoint of the run yet: --init-from'})")
    _move_old_log_aside(args, run_dir)


def _skip_cut_latest(args) -> None:
    """Stock `--resume latest --save-most-recent` loads `epoch_latest.pt` without looking: if it is incomplete,
    take the run's newest complete `epoch_K.pt` instead (or stop in one line when there is none)."""
    if args.resume != "latest" or not args.save_most_recent or not args.name or getattr(args, "remote_sync", None):
        return
    run_dir = os.path.join(args.logs, args.name)
    newest, stock = own_checkpoint(os.path.join(run_dir, "checkpoints"), True)
    if stock is None or newest == stock:
        return
    if newest is None:
        raise UserError(f"{stock} is incomplete and the run has no complete epoch_K.pt to resume instead: move it "
                        "aside to start the run over")
    log.warning(f"{stock} is incomplete: resuming {newest}")
    args.resume = newest
    _move_old_log_aside(args, run_dir)


def _move_old_log_aside(args, run_dir: str) -> None:
    """open_clip_train refuses an explicit --resume when the run's log exists: keep that log as out.log.<n>."""
    from open_clip_train.distributed import world_info_from_env

    local_rank, rank, _ = world_info_from_env()
    if (local_rank if args.log_local else rank) != 0:
        return
    name = f"out-{rank}" if args.log_local else "out.log"
    old = os.path.join(run_dir, name)
    if not os.path.exists(old):
        return
    n = 1
    while os.path.exists(f"{old}.{n}"):
        n += 1
    os.replace(old, f"{old}.{n}")
    log.info(f"Kept the previous attempt's log as {old}.{n}")


def wrap_create_loss(stock):
    """With `--stop-epoch E`: the run stops after epoch E while its LR schedule spans `--epochs` (MoDE's dense
    seed run, stopped where the experts fork). open_clip_train calls create_loss once, after making the schedule
    and before the epoch loop, so `args.epochs` becomes E only for the loop; epoch E is saved as a last epoch is.
    """

    def create_loss(args):
        stop = getattr(args, "stop_epoch", None)
        if stop and stop < args.epochs:
            log.info(f"--stop-epoch {stop}: the LR schedule spans {args.epochs} epochs; training stops after {stop}")
            args.epochs = stop
        return stock(args)

    create_loss.__wrapped__ = stock
    return create_loss


def wrap_get_latest_checkpoint(stock):
    def get_latest_checkpoint(path: str, remote: bool):
        found = stock(path, remote)
        if found is not None and not remote and not is_complete_checkpoint(found):
            found = newest_complete_checkpoint(path)
        return found

    get_latest_checkpoint.__wrapped__ = stock
    return get_latest_checkpoint


def wrap_create_model_and_transforms(stock):
    """Keeps the run's model (open_clip_train's first call; a distillation teacher comes second) for `pt_load`."""

    def create_model_and_transforms(model_name, *a, **kw):
        made = stock(model_name, *a, **kw)
        if _current["args"] is not None and _current["model"] is None:
            _current["model"] = made[0]
        return made

    create_model_and_transforms.__wrapped__ = stock
    return create_model_and_transforms


def load_checkpoint(file_path: str, map_location=None):
    """A checkpoint read as open_clip_train's pt_load reads it (local or fsspec URL), with `weights_only=True`
    whatever torch's default: a checkpoint that needs more than tensors and plain containers is refused."""
    import pickle

    import fsspec
    import torch

    try:
        with fsspec.open(file_path, "rb") as f:
            return torch.load(f, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{file_path}: not a checkpoint torch loads with weights_only=True ({reason[:200]})") from None


def wrap_pt_load(stock):
    def pt_load(file_path, map_location=None):
        checkpoint = load_checkpoint(file_path, map_location=map_location)
        args = _current["args"]
        if args is None or file_path != args.resume:
            return checkpoint
        if _current["model"] is not None and isinstance(checkpoint, dict):
            check_fits(checkpoint.get("state_dict", checkpoint) if "epoch" in checkpoint else checkpoint,
                       _current["model"], "--init-from" if file_path == args.init_from else "--resume", file_path)
        if file_path != args.init_from or not args.init_from_model_only:
            return checkpoint
        state = checkpoint.get("state_dict", checkpoint)  # a bare state dict: open_clip loads the model only
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        if args.distributed:
            state = {f"module.{k}": v for k, v in state.items()}
        return state

    pt_load.__wrapped__ = stock
    return pt_load


def check_fits(state: dict, model, flag: str, path: str) -> None:
    """One line where open_clip_train's strict `load_state_dict` would fail with pages of keys: the checkpoint's
    weights must be the model's, key for key and shape for shape (a `module.` prefix aside)."""

    def strip(keys_shapes):
        return {(k[len("module."):] if k.startswith("module.") else k): tuple(getattr(v, "shape", ()))
                for k, v in keys_shapes}

    have, want = strip(state.items()), strip(model.state_dict().items())
    missing = sorted(want.keys() - have.keys())
    unexpected = sorted(have.keys() - want.keys())
    shaped = sorted(k for k in want.keys() & have.keys() if want[k] != have[k])
    if not (missing or unexpected or shaped):
        return
    parts = [f"{len(keys)} {what}, e.g. {keys[0]}" for keys, what in
             ((missing, "missing"), (unexpected, "unexpected"), (shaped, "of another shape")) if keys]
    other = " or other --rocket heads" if any(k.startswith("rocket") for k in missing + unexpected + shaped) else ""
    raise UserError(f"{flag} {path}: its weights do not fit this run's model ({'; '.join(parts)}): "
                    f"it was trained with another --model{other}")
