"""`mode evaluate` with K experts at once (each image decoded and preprocessed once) vs K separate evaluations.

    python benchmarks/evaluate_bench.py [--experts 4] [--model ViT-Toy-8] [--eval-per-class 100]

A toy pool's three evaluation tasks (6-8 classes, `--eval-per-class` images each) and K checkpoints of the same
architecture (seeded random initialisations saved as open_clip checkpoints: the cost of evaluating does not
depend on the weights). Both sides run `python -m mode evaluate` as a user would, each in a fresh process:
one call with K `--model` flags, against K calls with one each (their times added, their peak RSS the
largest). The logits of both sides are compared, so the speed-up is not bought with other results.
"""

import argparse
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from common import in_child, report


def make_inputs(root: Path, experts: int, model: str, eval_per_class: int) -> tuple[Path, list[str]]:
    import open_clip
    import torch

    import open_clip_patch
    from mode.toy.pool import ensure_pool

    ensure_pool(str(root / "pool"), samples=200, shards=1, seed=0, eval_per_class=eval_per_class)
    open_clip_patch.apply()
    specs = []
    for k in range(experts):
        torch.manual_seed(k)
        net = open_clip.create_model(model)
        path = root / f"expert_{k}.pt"
        torch.save({"epoch": 1, "state_dict": net.state_dict()}, path)
        specs.append(f"expert_{k}={model}:{path}")
    return root / "pool" / "eval_tasks", specs


def timed(args: list[str]) -> tuple[float, float, float | None]:
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


def main() -> None:
    if "--child" in sys.argv:
        return child(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--model", default="ViT-Toy-8")
    ap.add_argument("--eval-per-class", type=int, default=100)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tasks, specs = make_inputs(root, a.experts, a.model, a.eval_per_class)
        n_images = sum(1 for p in tasks.glob("*/test/*.tar") for _ in tarfile.open(p)) // 2
        base = ["--tasks", str(tasks)]
        separate_s, separate_rss, separate_gpu = 0.0, 0.0, None
        for spec in specs:
            s, rss, gpu = timed([*base, "--out", str(root / "separate"), "--model", spec])
            separate_s, separate_rss = separate_s + s, max(separate_rss, rss)
            separate_gpu = gpu if separate_gpu is None else max(separate_gpu, gpu)
        shared_s, shared_rss, shared_gpu = timed([*base, "--out", str(root / "shared"),
                                                  *[x for spec in specs for x in ("--model", spec)]])
        for f in sorted((root / "shared").glob("*/*.npz")):
            other = np.load(root / "separate" / f.parent.name / f.name)
            assert np.array_equal(np.load(f)["logits"], other["logits"]), f
    print(f"{a.experts} x {a.model} on {n_images} images in 3 tasks")
    print(f"separate: {a.experts} calls  {separate_s:7.2f}s  peak RSS {separate_rss:6.0f} MB (largest call)")
    print(f"shared:   1 call   {shared_s:7.2f}s  peak RSS {shared_rss:6.0f} MB")
    if shared_gpu is not None:
        print(f"GPU max allocated MB: separate {separate_gpu:.0f} (largest call), shared {shared_gpu:.0f}")
    print(f"time shared/separate {shared_s / separate_s:.2f}x; logits identical")


if __name__ == "__main__":
    main()
