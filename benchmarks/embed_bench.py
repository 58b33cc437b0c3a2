"""Caption embedding: our pipeline (tars -> captions parquet -> features) vs SentenceTransformer.encode on the
same captions already in memory.

    python benchmarks/embed_bench.py [--samples 8000] [--repeats 2]

Both use the same loaded encoder (the packaged all-MiniLM-L6-v2) on the same device; the baseline calls
`encode` as a user would (its default batch size, 32), ours runs `mode captions --workers 2` + `mode embed` with their
defaults, so the ratio includes reading tars, cleaning captions and writing float16 shards (>= 0.9 is the
goal on CPU). Each side runs in its own process; peak RSS is reported per process.
"""

import argparse
import sys
import tempfile
from pathlib import Path

from common import Timer, in_child, report


def child(side: str, pool: str) -> None:
    from mode.core.shards import expand
    from mode.prep import captions, embed

    embed.load_encoder(None)  # load outside the timed region on both sides
    if side == "ours":
        work = Path(tempfile.mkdtemp())
        with Timer() as t:
            captions.run(pool, str(work), 0, 1, workers=2)  # as run_mode.sh prep-steps runs it
            s = embed.run(pool, str(work), rank=0, world_size=1)
        n = s["processed"]
    else:
        from collections import Counter

        texts = [c for p in expand(pool) for _, _, c in captions.shard_captions(p, Counter())]
        model = embed.load_encoder(None)
        with Timer() as t:
            model.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
        n = len(texts)
    report(seconds=round(t.seconds, 3), captions=n, captions_per_s=round(n / t.seconds, 1))


def main() -> None:
    if "--child" in sys.argv:
        _, _, side, pool = sys.argv
        return child(side, pool)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    from mode.toy.pool import ensure_pool

    with tempfile.TemporaryDirectory() as tmp:
        pool = str(Path(tmp) / "pool")
        ensure_pool(pool, samples=a.samples, shards=8, workers=2)
        best = {}
        for r in range(a.repeats):
            for side in ("plain encode", "ours"):
                res = in_child(__file__, "ours" if side == "ours" else "plain", pool)
                print(f"{side:13s} run {r}: {res['captions']} captions in {res['seconds']:6.2f}s = "
                      f"{res['captions_per_s']:7.1f}/s  peak RSS {res['peak_rss_mb']:6.0f} MB", flush=True)
                best[side] = max(best.get(side, 0), res["captions_per_s"])
    print(f"best captions/s: plain encode {best['plain encode']:.1f}, ours {best['ours']:.1f}; "
          f"ratio ours/plain {best['ours'] / best['plain encode']:.3f}")


if __name__ == "__main__":
    main()
