"""DataCompDR loading: the reinforced loader vs the plain open_clip loader on the same shards.

    python benchmarks/dr_loader_bench.py [--samples 4000] [--num-augs 10] [--workers 1] [--format npz]

A toy pool reinforced by `mode dr-generate` (one ViT-Toy-8 teacher, 64-d, `--num-augs` stored augmentations,
5 synthetic captions, npz or pth.gz) is read through open_clip_train's `get_data` at the ViT-Toy-8 input size,
one pass each, each in its own process:

- plain: stock open_clip (decode, RandomResizedCrop via the model's train transform, tokenise);
- reinforced: `--dataset-reinforcement` (decode, replay one stored augmentation, tokenise caption and
  synthetic caption, decode and pick the teacher embeddings).

Prints samples/s, the ratio reinforced/plain and peak RSS.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

from common import Timer, in_child, report


def child(kind: str, shards: str, workers: int) -> None:
    import open_clip

    import open_clip_patch

    open_clip_patch.apply()
    import open_clip_train.data as oc_data
    import open_clip_train.main as oc_main

    argv = ["--dataset-type", "webdataset", "--batch-size", "64", "--workers", str(workers), "--data-dir", shards]
    if kind == "reinforced":
        argv += ["--dataset-reinforcement", "--dataset-reinforcement-config", "dr_augment_12m",
                 "--distill-logit-scale", "100"]
    args = oc_main.parse_args(argv)
    args.world_size, args.rank, args.distributed = 1, 0, False
    _, preprocess_train, preprocess_val = open_clip.create_model_and_transforms("ViT-Toy-8")
    tokenizer = open_clip.get_tokenizer("ViT-Toy-8")
    data = oc_data.get_data(args, (preprocess_train, preprocess_val), epoch=0, tokenizer=tokenizer)
    n = 0
    with Timer() as t:
        for batch in data["train"].dataloader:
            n += len(batch[0])
    report(seconds=round(t.seconds, 3), samples=n, samples_per_s=round(n / t.seconds, 1))


def main() -> None:
    if "--child" in sys.argv:
        _, _, kind, shards, workers = sys.argv
        return child(kind, shards, int(workers))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--num-augs", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--format", default="npz", choices=("npz", "pth.gz"))
    a = ap.parse_args()
    from dr import generate
    from mode.toy.pool import ensure_pool

    with tempfile.TemporaryDirectory() as tmp:
        pool, shards = str(Path(tmp) / "pool"), str(Path(tmp) / "dr")
        ensure_pool(pool, samples=a.samples, shards=8, workers=2)
        with Timer() as t:
            generate.run(str(Path(pool) / "shards"), shards, generate.GenerateConfig(
                num_augs=a.num_augs, fmt=a.format), workers=2)
        size = sum(os.path.getsize(p) for p in Path(shards).glob("*.tar")) / 2**20
        print(f"pool {a.samples} rows; dr-generate {t.seconds:.1f}s, {size:.0f} MB of shards "
              f"({a.num_augs} augmentations, {a.format})", flush=True)
        res = {}
        for kind in ("plain", "reinforced"):
            r = res[kind] = in_child(__file__, kind, shards, str(a.workers))
            print(f"{kind:10s}: {r['samples']:6d} samples in {r['seconds']:6.2f}s = {r['samples_per_s']:7.1f}/s, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    print(f"reinforced / plain samples/s: {res['reinforced']['samples_per_s'] / res['plain']['samples_per_s']:.2f}")


if __name__ == "__main__":
    main()
