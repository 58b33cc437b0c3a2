"""Caption embedding: our pipeline (tars -> captions parquet -> features) vs SentenceTransformer.encode on the
same captions already in memory.

    python benchmarks/embed_bench.py [--samples 8000] [--repeats 2] [--model NAME_OR_PATH] [--plain-fp32]

Both use the same loaded encoder (`--model`, default the packaged all-MiniLM-L6-v2, loaded by
`mode.prep.embed.load_encoder`: fp16 on a GPU) on the same device; the baseline calls `encode` as a user would
(its default batch size, 32), ours runs `mode captions --workers 2` + `mode embed` with their defaults, so the
ratio includes reading tars, cleaning captions and writing float16 shards (>= 0.9 is the goal on CPU).
`--plain-fp32` adds a second baseline: `SentenceTransformer(model, device)` as a user loads it (fp32 on a GPU
too), batch 32. Ours also prints its two steps' times apart: `mode captions` runs on the CPU, `mode embed` is the
part a GPU speeds up. The baselines' captions are read from a `mode captions` run made before the timing (the same
cleaned captions, in shard order). Every side encodes a few captions before its timed region (on a GPU: CUDA and
cuBLAS set up). Each side runs in its own process; peak RSS is reported per process, and on a GPU its peak
allocated memory.
"""

import argparse
import sys
import tempfile
from pathlib import Path

from common import Timer, in_child, report

SIDES = {"plain": "plain encode", "plain_fp32": "plain fp32", "ours": "ours"}


def gpu_peak_mb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def texts_of(pool: str, cache: str) -> list[str]:
    """The pool's captions in shard order, as `mode captions` cleans them (read from its parquet in `cache`)."""
    import pyarrow.parquet as pq

    from mode.core.layout import WorkDir
    from mode.core.shards import expand, shard_ids

    wd = WorkDir(cache)
    return [c for i in shard_ids(expand(pool)).values()
            for c in pq.read_table(wd.captions(i), columns=["caption"]).column("caption").to_pylist()]


def child(side: str, pool: str, model_name: str, cache: str) -> None:
    from mode.prep import captions, embed

    encoder = model_name or None
    if side == "plain_fp32":  # as a user loads it: no .half() on a GPU
        from sentence_transformers import SentenceTransformer

        from mode.core.device import pick_device

        model = SentenceTransformer(embed.resolve_encoder(encoder), device=pick_device("auto"))
    else:
        model = embed.load_encoder(encoder)  # load outside the timed region on both sides
    model.encode(["a warm-up caption"] * 8, show_progress_bar=False)
    if side == "ours":
        work = Path(tempfile.mkdtemp())
        with Timer() as t:
            with Timer() as t_captions:
                captions.run(pool, str(work), 0, 1, workers=2)  # as run_mode.sh prep-steps runs it
            s = embed.run(pool, str(work), encoder=encoder, rank=0, world_size=1)
        n = s["processed"]
        steps = {"captions_step_s": round(t_captions.seconds, 3),
                 "embed_step_s": round(t.seconds - t_captions.seconds, 3)}
    else:
        texts = texts_of(pool, cache)
        with Timer() as t:
            model.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
        n, steps = len(texts), {}
    report(seconds=round(t.seconds, 3), captions=n, captions_per_s=round(n / t.seconds, 1),
           device=str(model.device), gpu_peak_mb=gpu_peak_mb(), **steps)


def main() -> None:
    if "--child" in sys.argv:
        _, _, side, pool, model, cache = sys.argv
        return child(side, pool, model, cache)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=8000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default="", metavar="NAME_OR_PATH",
                    help="sentence-transformers model for both sides (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--plain-fp32", action="store_true",
                    help="also time encode with the model as SentenceTransformer loads it (fp32 on a GPU)")
    ap.add_argument("--pool-workers", type=int, default=2, help="processes that draw the toy pool (not timed)")
    a = ap.parse_args()
    from mode.toy.pool import ensure_pool

    sides = ["plain", *(["plain_fp32"] if a.plain_fp32 else []), "ours"]
    with tempfile.TemporaryDirectory() as tmp:
        pool = str(Path(tmp) / "pool")
        ensure_pool(pool, samples=a.samples, shards=a.shards, workers=a.pool_workers)
        from mode.prep import captions

        cache = str(Path(tmp) / "texts")  # the baselines' captions, cleaned once here (not timed)
        captions.run(pool, cache, 0, 1, workers=a.pool_workers)
        best = {}
        for r in range(a.repeats):
            for side in sides:
                res = in_child(__file__, side, pool, a.model, cache)
                gpu = f"  GPU peak {res['gpu_peak_mb']:6.0f} MB" if res.get("gpu_peak_mb") is not None else ""
                if side == "ours":
                    gpu += (f"  (captions step {res['captions_step_s']:.2f}s, embed step {res['embed_step_s']:.2f}s = "
                            f"{res['captions'] / res['embed_step_s']:.1f}/s)")
                    best["ours embed step"] = max(best.get("ours embed step", 0),
                                                  res["captions"] / res["embed_step_s"])
                print(f"{SIDES[side]:13s} run {r}: {res['captions']} captions in {res['seconds']:6.2f}s = "
                      f"{res['captions_per_s']:7.1f}/s  peak RSS {res['peak_rss_mb']:6.0f} MB{gpu}  "
                      f"on {res['device']}", flush=True)
                best[side] = max(best.get(side, 0), res["captions_per_s"])
    print(f"best captions/s: plain encode {best['plain']:.1f}, ours {best['ours']:.1f}; "
          f"ratio ours/plain {best['ours'] / best['plain']:.3f}")
    print(f"best captions/s of `mode embed` alone (captions parquet -> features): {best['ours embed step']:.1f}; "
          f"ratio embed step/plain {best['ours embed step'] / best['plain']:.3f}"
          + (f", /plain fp32 {best['ours embed step'] / best['plain_fp32']:.3f}" if "plain_fp32" in best else ""))
    if "plain_fp32" in best:
        print(f"best captions/s: plain fp32 {best['plain_fp32']:.1f}; "
              f"ratio ours/plain fp32 {best['ours'] / best['plain_fp32']:.3f}")


if __name__ == "__main__":
    main()
