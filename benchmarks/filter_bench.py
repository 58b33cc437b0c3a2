"""DataComp baseline filters: `mode filter` (vectorised over parquet columns) vs a per-row pandas version of the
same rule, on toy metadata of --rows rows (default 1M), each run in its own process.

    python benchmarks/filter_bench.py [--rows 1000000] [--files 8]

The per-row baseline reads the same parquet with pandas and applies the rule with DataFrame.apply, one row at
a time (language id: one fastText call per row), as DataComp's own helpers do for the language and word count.
Both must keep the same uids; the script checks that before printing rows/s, the ratio and peak RSS.
"""

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import Timer, in_child, report

FILTERS = {"no_filter": {}, "basic_filter": {}, "clip_score": {"arch": "b32", "threshold": 0.2},
           "laion2b": {}}


def make_metadata(out: Path, rows: int, files: int) -> None:
    """Toy-pool metadata only (no images or features): the parquet columns the filters read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mode.toy import plan_sample

    out.mkdir(parents=True)
    per = -(-rows // files)
    for f in range(files):
        plan = [plan_sample(0, i) for i in range(f * per, min(rows, (f + 1) * per))]
        cols = ("uid", "text", "original_width", "original_height", "clip_b32_similarity_score",
                "clip_l14_similarity_score")
        pq.write_table(pa.table({c: [p[c] for p in plan] for c in cols}), out / f"{f:08d}.parquet")


def per_row(name: str, meta: str) -> np.ndarray:
    import pandas as pd

    from mode.filters import FilterParams, _fasttext, packaged_lid_model

    model = _fasttext(packaged_lid_model())

    def lang(text):
        return model.f.multilinePredict([text.replace("\n", " ") + "\n"], 1, 0.0, "strict")[0][0][9:]

    def basic(r):
        lo, hi = min(r.original_width, r.original_height), max(r.original_width, r.original_height)
        return (lang(r.text) == "en" and len(r.text.split()) > 2 and len(r.text) > 5 and lo >= 200
                and hi / lo <= 3.0)

    rules = {"no_filter": lambda r: True, "basic_filter": basic,
             "clip_score": lambda r: r.clip_b32_similarity_score >= FilterParams(**FILTERS["clip_score"]).threshold,
             "laion2b": lambda r: r.clip_b32_similarity_score >= 0.28 and lang(r.text) == "en"}
    kept = []
    for p in sorted(Path(meta).glob("*.parquet")):
        df = pd.read_parquet(p)
        kept.extend(df.uid[df.apply(rules[name], axis=1).astype(bool)].tolist())
    return np.array(sorted(kept))


def child(side: str, name: str, meta: str, workers: int) -> None:
    from mode import filters
    from mode.uids import pairs_to_hex

    with Timer() as t:
        if side == "ours":
            out = Path(tempfile.mkdtemp()) / "subset.npy"
            s = filters.run(name, meta, str(out), filters.FilterParams(**FILTERS[name]), workers)
            kept, rows = np.array(sorted(pairs_to_hex(np.load(out)))), s["rows"]
        else:
            kept = per_row(name, meta)
            rows = None
    digest = hashlib.sha256("".join(kept.tolist()).encode()).hexdigest()
    report(seconds=round(t.seconds, 3), kept=len(kept), digest=digest, rows=rows)


def main() -> None:
    if "--child" in sys.argv:
        _, _, side, name, meta, workers = sys.argv
        return child(side, name, meta, int(workers))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        meta = Path(tmp) / "metadata"
        make_metadata(meta, a.rows, a.files)
        for name in FILTERS:
            ours = in_child(__file__, "ours", name, str(meta), str(a.workers))
            base = in_child(__file__, "pandas", name, str(meta), "1")
            assert ours["digest"] == base["digest"], f"{name}: the two implementations keep different uids"
            print(f"{name:13s} kept {ours['kept']:8d}: ours {a.rows / ours['seconds']:10.0f} rows/s "
                  f"({a.workers} workers, peak RSS {ours['peak_rss_mb']:.0f} MB), per-row pandas "
                  f"{a.rows / base['seconds']:9.0f} rows/s (peak RSS {base['peak_rss_mb']:.0f} MB); "
                  f"ratio {base['seconds'] / ours['seconds']:.1f}x", flush=True)


if __name__ == "__main__":
    main()
