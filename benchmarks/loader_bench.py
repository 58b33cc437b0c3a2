"""Expert data loading: routed shards and on-the-fly filtering vs the stock open_clip loader on the same pool.

    python benchmarks/loader_bench.py [--samples 20000] [--workers 1]

One toy pool, clustered into 3 experts (`run_mode.sh prep-steps`, FINE=64 COARSE=3, 2% out-of-cluster); the
largest expert is loaded three ways through open_clip_train's `get_data` with the ViT-Toy-8 preprocessing
(decode, resize, normalise, tokenise), one pass each, each in its own process:

- stock: the whole pool, no filter (what a dense run reads);
- routed: `W/experts/K/shards` written by `mode route` (`--expert-data routed`);
- on the fly: the whole pool, keeping expert K's pairs (`--mode-work-dir W --expert K --ooc-ratio 0.02`).

Prints samples/s (kept samples) and tar bytes read per kept sample.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, Timer, in_child, report


def child(kind: str, pool: str, work: str, expert: int, workers: int) -> None:
    import open_clip

    import open_clip_patch

    open_clip_patch.apply()
    import open_clip_train.data as oc_data
    import open_clip_train.main as oc_main

    common = ["--dataset-type", "webdataset", "--batch-size", "64", "--workers", str(workers)]
    if kind == "stock":
        argv = ["--data-dir", pool]
        spec = pool
    elif kind == "routed":
        argv = ["--mode-work-dir", work, "--expert", str(expert), "--expert-data", "routed"]
        spec = str(Path(work) / "experts" / str(expert) / "shards")
    else:
        argv = ["--data-dir", pool, "--mode-work-dir", work, "--expert", str(expert), "--ooc-ratio", "0.02"]
        spec = pool
    args = oc_main.parse_args(common + argv)
    args.world_size, args.rank, args.distributed = 1, 0, False
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-Toy-8")
    tokenizer = open_clip.get_tokenizer("ViT-Toy-8")
    data = oc_data.get_data(args, (preprocess, preprocess), epoch=0, tokenizer=tokenizer)
    from mode.core.shards import expand

    tar_bytes = sum(os.path.getsize(p) for p in expand(spec))
    n = 0
    with Timer() as t:
        for images, _ in data["train"].dataloader:
            n += len(images)
    report(seconds=round(t.seconds, 3), samples=n, samples_per_s=round(n / t.seconds, 1),
           bytes_per_sample=round(tar_bytes / max(n, 1)))


def main() -> None:
    if "--child" in sys.argv:
        _, _, kind, pool, work, expert, workers = sys.argv
        return child(kind, pool, work, int(expert), int(workers))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    from mode.toy.pool import ensure_pool

    with tempfile.TemporaryDirectory() as tmp:
        pool, work = str(Path(tmp) / "pool"), str(Path(tmp) / "work")
        ensure_pool(pool, samples=a.samples, shards=16, workers=2)
        subprocess.run(["bash", str(REPO / "run_mode.sh"), "prep-steps", pool, work], check=True,
                       env={**os.environ, "FINE": "64", "COARSE": "3", "OOC_RATIO": "0.02"}, capture_output=True)
        counts = json.loads((Path(work) / "assign" / "summary.json").read_text())["counts"]["coarse"]
        expert = max(range(len(counts)), key=counts.__getitem__)
        print(f"pool {a.samples} rows, experts {counts}; loading expert {expert}", flush=True)
        res = {}
        for kind in ("stock", "routed", "filter"):
            r = res[kind] = in_child(__file__, kind, pool, work, str(expert), str(a.workers))
            print(f"{kind:7s}: {r['samples']:6d} samples in {r['seconds']:6.2f}s = {r['samples_per_s']:7.1f}/s, "
                  f"{r['bytes_per_sample']:6d} tar bytes read per kept sample, peak RSS {r['peak_rss_mb']:.0f} MB",
                  flush=True)
    for kind in ("routed", "filter"):
        print(f"{kind} / stock samples/s: {res[kind]['samples_per_s'] / res['stock']['samples_per_s']:.2f}; "
              f"bytes per kept sample {res[kind]['bytes_per_sample'] / res['stock']['bytes_per_sample']:.2f}x stock's")


if __name__ == "__main__":
    main()
