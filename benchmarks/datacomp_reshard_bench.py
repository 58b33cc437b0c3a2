"""`mode reshard` against DataComp's own `resharder.py`, run from a checkout of mlfoundations/datacomp with an
interpreter that has its requirements, both as whole processes on the same toy pool and subset, with the same
number of workers; both must write the same samples (keys and member bytes).

    git clone https://github.com/mlfoundations/datacomp /path/to/datacomp
    python -m venv dc && dc/bin/pip install pysimdjson cloudpathlib==0.13.0 img2dataset webdataset==0.2.31 \
        'opencv-python-headless<4.11' 'numpy<2'          # what resharder.py imports, at DataComp's pins
    python benchmarks/datacomp_reshard_bench.py --datacomp /path/to/datacomp --datacomp-python dc/bin/python \
        [--samples 20000] [--shards 16] [--workers 2] [--shard-size 1000] [--repeat 2]

The subset is DataComp's basic_filter over the pool (ours, with the packaged fastText model). DataComp's
resharder writes its samples in the order its workers finish them; ours in input order, so the outputs are
compared as sets of (key, member, sha256). Printed: seconds (median), samples/s, the ratio DataComp / ours
and the peak RSS of the largest process of each side.
"""

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

from common import REPO
from datacomp_filter_bench import checkout, timed


def contents(folder: Path) -> set[tuple[str, str, str]]:
    from mode.core.shards import iter_tar

    return {(key, ext, hashlib.sha256(data).hexdigest())
            for tar in sorted(folder.glob("*.tar")) for key, members in iter_tar(tar) for ext, data in members.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datacomp", required=True, help="a checkout of github.com/mlfoundations/datacomp")
    ap.add_argument("--datacomp-python", default=sys.executable, help="a Python with resharder.py's requirements")
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    datacomp = checkout(a.datacomp, "resharder.py")
    from mode.datacomp import filters
    from mode.toy.pool import ensure_pool

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pool = tmp / "pool"
        ensure_pool(str(pool), samples=a.samples, shards=a.shards, workers=2)
        subset = tmp / "basic.npy"
        filters.run("basic_filter", str(pool / "metadata"), str(subset),
                    filters.FilterParams(fasttext_model="packaged"), workers=2)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        sides = {
            "DataComp": lambda out: [a.datacomp_python, str(datacomp / "resharder.py"), "-i", str(pool / "shards"),
                                     "-o", str(out), "-s", str(subset), "-j", str(a.workers),
                                     "--shard-size", str(a.shard_size)],
            "ours": lambda out: [sys.executable, "-m", "mode", "reshard", "-i", str(pool / "shards"), "-o", str(out),
                                 "-s", str(subset), "-j", str(a.workers), "--shard-size", str(a.shard_size)],
        }
        runs = {name: [] for name in sides}
        for r in range(a.repeat):
            for name, cmd in sides.items():
                out = tmp / f"{name}{r}"
                out.mkdir()
                runs[name].append(timed(cmd(out), env))
        got = {name: contents(tmp / f"{name}0") for name in sides}
        if got["DataComp"] != got["ours"]:
            raise SystemExit(f"outputs differ: {len(got['DataComp'] - got['ours'])} members only in DataComp's, "
                             f"{len(got['ours'] - got['DataComp'])} only in ours")
        n = len({k for k, _, _ in got["ours"]})
        secs = {name: statistics.median(t for t, _ in v) for name, v in runs.items()}
        print(f"{a.samples} toy rows in {a.shards} shards; basic_filter subset: {n} samples written; "
              f"{a.workers} workers, shard size {a.shard_size}, {os.cpu_count()} CPUs")
        print("| side | seconds | samples/s | DataComp / ours | peak RSS |")
        print("|---|---|---|---|---|")
        for name, v in runs.items():
            print(f"| {name} | {secs[name]:.2f} | {n / secs[name]:,.0f} | "
                  f"{'**%.2fx**' % (secs['DataComp'] / secs['ours']) if name == 'ours' else ''} | "
                  f"{max(m for _, m in v):.0f} MB |")


if __name__ == "__main__":
    main()
