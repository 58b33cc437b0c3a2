"""Train one run of a named recipe through open_clip_train with the plugin applied (in this process)."""

from __future__ import annotations

import logging

from mode.errors import UserError


def run(name: str, extra: list[str]) -> int:
    """Train recipe `name` with the user's flags `extra` appended (the last value wins); returns an exit code.

    Raises:
        UserError: unknown recipe, missing data, or a bad plugin flag.
    """
    import run_configs

    full_argv = run_configs.build_argv(name, list(extra))
    import open_clip_patch

    open_clip_patch.apply()
    # open_clip_train sets the root logger to INFO; keep torch's own INFO chatter (dynamo stats at exit) out
    logging.getLogger("torch").setLevel(logging.WARNING)
    from open_clip_train.main import main as train

    result = train(full_argv)
    if result == -1:
        raise UserError("open_clip_train refused to start (see its message above, e.g. an existing --name)")
    return 0
