"""The step protocol of the `mode` command: every step is a module with add_arguments and main, listed once."""

import importlib
import subprocess
import sys

from mode.cli import STEPS, build_parser

from .conftest import REPO


def test_every_step_module_follows_the_protocol():
    names = [s.name for s in STEPS]
    assert len(names) == len(set(names))
    for step in STEPS:
        module = importlib.import_module(step.module)
        assert callable(module.add_arguments) and callable(module.main), step.module
        assert step.help and step.reads and step.writes
    parser = build_parser()  # all steps at once: no flag clashes inside a step
    args = parser.parse_args(["cluster", "--shards", "S", "--work-dir", "W", "--fine", "8", "--coarse", "2"])
    assert args.func.__module__ == "mode.prep.cluster" and (args.fine, args.coarse, args.niter) == (8, 2, 20)
    args = parser.parse_args(["reshard", "-i", "I", "-o", "O", "-s", "S.npy"])
    assert args.func.__module__ == "mode.datacomp.reshard" and args.shard_size == 10000


def test_only_the_chosen_step_is_imported():
    """`mode --help` and `mode filter ...` never import torch or the other steps' modules."""
    code = ("import sys\nfrom mode.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'mode.prep.embed', 'dr.generate', 'mode.datacomp.filters') "
            "if m in sys.modules))")
    for argv, loaded in ((["--help"], "[]"), (["filter", "--help"], "['mode.datacomp.filters']")):
        res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO)
        assert res.stdout.strip().splitlines()[-1] == loaded, res.stdout + res.stderr


def test_a_filter_run_imports_neither_torch_nor_pandas(toy_pool, tmp_path):
    """Reading ranks from the environment once imported torch through open_clip_train (1.2 s and 600 MB per
    process), and pq.read_table pandas: a filter run needs neither."""
    code = ("import sys\nfrom mode.cli import main\nmain(sys.argv[1:])\n"
            "print(sorted(m for m in ('torch', 'pandas', 'open_clip_train') if m in sys.modules))")
    argv = ["filter", "--name", "no_filter", "--metadata-dir", str(toy_pool / "metadata"), "--save-path",
            str(tmp_path / "all.npy")]
    res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO)
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stdout + res.stderr
