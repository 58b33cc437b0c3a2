"""`mode evaluate` of K checkpoints in one call against DataComp's own evaluation code run on each of them.

    git clone https://github.com/mlfoundations/datacomp /path/to/datacomp
    python -m venv dc && dc/bin/pip install torch torchvision open-clip-torch==3.3.0 webdataset==0.2.31 \
        scikit-learn tqdm requests pyyaml cloudpathlib==0.13.0 huggingface-hub==0.11.0 datasets==2.8.0 \
        'pyarrow<15' 'numpy<2' 'pandas<2.2' wilds==2.0.0            # what evaluate.py imports
    dc/bin/pip install --no-deps clip-benchmark==1.4.0                # DataComp's pin (its metadata asks torch<2)
    python benchmarks/evaluate_bench.py --datacomp /path/to/datacomp --datacomp-python dc/bin/python \
        [--experts 4] [--model ViT-Toy-8] [--eval-per-class 100] [--no-separate]

A toy pool's three evaluation tasks (6-8 classes, `--eval-per-class` images each, in clip_benchmark's
webdataset format) and K checkpoints of one architecture (seeded random initialisations saved as open_clip
checkpoints: the cost of evaluating does not depend on the weights). Every side runs as whole processes, as a
user runs it, each timed with its process start:

- DataComp: `python evaluate.py --use_model "MODEL CKPT" --data_dir D --output_dir O` once per checkpoint, from
  a copy of the checkout (evaluate.py -> eval_utils/main.py -> eval_utils/wds_eval.py -> clip_benchmark 1.4.0's
  wds dataset and zero-shot classifier; its defaults: batch size 64, 4 DataLoader workers, the model loaded
  again for every task, float32);
- ours: one `mode evaluate` with K `--model` flags;
- (ours vs ours, unless --no-separate) K `mode evaluate` calls with one `--model` each; their logits must equal
  the shared call's.

Printed: seconds, the ratio DataComp / ours, the peak RSS of the largest process of each side (largest call),
and the metric agreement: for every model and task, DataComp's acc1, acc5 and mean_per_class_recall against
ours (max abs difference, and how many differ).

DataComp's code runs from the copy with only what running it offline on these tasks needs, nothing that changes
what it computes:
- PATCH 1: the copy's tasklist.yml lists the three toy tasks (key, name, size, main metric acc1) instead of
  DataComp's 40, which are not here; evaluate.py loops over that file and routes each key as before (a key
  without a `retrieval/`, `wilds/`, `fairness/` or `misc/` prefix goes to evaluate_webdataset). The tasks'
  folders are linked into a data dir under the names create_webdataset expects (`wds_<key>_test`).
- PATCH 2: a `sitecustomize.py` first on its PYTHONPATH registers the project's tiny model configs with
  open_clip (`open_clip.add_model_config`, what ours does too) when --model is one of them; for a stock
  architecture (ViT-B-32) it does nothing.
open_clip_torch is 3.3.0 on both sides, not DataComp's 2.16.1: 2.16.1's get_tokenizer ignores a config's
context length (77 tokens for ViT-Toy-8's 32) and cannot run the toy models, and one open_clip on both sides
makes the metrics comparable to the last digit. torch is this machine's 2.14.1, not DataComp's 1.13.0.
"""

import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO, in_child, report
from datacomp_filter_bench import checkout
from datacomp_filter_bench import timed as timed_process

SITECUSTOMIZE = '''
import os
if os.environ.get("BENCH_OPEN_CLIP_CONFIGS"):
    import open_clip
    open_clip.add_model_config(os.environ["BENCH_OPEN_CLIP_CONFIGS"])
'''
METRICS = ("acc1", "acc5", "mean_per_class_recall")


def make_inputs(root: Path, experts: int, model: str, eval_per_class: int) -> tuple[Path, list[tuple[str, Path]]]:
    import open_clip
    import torch

    import open_clip_patch
    from mode.toy.pool import ensure_pool

    ensure_pool(str(root / "pool"), samples=200, shards=1, seed=0, eval_per_class=eval_per_class)
    open_clip_patch.apply()
    checkpoints = []
    for k in range(experts):
        torch.manual_seed(k)
        net = open_clip.create_model(model)
        path = root / f"expert_{k}.pt"
        torch.save({"epoch": 1, "state_dict": net.state_dict()}, path)
        checkpoints.append((f"expert_{k}", path))
    return root / "pool" / "eval_tasks", checkpoints


def datacomp_setup(src: Path, root: Path, tasks: Path, model: str) -> tuple[Path, Path, dict]:
    """A copy of the checkout with the toy tasks as its tasklist (PATCH 1), a data dir laid out as
    download_evalsets.py lays it, and the environment for its processes (PATCH 2)."""
    from mode.evaluation.tasks import find_tasks, local_name

    code = root / "datacomp"
    shutil.copytree(src, code, ignore=shutil.ignore_patterns(".git"))
    data = root / "datacomp_data"
    data.mkdir()
    lines = []
    for task in find_tasks(tasks):
        (data / local_name(task.key)).symlink_to(task.path.resolve(), target_is_directory=True)
        size = sum(1 for _ in tarfile.open(task.path / "test" / "0.tar")) // 2
        lines += [f"{task.key}:", f"  name: {task.key}", f"  size: {size}", "  main_metric: acc1", "  tags: []", ""]
    (code / "tasklist.yml").write_text("---\n\n" + "\n".join(lines))
    site = root / "datacomp_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": str(site)}
    configs = REPO / "open_clip_patch" / "model_configs"
    if (configs / f"{model}.json").is_file():
        env["BENCH_OPEN_CLIP_CONFIGS"] = str(configs)
    return code, data, env


