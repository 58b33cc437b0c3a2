"""Training throughput of toy_tiny through the plugin vs stock open_clip_train, same data, same machine.

    python benchmarks/train_throughput.py [--samples 4000] [--epochs 2] [--repeats 2]
    python benchmarks/train_throughput.py --model ViT-B-32 --precision amp --batch-size 256 --workers 8  # on a GPU
    python benchmarks/train_throughput.py --rocket "--rocket cl2l --separate-proj --num-augs 2"  # clip-rocket

With --rocket FLAGS the plugin side trains with those flags (clip-rocket's views and heads), so the ratio is
what the views cost against plain CLIP training on the same shards and loader settings.

Each run is a fresh process; runs alternate stock/plugin. Prints median samples/s over the logged steps
(the first step of each epoch, which waits for the loader, is left out), the ratio plugin/stock and each
run's peak RSS (the larger of the training process's and its largest loader worker's: ru_maxrss of self and
children) and, on a GPU, torch's max_memory_allocated.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RUNNER = """
import json, resource, sys, open_clip
open_clip.add_model_config(sys.argv[2])
if sys.argv[1] != "stock":
    import open_clip_patch
    open_clip_patch.apply()
from open_clip_train.main import main
main(sys.argv[3:])
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
import torch
gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
print(json.dumps({"peak_rss_mb": peak / 1024, "gpu_peak_mb": gpu}))
"""
RATE = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/.*?, ([\d.]+)/s,")


def one_run(kind, pool, logs, name, epochs, a):
    from mode.core.shards import brace_spec, expand, total_samples
    from open_clip_patch import MODEL_CONFIG_DIR

    paths = expand(str(pool / "shards"))
    argv = ["--model", a.model, "--train-data", brace_spec(paths), "--train-num-samples",
            str(total_samples(paths)), "--dataset-type", "webdataset", "--batch-size", str(a.batch_size),
            "--epochs", str(epochs), "--workers", str(a.workers), "--precision", a.precision,
            "--log-every-n-steps", "5", "--logs", str(logs), "--name", name, "--seed", "0", "--save-frequency", "0"]
    if kind == "rocket":
        argv += a.rocket.split()
    out = subprocess.run([sys.executable, "-c", RUNNER, kind, str(MODEL_CONFIG_DIR), *argv],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} run {name} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    rates = [float(r) for done, r in RATE.findall((logs / name / "out.log").read_text()) if int(done) > a.batch_size]
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    return statistics.median(rates), peaks["peak_rss_mb"], peaks.get("gpu_peak_mb")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default="ViT-Toy-8")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--rocket", default=None, metavar="FLAGS",
                    help="compare stock with the plugin training with these --rocket flags")
    ap.add_argument("--pool-workers", type=int, default=1, help="processes that draw the toy pool (not timed)")
    args = ap.parse_args()
    from mode.toy.pool import ensure_pool

    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "pool"
        ensure_pool(str(pool), samples=args.samples, shards=args.shards, workers=args.pool_workers)
        other = "rocket" if args.rocket else "plugin"
        results = {"stock": [], other: []}
        for r in range(args.repeats):
            for kind in ("stock", other):
                rate, rss, gpu = one_run(kind, pool, Path(tmp) / "logs", f"{kind}{r}", args.epochs, args)
                results[kind].append((rate, rss))
                gpu = "" if gpu is None else f"  GPU max allocated {gpu:7.1f} MB"
                print(f"{kind:6s} run {r}: {rate:8.1f} samples/s  peak RSS {rss:7.1f} MB{gpu}", flush=True)
    stock = statistics.median(r for r, _ in results["stock"])
    plugin = statistics.median(r for r, _ in results[other])
    print(f"median samples/s: stock {stock:.1f}, {other} {plugin:.1f}; ratio {other}/stock {plugin / stock:.3f}")
    print(f"peak RSS MB (max over runs): stock {max(m for _, m in results['stock']):.0f}, "
          f"{other} {max(m for _, m in results[other]):.0f}")


if __name__ == "__main__":
    main()
