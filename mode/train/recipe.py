"""Train one run of a named recipe through open_clip_train with the plugin applied (in this process)."""

from __future__ import annotations

import logging

from mode.core.errors import UserError


def run(name: str, extra: list[str]) -> int:
    """Train recipe `name` with the user's flags `extra` appended (the last value wins); returns an exit code.

    Raises:
        UserError: unknown recipe, missing data, or a bad plugin flag.
    """
    import run_configs

    full_argv = run_configs.build_argv(name, list(extra))
    import open_clip_patch

    open_clip_patch.apply()
    from open_clip_train.main import main as train

    try:
        result = train(full_argv)
    finally:
        _quiet_torch()
    if result == -1:
        raise UserError("open_clip_train refused to start (see its message above, e.g. an existing --name)")
    return 0


def _quiet_torch() -> None:
    """open_clip_train sets every logger to INFO, so torch would print dynamo statistics at exit; undo that."""
    for name in list(logging.root.manager.loggerDict):
        if name == "torch" or name.startswith("torch."):
            logging.getLogger(name).setLevel(logging.WARNING)
