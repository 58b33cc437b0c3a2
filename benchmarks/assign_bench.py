"""Assignment: `mode assign` (faiss inner product, shard by shard, parquet out) vs a plain numpy matmul + argmax
of the same shapes held in memory; and our peak RSS on a pool 1x and 10x as large (goal: <= 1.2x).

Three rates: numpy (compute only, features in memory), faiss (our `nearest_fine`, compute only) and ours (the
whole step: read features and captions, search, write parquet and stats, per shard).

    python benchmarks/assign_bench.py [--shard-rows 10000] [--shards 8] [--fine 1024]

The work dir is synthetic (random unit features, fp16 as `mode embed` writes them); each measurement runs in
its own process.
"""

import argparse
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
from common import Timer, in_child, report


def make_work_dir(root: Path, shards: int, rows: int, fine: int, d: int = 384, coarse: int = 4) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mode.core.layout import WorkDir
    from mode.core.shards import write_json
    from mode.prep.cluster import ClusterConfig

    wd = WorkDir(root / "work")
    rng = np.random.default_rng(0)
    pool = root / "pool"
    pool.mkdir(parents=True)
    for s in range(shards):
        sid = f"{s:08d}"
        (pool / f"{sid}.tar").write_bytes(b"")  # assign reads captions and features, not the tars
        x = rng.standard_normal((rows, d), dtype=np.float32)
        wd.features(sid).parent.mkdir(parents=True, exist_ok=True)
        np.save(wd.features(sid), (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16))
        wd.captions(sid).parent.mkdir(parents=True, exist_ok=True)
        keys = [f"{sid}{i:06d}" for i in range(rows)]
        pq.write_table(pa.table({"uid": [f"{s:016x}{i:016x}" for i in range(rows)], "key": keys}), wd.captions(sid))
    c = rng.standard_normal((fine, d), dtype=np.float32)
    wd.clusters_dir.mkdir(parents=True)
    np.save(wd.fine_centroids, c / np.linalg.norm(c, axis=1, keepdims=True))
    np.save(wd.fine_to_coarse, rng.integers(coarse, size=fine))
    write_json(WorkDir.summary(wd.clusters_dir), {"config": asdict(ClusterConfig(fine=fine, coarse=coarse))})
    return str(pool)


def child(side: str, pool: str) -> None:
    from mode.core.layout import WorkDir

    work = str(Path(pool).parent / "work")
    if side == "ours":
        from mode.prep import assign

        with Timer() as t:
            s = assign.run(pool, work, 0, 1)
        n = s["processed"]
    else:  # compute only, on features already in memory as float32
        wd = WorkDir(work)
        feats = [np.load(p).astype(np.float32) for p in sorted(wd.features_dir.glob("*.npy"))]
        fine = np.load(wd.fine_centroids)
        if side == "faiss":
            from mode.prep.assign import nearest_fine

            nearest_fine(feats[0][:10], work, "cosine")  # build the index outside the timed region
        with Timer() as t:
            for x in feats:
                if side == "faiss":
                    nearest_fine(x, work, "cosine")
                else:
                    np.argmax(x @ fine.T, axis=1)
        n = sum(len(x) for x in feats)
    report(seconds=round(t.seconds, 3), pairs=n, pairs_per_s=round(n / t.seconds))


def main() -> None:
    if "--child" in sys.argv:
        _, _, side, pool = sys.argv
        return child(side, pool)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shard-rows", type=int, default=10_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--fine", type=int, default=1024)
    a = ap.parse_args()
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 10):
            pool = make_work_dir(Path(tmp) / f"x{scale}", a.shards * scale, a.shard_rows, a.fine)
            for side in (("numpy", "faiss", "ours") if scale == 1 else ("ours",)):
                r = res[(side, scale)] = in_child(__file__, side, pool)
                print(f"{side:5s} {scale:2d}x: {r['pairs']:8d} pairs in {r['seconds']:7.2f}s = {r['pairs_per_s']:9d}/s"
                      f"  peak RSS {r['peak_rss_mb']:6.0f} MB", flush=True)
    numpy_rate = res[("numpy", 1)]["pairs_per_s"]
    print(f"pairs/s ratio vs numpy: our search alone {res[('faiss', 1)]['pairs_per_s'] / numpy_rate:.2f}, "
          f"whole step (read, search, write) {res[('ours', 10)]['pairs_per_s'] / numpy_rate:.2f}; "
          f"peak RSS 10x/1x {res[('ours', 10)]['peak_rss_mb'] / res[('ours', 1)]['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
