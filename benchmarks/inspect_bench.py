"""`mode inspect` vs the script a researcher writes to see a clustering's images, each in its own process.

    python benchmarks/inspect_bench.py [--samples 10000] [--shards 8] [--fine 64] [--coarse 4] [--repeats 2]

One toy pool and its prep steps (not timed). Ours: `mode inspect` into a fresh folder (the whole site: sample,
captions, thumbnails, pages). Baseline: the plain loop, reading every sample of every shard with webdataset
(`decode("pil")`), looking its key up in the assignment, and writing a thumbnail for the first 24 pairs of each
expert and 6 of each fine cluster (the same counts; the site's sample is seeded instead, so the images differ).
Prints seconds, the ratio baseline/ours (> 1: ours is faster) and each side's peak RSS; the best of
`--repeats` runs counts.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from common import Timer, in_child, report


def baseline(work: str, shards: str, out: str, per_expert: int = 24, per_fine: int = 6) -> int:
    import pyarrow.parquet as pq
    import webdataset as wds

    from mode.core.shards import expand

    cluster = {}
    for path in sorted(Path(work, "assign").glob("*.parquet")):
        t = pq.read_table(path, columns=["key", "fine", "coarse"]).to_pydict()
        cluster.update({(path.stem, k): (f, c) for k, f, c in zip(t["key"], t["fine"], t["coarse"])})
    shown_coarse, shown_fine, written = {}, {}, 0
    Path(out).mkdir(parents=True)
    for sample in wds.WebDataset(expand(shards), shardshuffle=False).decode("pil"):
        shard = Path(sample["__url__"]).stem
        fine, coarse = cluster[(shard, sample["__key__"])]
        if shown_coarse.get(coarse, 0) >= per_expert and shown_fine.get(fine, 0) >= per_fine:
            continue
        shown_coarse[coarse] = shown_coarse.get(coarse, 0) + 1
        shown_fine[fine] = shown_fine.get(fine, 0) + 1
        image = next(sample[e] for e in ("jpg", "jpeg", "png", "webp") if e in sample).convert("RGB")
        image.thumbnail((112, 112))
        image.save(Path(out) / f"{shard}_{sample['__key__']}.jpg", quality=80)
        written += 1
    return written


def child(kind: str, work: str, shards: str, out: str) -> None:
    with Timer() as t:
        if kind == "ours":
            from mode.evaluation.inspect_site import run

            run(work, shards, out)
            n = len(list(Path(out, "thumbs").rglob("*.jpg")))
        else:
            n = baseline(work, shards, out)
    report(seconds=t.seconds, thumbnails=n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=4, metavar=("KIND", "WORK", "SHARDS", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--fine", type=int, default=64)
    ap.add_argument("--coarse", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    if a.child:
        return child(*a.child)
    from mode.prep import assign, captions, cluster, embed
    from mode.prep.cluster import ClusterConfig
    from mode.toy.pool import ensure_pool

    with tempfile.TemporaryDirectory() as tmp:
        pool, work = Path(tmp) / "pool", Path(tmp) / "work"
        ensure_pool(str(pool), samples=a.samples, shards=a.shards, workers=2)
        shards = str(pool / "shards")
        captions.run(shards, str(work), 0, 1)
        embed.run(shards, str(work), rank=0, world_size=1)
        cluster.run(shards, str(work), ClusterConfig(fine=a.fine, coarse=a.coarse, seed=0), world_size=1)
        assign.run(shards, str(work), 0, 1)
        best = {}
        for r in range(a.repeats):
            for kind in ("baseline", "ours"):
                out = Path(tmp) / f"{kind}{r}"
                res = in_child(__file__, kind, str(work), shards, str(out))
                shutil.rmtree(out)
                print(f"{kind:8s} run {r}: {res['seconds']:6.2f} s, {res['thumbnails']} thumbnails, "
                      f"peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
                if kind not in best or res["seconds"] < best[kind]["seconds"]:
                    best[kind] = res
    b, o = best["baseline"], best["ours"]
    print(f"best: baseline {b['seconds']:.2f} s, ours {o['seconds']:.2f} s; ratio baseline/ours "
          f"{b['seconds'] / o['seconds']:.2f}; peak RSS baseline {b['peak_rss_mb']:.0f} MB, ours "
          f"{o['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
