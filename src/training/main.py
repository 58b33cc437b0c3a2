"""Train with a named recipe through open_clip_train, with the plugin applied.

    torchrun --nproc_per_node N -- src/training/main.py NAME [open_clip_train or plugin flags...]

NAME is a recipe of run_configs.py; the flags after it are appended to the recipe's, so the last value wins.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run_configs.py and mode/, when not pip-installed

import run_configs  # noqa: E402
from mode.core.errors import UserError  # noqa: E402
from mode.train.recipe import run  # noqa: E402


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-"):
        print(f"usage: src/training/main.py NAME [flags]; NAME is one of: {', '.join(sorted(run_configs.RECIPES))}",
              file=sys.stderr)
        return 2
    try:
        return run(argv[0], argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
