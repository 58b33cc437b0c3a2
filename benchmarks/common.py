"""Helpers for the benchmarks: run a measurement in a fresh process and read back its numbers."""

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB.

    Linux's VmHWM belongs to this process's own address space; `ru_maxrss` is kept across fork+exec, so in a
    child started by a large parent it reports the parent's size. ru_maxrss (KiB) only where /proc is absent.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(script: str, *args: str) -> dict:
    """Run `python script --child args...` and return the JSON object its last stdout line holds."""
    out = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{script} --child {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(**numbers) -> None:
    """The child's answer: its numbers plus its peak RSS, as one JSON line."""
    print(json.dumps({**numbers, "peak_rss_mb": round(peak_rss_mb(), 1)}), flush=True)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False
