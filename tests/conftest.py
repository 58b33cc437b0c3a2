import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests never reach a hub: everything they load ships in a package or is made by mode.toy.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SMALL_POOL = {"samples": 600, "shards": 4, "seed": 0, "eval_per_class": 4}


@pytest.fixture(scope="session")
def toy_pool(tmp_path_factory) -> Path:
    """A small toy pool shared by the session's tests (read-only for them)."""
    from mode.toy import ensure_pool

    out = tmp_path_factory.mktemp("toy") / "pool"
    ensure_pool(str(out), **SMALL_POOL)
    return out


def run(cmd: list[str], cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's environment; returns the completed process (text output)."""
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")])
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


PYTHON = sys.executable
