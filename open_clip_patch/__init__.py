"""The plugin into open_clip_train: `apply()` installs the project's additions, once.

What apply() changes, and nothing else:

- `open_clip_train.main.parse_args` also reads the plugin's flags (`open_clip_patch.params`); with none of
  them given, it returns what stock parse_args returns, plus the plugin's attributes set to None. Flags must be
  written whole: stock's parser takes `--batch 8` for `--batch-size 8`, and a recipe's `--batch-size` (matched
  by its whole name) would silently win over it, so abbreviations are refused (argparse's own error).
- `open_clip_train.zero_shot.accuracy` works under numpy 2 (stock 3.3.0 raises TypeError there).
- `open_clip_train.data.get_wds_dataset` shuffles training samples with a generator seeded by `--seed`, the
  epoch, the rank and the loader worker (`open_clip_patch.seeded`; stock seeds it from the clock, so one seed
  gave different batches run to run); sizes, shard order and everything else are stock.
- `open_clip_train.data.get_wds_dataset` keeps only expert K's pairs when `--mode-work-dir W --expert K` is
  given (`open_clip_patch.data`); otherwise it is the stock function, called as is.
- `open_clip_train.main.get_latest_checkpoint` skips a newest checkpoint that a kill left half-written (stock
  open_clip writes `epoch_K.pt` in place, and `--resume latest` then crashes on it). With `--init-from CKPT`,
  parse_args sets `--resume` to CKPT when the run has no checkpoint of its own (with or without
  `--save-most-recent`), and `pt_load` strips CKPT to its weights with `--init-from-model-only` and checks that
  the checkpoint `--resume`/`--init-from` loads fits the model `create_model_and_transforms` made (one line,
  where stock's strict load prints pages of keys); with
  `--stop-epoch E`, `create_loss` (called once, after the LR schedule is made) ends the epoch loop after E
  (`open_clip_patch.init_from`).
- with `--dataset-reinforcement` (DataCompDR), `get_wds_dataset` builds its training pipeline with the
  reinforced stages (`open_clip_patch.dr_data`), `create_loss` returns `DRClipLoss` (`open_clip_patch.loss`)
  and `train_one_epoch` gets a loader and model that carry synthetic captions and teacher embeddings
  (`open_clip_patch.dr_train`); without the flag all three are the stock functions, called as is.
- with `--rocket OBJ` (clip-rocket), `get_wds_dataset` makes each training sample's image and caption views
  (`open_clip_patch.rocket_data`), `create_model_and_transforms` adds the rocket heads to the model
  (`open_clip_patch.rocket_model`), `create_loss` returns `RocketLoss` and `train_one_epoch` gets an optimizer
  hook for the views' logit-scale clamp and BYOLIP's momentum update (`open_clip_patch.rocket_train`); without
  the flag all four are the stock functions, called as is.
- the tiny model configs in `open_clip_patch/model_configs/` are registered with open_clip.
- `torch.nn.parallel.DistributedDataParallel`, which open_clip_train calls with `device_ids=[device]` even
  when the device is the CPU (torch refuses that), drops CPU device ids, so `torchrun` on CPU (gloo) trains.
  With GPUs it is torch's own class, unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from importlib import metadata
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from mode.core.errors import UserError

SUPPORTED_OPEN_CLIP = ">=3.3,<3.4"  # setup.cfg's install_requires says the same (a test checks)
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_MARK = "__mode_patched__"


def check_version(installed: str | None = None) -> str:
    """Raise UserError unless the installed open_clip_torch is in the supported range; return its version."""
    if installed is None:
        try:
            installed = metadata.version("open_clip_torch")
        except metadata.PackageNotFoundError:
            raise UserError(f"open_clip_torch is not installed; pip install 'open_clip_torch{SUPPORTED_OPEN_CLIP}'")
    if Version(installed) not in SpecifierSet(SUPPORTED_OPEN_CLIP):
        raise UserError(f"open_clip_torch {installed} is not supported by this plugin (needs {SUPPORTED_OPEN_CLIP}); "
                        f"pip install 'open_clip_torch{SUPPORTED_OPEN_CLIP}'")
    return installed


def model_names() -> list[str]:
    """The names of the model configs this plugin ships."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def is_applied() -> bool:
    import open_clip_train.main as oc_main

    return getattr(oc_main.parse_args, _MARK, False)