def timed_ours(args: list[str]) -> tuple[float, float, float | None]:
    """(wall seconds including the process start, as a user pays it; peak RSS MB; on a GPU torch's peak allocated
    MB) of one `mode evaluate` call."""
    start = time.perf_counter()
    r = in_child(__file__, *args)
    return time.perf_counter() - start, r["peak_rss_mb"], r.get("gpu_peak_mb")


def child(args: list[str]) -> None:
    import torch

    from mode.cli import main

    main(["evaluate", *args])
    report(gpu_peak_mb=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None)


def read_results(path: Path) -> dict[str, dict]:
    return {r["key"]: r["metrics"] for r in map(json.loads, path.read_text().splitlines())}


def main() -> None:
    if "--child" in sys.argv:
        return child(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datacomp", help="a checkout of github.com/mlfoundations/datacomp (the baseline; without it "
                                       "only ours vs ours is timed)")
    ap.add_argument("--datacomp-python", default=sys.executable,
                    help="a Python with evaluate.py's requirements and clip_benchmark 1.4.0")
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--model", default="ViT-Toy-8")
    ap.add_argument("--eval-per-class", type=int, default=100)
    ap.add_argument("--no-separate", action="store_true", help="skip the K separate `mode evaluate` calls")
    a = ap.parse_args()
    datacomp = checkout(a.datacomp, "eval_utils/wds_eval.py") if a.datacomp else None
    if datacomp is None and a.no_separate:
        sys.exit("nothing to compare: pass --datacomp, or leave out --no-separate")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tasks, checkpoints = make_inputs(root, a.experts, a.model, a.eval_per_class)
        n_images = sum(1 for p in tasks.glob("*/test/*.tar") for _ in tarfile.open(p)) // 2
        base = ["--tasks", str(tasks)]
        specs = [f"{label}={a.model}:{path}" for label, path in checkpoints]
        sides = {}  # name: (calls, seconds, peak RSS MB, GPU MB)
        if datacomp:
            code, data, env = datacomp_setup(datacomp, root, tasks, a.model)
            seconds, rss = 0.0, 0.0
            for label, path in checkpoints:
                s, r = timed_process([a.datacomp_python, str(code / "evaluate.py"), "--use_model",
                                      f"{a.model} {path}", "--train_output_dir", str(root / "dc" / label),
                                      "--output_dir", str(root / "dc" / label), "--data_dir", str(data)], env)
                seconds, rss = seconds + s, max(rss, r)
            sides["DataComp evaluate.py, one model per call"] = (len(checkpoints), seconds, rss, None)
        shared = timed_ours([*base, "--out", str(root / "shared"), *[x for s in specs for x in ("--model", s)]])
        sides[f"ours, {len(specs)} models in one `mode evaluate`"] = (1, *shared)
        if not a.no_separate:
            seconds, rss, gpu = 0.0, 0.0, None
            for spec in specs:
                s, r, g = timed_ours([*base, "--out", str(root / "separate"), "--model", spec])
                seconds, rss = seconds + s, max(rss, r)
                gpu = g if gpu is None else max(gpu, g)
            sides["ours, one `mode evaluate` per model (ours vs ours)"] = (len(specs), seconds, rss, gpu)
            for f in sorted((root / "shared").glob("*/*.npz")):
                other = np.load(root / "separate" / f.parent.name / f.name)
                assert np.array_equal(np.load(f)["logits"], other["logits"]), f
        agreement = None
        if datacomp:
            diffs, differ, compared = [], [], 0
            for label, _ in checkpoints:
                theirs = read_results(root / "dc" / label / "eval_results.jsonl")
                ours = read_results(root / "shared" / label / "eval_results.jsonl")
                if set(theirs) != set(ours):
                    sys.exit(f"{label}: DataComp scored tasks {sorted(theirs)}, ours {sorted(ours)}")
                for key in sorted(ours):
                    for m in METRICS:
                        t, o = theirs[key][m], ours[key][m]
                        compared += 1
                        diffs.append(abs(t - o))
                        if t != o:
                            differ.append(f"{label} {key} {m}: DataComp {t:.6f}, ours {o:.6f}")
            agreement = (compared, max(diffs), differ)

    print(f"{a.experts} x {a.model} on {n_images} images in 3 tasks; {os.cpu_count()} CPUs, load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    ours_s = shared[0]
    print("| side | calls | seconds | / ours | peak RSS (largest process) |")
    print("|---|---|---|---|---|")
    for name, (calls, s, rss, _) in sides.items():
        print(f"| {name} | {calls} | {s:.2f} | {s / ours_s:.2f}x | {rss:.0f} MB |")
    if any(g is not None for *_, g in sides.values()):
        print("GPU max allocated MB: " + ", ".join(f"{n}: {g:.0f}" for n, (*_, g) in sides.items() if g is not None))
    if datacomp:
        name = next(iter(sides))
        print(f"time DataComp / ours: {sides[name][1] / ours_s:.2f}x")
        compared, worst, differ = agreement
        print(f"metrics ({', '.join(METRICS)}), {a.experts} models x 3 tasks: {compared} compared, "
              f"{len(differ)} differ, max abs difference {worst:.3g}")
        for line in differ:
            print("  " + line)
    if not a.no_separate:
        print("ours: one call's logits identical to the separate calls'")
    if not datacomp:
        print("ours vs ours only: pass --datacomp (and --datacomp-python) to time the baseline (DataComp evaluate.py)")


if __name__ == "__main__":
    main()
