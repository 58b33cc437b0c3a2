"""Fault injection: each per-shard step is killed with SIGKILL at seeded random points of its writing (inside a
tar being written, before a file is published, between an output and its completion marker), twice in a row, then
run to the end: the outputs must be byte-identical to an uninterrupted run's."""

import json
import random
import shutil
import sys

import pytest

from mode.core.layout import WorkDir
from mode.datacomp import reshard

from .conftest import PYTHON, REPO, run
from .prep.test_prep import assert_same_outputs, data_files

# Runs `mode ARGV` and kills itself (SIGKILL, as the OOM killer or a preempted node does) just before its
# TARGET-th write event: a tar member added, a file synced, a file renamed into place. TARGET 0 never kills
# and prints the number of events to stderr.
HARNESS = """
import os, sys, tarfile
target, seen = int(sys.argv[1]), 0

def counted(fn):
    def wrapper(*args, **kwargs):
        global seen
        seen += 1
        if seen == target:
            os.kill(os.getpid(), 9)
        return fn(*args, **kwargs)
    return wrapper

os.replace, os.fsync = counted(os.replace), counted(os.fsync)
tarfile.TarFile.addfile = counted(tarfile.TarFile.addfile)
from mode.cli import main
code = main(sys.argv[2:])
print(f"EVENTS {seen}", file=sys.stderr)
sys.exit(code)
"""

# step -> the work-dir folders made by earlier steps (copied from the reference), the step's own flags
STEPS = {
    "captions": ((), []),
    "embed": (("captions",), []),
    "assign": (("captions", "features", "clusters"), []),
    "route": (("captions", "features", "clusters", "assign"), ["--ooc-ratio", "0.1", "--seed", "0"]),
}


def _harness(target: int, argv: list[str], cwd) -> tuple[int, str]:
    res = run([PYTHON, "-c", HARNESS, str(target), *map(str, argv)], cwd=cwd,
              env={"PYTHONPATH": str(REPO)})
    return res.returncode, res.stderr


@pytest.mark.parametrize("step", list(STEPS))
def test_per_shard_step_killed_twice_reruns_identical(step, toy_pool, toy_work, tmp_path):
    needs, flags = STEPS[step]
    argv = [step, "--shards", toy_pool, "--work-dir", tmp_path / "work", *flags]

    def fresh():
        shutil.rmtree(tmp_path / "work", ignore_errors=True)
        (tmp_path / "work").mkdir()
        for name in needs:
            shutil.copytree(toy_work / name, tmp_path / "work" / name)

    fresh()
    rc, err = _harness(0, argv, tmp_path)
    assert rc == 0, err[-2000:]
    events = int(err.rsplit("EVENTS ", 1)[1].split()[0])
    assert events >= 8  # a member per sample, a sync and a rename per file
    rng = random.Random(f"faults/{step}")
    fresh()
    first, second = rng.randint(1, events), rng.randint(1, events)
    rc, _ = _harness(first, argv, tmp_path)
    assert rc == -9  # killed where asked
    rc, err = _harness(second, argv, tmp_path)  # killed again, somewhere in the rerun (or it finishes)
    assert rc in (-9, 0), err[-2000:]
    rc, err = _harness(0, argv, tmp_path)
    assert rc == 0, err[-2000:]
    wd, ref = WorkDir(tmp_path / "work"), WorkDir(toy_work)
    step_dir = {"captions": "captions", "embed": "features", "assign": "assign", "route": "experts"}[step]
    assert_same_outputs(ref.root / step_dir, wd.root / step_dir)
    summary = wd.route_dir if step == "route" else wd.root / step_dir
    assert (summary / "summary.json").exists()


def test_reshard_killed_reruns_identical(toy_pool, tmp_path):
    from mode.cli import main

    assert main(["filter", "--name", "no_filter", "--metadata-dir", str(toy_pool / "metadata"), "--save-path",
                 str(tmp_path / "all.npy")]) == 0
    reshard.run(str(toy_pool), str(tmp_path / "reference"), str(tmp_path / "all.npy"), shard_size=150, workers=2)
    argv = ["reshard", "-i", toy_pool, "-o", tmp_path / "out", "-s", tmp_path / "all.npy", "--shard-size", "150",
            "-j", "2"]  # parts packed by byte copy (concat_tar)
    rc, err = _harness(0, argv, tmp_path)
    assert rc == 0, err[-2000:]
    events = int(err.rsplit("EVENTS ", 1)[1].split()[0])
    rng = random.Random("faults/reshard")
    for _ in range(2):
        shutil.rmtree(tmp_path / "out")
        rc, _ = _harness(rng.randint(1, events), argv, tmp_path)
        assert rc == -9
        rc, err = _harness(0, argv, tmp_path)  # an unfinished output is ours: a rerun redoes it
        assert rc == 0, err[-2000:]
        files = data_files(tmp_path / "reference")
        assert data_files(tmp_path / "out") == files
        for name in files:
            a, b = (tmp_path / "reference" / name), (tmp_path / "out" / name)
            if name.name in ("meta.json", ".mode-reshard"):  # the same but for their paths and timing
                a, b = (json.loads(p.read_text()) for p in (a, b))
                for d in (a, b):  # meta.json holds the output path and cwd: its size differs by their lengths
                    for key in ("seconds", "output_dir", "cwd"):
                        d.pop(key, None)
                    d.get("outputs", {}).pop("meta.json", None)
                assert a == b
            else:
                assert a.read_bytes() == b.read_bytes(), name


if sys.platform == "win32":  # SIGKILL
    pytestmark = pytest.mark.skip("POSIX signals")


def test_metadata_killed_twice_reruns_identical(toy_pool, tmp_path):
    """`mode metadata` killed at random write events, twice, then run to the end: the same parquet and npz bytes as
    an uninterrupted run (random small CLIP from tests/datacomp/d2m_tiny.py)."""
    tiny = REPO / "tests" / "datacomp" / "d2m_tiny.py"

    def argv(out):
        return ["metadata", "--models", "oai-clip-vit-b32", "--postprocess-columns", "oai-clip-vit-b32-score",
                "--postprocess-features", "oai-clip-vit-b32-image", "--additional-fields", "uid", "--batch-size",
                "64", "--device", "cpu", "--nworkers", "0", "--custom-pypath", tiny, "--input-tars",
                toy_pool / "shards", "--output-metadata-dir", out]

    env = {"PYTHONPATH": str(REPO), "D2M_TINY_DIR": str(tmp_path / "weights")}
    res = run([PYTHON, "-c", HARNESS, "0", *map(str, argv(tmp_path / "reference"))], cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    events = int(res.stderr.rsplit("EVENTS ", 1)[1].split()[0])
    rng = random.Random("faults/metadata")
    for target in (rng.randint(1, events), rng.randint(1, events), 0):
        res = run([PYTHON, "-c", HARNESS, str(target), *map(str, argv(tmp_path / "out"))], cwd=tmp_path, env=env)
        assert res.returncode in ((-9, 0) if target else (0,)), res.stderr[-2000:]
    made = sorted(p.name for p in (tmp_path / "out").glob("0*"))
    assert made == sorted(p.name for p in (tmp_path / "reference").glob("0*")) and len(made) == 8
    for name in made:
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