def apply() -> None:
    """Install the plugin into open_clip_train; a second call changes nothing."""
    check_version()
    import open_clip
    import open_clip_train.data as oc_data
    import open_clip_train.main as oc_main
    import open_clip_train.zero_shot as oc_zero_shot
    import torch

    from open_clip_patch import (
        data,
        dr_data,
        dr_train,
        init_from,
        params,
        preflight,
        rocket_data,
        rocket_train,
        seeded,
        zero_shot,
    )

    if not set(model_names()) <= set(open_clip.list_models()):
        open_clip.add_model_config(MODEL_CONFIG_DIR)
    if is_applied():
        return
    oc_main.parse_args = _wrap_parse_args(oc_main.parse_args, params)
    oc_zero_shot.accuracy = zero_shot.accuracy
    get_wds = seeded.wrap_get_wds_dataset(oc_data.get_wds_dataset, oc_data)
    get_wds = dr_data.wrap_get_wds_dataset(data.wrap_get_wds_dataset(get_wds, oc_data), oc_data)
    oc_data.get_wds_dataset = rocket_data.wrap_get_wds_dataset(get_wds, oc_data)
    oc_main.create_loss = init_from.wrap_create_loss(
        rocket_train.wrap_create_loss(dr_train.wrap_create_loss(oc_main.create_loss)))
    oc_main.train_one_epoch = rocket_train.wrap_train_one_epoch(dr_train.wrap_train_one_epoch(oc_main.train_one_epoch))
    oc_main.create_model_and_transforms = init_from.wrap_create_model_and_transforms(
        rocket_train.wrap_create_model_and_transforms(oc_main.create_model_and_transforms))
    oc_main.get_latest_checkpoint = init_from.wrap_get_latest_checkpoint(oc_main.get_latest_checkpoint)
    oc_main.pt_load = init_from.wrap_pt_load(oc_main.pt_load)
    oc_main.get_data = preflight.wrap_get_data(oc_main.get_data)
    torch.nn.parallel.DistributedDataParallel = _cpu_friendly_ddp(torch.nn.parallel.DistributedDataParallel)


def _wrap_parse_args(stock_parse_args, params):
    @functools.wraps(stock_parse_args)
    def parse_args(argv):
        plugin_args, rest = params.split_argv(argv)
        with _whole_flag_names():
            args = stock_parse_args(rest)
        args = params.resolve(args, plugin_args, argv)
        from open_clip_patch.init_from import set_current

        set_current(args)
        return args

    setattr(parse_args, _MARK, True)
    return parse_args


@contextlib.contextmanager
def _whole_flag_names():
    """Parsers made inside the block refuse abbreviated flags (open_clip_train builds its parser per call)."""
    init = argparse.ArgumentParser.__init__

    @functools.wraps(init)
    def whole_names(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        init(self, *args, **kwargs)

    argparse.ArgumentParser.__init__ = whole_names
    try:
        yield
    finally:
        argparse.ArgumentParser.__init__ = init


def _cpu_friendly_ddp(ddp_cls):
    class DistributedDataParallel(ddp_cls):
        """torch's DDP, but `device_ids` naming only CPU devices is dropped (torch wants None for CPU modules)."""

        def __init__(self, module, device_ids=None, *args, **kwargs):
            if device_ids is not None and all(torch_device(d).type == "cpu" for d in device_ids):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    def torch_device(d):
        import torch

        return torch.device(d) if not isinstance(d, int) else torch.device("cuda", d)

    DistributedDataParallel.__qualname__ = ddp_cls.__qualname__
    return DistributedDataParallel
