"""`mode download`: a DataComp pool (DataComp's `download_upstream.py`) or DataCompDR shards, from the hub.

Pool (`--scale S --data_dir D`): the scale's metadata parquets (and with `--download_npz` the precomputed CLIP
features beside them) come from the Hugging Face dataset `mlfoundations/datacomp_<S>` into `D/metadata`
(xlarge's `part_*/` folders are flattened, as DataComp does); then, unless `--skip_shards`, img2dataset
(`pip install 'mode-clip[download]'`) downloads the images into `D/shards` with DataComp's parameters. Metadata
already in place is used as it is (copy it there to work without the hub); `--overwrite_metadata` fetches it
again. img2dataset resumes an interrupted image download by itself.

DataCompDR (`--dr REPO --data_dir D`): the files of a DataCompDR dataset (e.g. apple/DataCompDR-12M) are
fetched into `D` with their repository paths; `--allow-patterns` and `--max-shards` select a part.

Both write `D/download.json`: marked in progress before the hub is asked, complete at the end, so a run that
stopped half way fetches again (the hub skips files already complete) instead of trusting partial metadata.
Without the hub (no network, or `HF_HUB_OFFLINE=1`) the step stops with one line that says how to go on.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from mode.core.errors import UserError
from mode.core.hub import hub_call
from mode.core.layout import Pool
from mode.core.runner import read_record, run_global
from mode.core.shards import natural_key, write_json

log = logging.getLogger(__name__)

POOL_REPOS = {scale: f"mlfoundations/datacomp_{scale}" for scale in ("small", "medium", "large", "xlarge")}
POOL_REPOS["datacomp_1b"] = "mlfoundations/datacomp_1b"
DR_REPOS = ("apple/DataCompDR-12M", "apple/DataCompDR-12M-bf16", "apple/DataCompDR-1B")
SUMMARY = "download.json"  # beside the pool's shards/ and metadata/
IN_PROGRESS, COMPLETE = "in progress", "complete"
RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop")
ENCODE_FORMATS = ("png", "jpg", "webp")
OUTPUT_FORMATS = ("webdataset", "tfrecord", "parquet", "files")
# X-Robots-Tag values whose images img2dataset drops (its default, spelled out so the summary records it).
OPT_OUT_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class ImageOptions:
    """The img2dataset settings DataComp's download_upstream exposes, with its defaults."""

    processes_count: int = 16
    thread_count: int = 128
    image_size: int = 512
    resize_mode: str = "keep_ratio_largest"
    resize_only_if_bigger: bool = True
    encode_format: str = "jpg"
    output_format: str = "webdataset"
    bbox_blurring: bool = True  # blur the faces in `face_bboxes`
    retries: int = 2
    enable_wandb: bool = False
    wandb_project: str = "datacomp"


def pool_repo(scale: str) -> str:
    """The hub dataset holding a DataComp scale's metadata."""
    if scale not in POOL_REPOS:
        raise UserError(f"unknown scale {scale!r}; expected one of {', '.join(POOL_REPOS)}")
    return POOL_REPOS[scale]


def metadata_patterns(scale: str, kind: str) -> str:
    """What to fetch of a scale's repo: `kind` is parquet or npz; xlarge keeps its files in `part_*/` folders."""
    return f"*/*.{kind}" if scale == "xlarge" else f"*.{kind}"


def img2dataset_kwargs(metadata_dir: Path, shards_dir: Path, opts: ImageOptions) -> dict:
    """DataComp's call to `img2dataset.download`: parquet in, the uid kept beside url and caption, 10k per shard."""
    return {
        "url_list": str(metadata_dir), "input_format": "parquet", "url_col": "url", "caption_col": "text",
        "save_additional_columns": ["uid"], "bbox_col": "face_bboxes" if opts.bbox_blurring else None,
        "output_folder": str(shards_dir), "output_format": opts.output_format,
        "number_sample_per_shard": 10000, "oom_shard_count": 8,
        "image_size": opts.image_size, "resize_mode": opts.resize_mode,
        "resize_only_if_bigger": opts.resize_only_if_bigger, "encode_format": opts.encode_format,
        "processes_count": opts.processes_count, "thread_count": opts.thread_count, "retries": opts.retries,
        "enable_wandb": opts.enable_wandb, "wandb_project": opts.wandb_project,
        "disallowed_header_directives": list(OPT_OUT_DIRECTIVES),
    }


def _snapshot(repo: str, local_dir: Path, what: str, fallback: str, **kwargs) -> None:
    import huggingface_hub

    hub_call(huggingface_hub.snapshot_download, what, fallback, repo_id=repo, repo_type="dataset",
             local_dir=str(local_dir), **kwargs)


def _read_summary(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _files(root: Path, pattern: str) -> list[Path]:
    """Files under `root` matching `pattern`, leaving out the hub's bookkeeping in `.cache/`."""
    return sorted((p for p in root.glob(pattern) if p.is_file() and ".cache" not in p.relative_to(root).parts),
                  key=natural_key)


def _guarded_fetch(summary_path: Path, marker: dict, root: Path, fetch) -> None:
    """Mark the summary in progress, then `fetch()`; if it fails having written nothing, remove the mark.

    So a hub that cannot be reached leaves no stale mark (the runner then puts the previous record back), while
    a fetch that stopped half way stays marked and is redone by the next run.
    """
    before = {p for p in _files(root, "**/*") if p.name != SUMMARY}
    write_json(summary_path, marker)
    try:
        fetch()
    except UserError:
        if {p for p in _files(root, "**/*") if p.name != SUMMARY} == before:
            summary_path.unlink()
        raise


# ------------------------------------------------------------------------------------------------- pool

def _clear_metadata(meta: Path) -> None:
    """`--overwrite_metadata`: remove the parquet and npz files (and emptied `part_*` folders), nothing else."""
    for p in _files(meta, "**/*.parquet") + _files(meta, "**/*.npz"):
        p.unlink()
    for d in meta.glob("part_*"):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def _flatten(meta: Path) -> None:
    """xlarge: move `part_*/x.parquet|npz` up into the metadata folder, as DataComp does."""
    for p in _files(meta, "part_*/*"):
        if p.suffix in (".parquet", ".npz"):
            p.replace(meta / p.name)
    for d in meta.glob("part_*"):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def fetch_metadata(scale: str, meta: Path, npz: bool, overwrite: bool, revision: str | None,
                   summary_path: Path, lost: list[str] | None = None) -> list[str]:
    """Fetch what `meta` lacks of a scale's metadata: parquets, and npz files when `npz`.

    Files already there are used as they are, unless `overwrite` (once the hub answers: nothing is deleted
    for a hub that cannot be reached), the last run stopped while fetching them, or files of a complete download
    went missing (`lost`: their names; the hub then fetches only those).

    Returns:
        The kinds fetched from the hub (`[]` when everything was in place).
    """
    repo = pool_repo(scale)
    previous = _read_summary(summary_path)
    unfinished = previous.get("metadata_status") == IN_PROGRESS and previous.get("repo") == repo
    wanted = ["parquet", "npz"] if npz else ["parquet"]
    lost = [] if overwrite or unfinished else (lost or [])
    kinds = [k for k in wanted if overwrite or unfinished or any(n.endswith(f".{k}") for n in lost)
             or not _files(meta, f"*.{k}")]
    if not kinds:
        return []
    fallback = f"copy its {' and '.join(f'*.{k}' for k in kinds)} files into {meta}"
    if overwrite and meta.is_dir():
        import huggingface_hub

        hub_call(huggingface_hub.list_repo_files, f"{repo}'s metadata", fallback, repo_id=repo, repo_type="dataset",
                 revision=revision)  # reachable, before anything is deleted
        _clear_metadata(meta)

    def patterns(kind: str) -> str | list[str]:
        names = [n for n in lost if n.endswith(f".{kind}")]
        if not names or not _files(meta, f"*.{kind}"):
            return metadata_patterns(scale, kind)
        return [("*/" if scale == "xlarge" else "") + glob.escape(n) for n in names]  # xlarge: part_*/<name>

    def fetch():
        for kind in kinds:
            _snapshot(repo, meta, f"{repo}'s metadata ({kind})", fallback,
                      allow_patterns=patterns(kind), revision=revision, force_download=overwrite)
        if scale == "xlarge":
            _flatten(meta)

    created = not meta.exists()
    meta.mkdir(parents=True, exist_ok=True)
    try:
        _guarded_fetch(summary_path, {"metadata_status": IN_PROGRESS, "status": IN_PROGRESS, "repo": repo,
                                      "scale": scale}, meta, fetch)
    except UserError:
        if created and not any(meta.iterdir()):
            meta.rmdir()
        raise
    write_json(summary_path, {"metadata_status": COMPLETE, "status": IN_PROGRESS, "repo": repo, "scale": scale})
    return kinds


def _img2dataset():
    try:
        import img2dataset
    except ImportError:
        raise UserError("downloading the images needs img2dataset: pip install 'mode-clip[download]' "
                        "(or pass --skip_shards to fetch only the metadata)") from None
    return img2dataset


def shard_stats(shards_dir: Path) -> dict:
    """Totals of img2dataset's `<shard>_stats.json` files: shards, count, successes and failures."""
    keys = ("count", "successes", "failed_to_download", "failed_to_resize")
    totals = dict.fromkeys(keys, 0)
    stats = _files(shards_dir, "*_stats.json")
    for p in stats:
        s = _read_summary(p)
        for k in keys:
            totals[k] += int(s.get(k) or 0)
    return {"shards": len(stats), **totals}


def run_pool(scale: str, data_dir: str, metadata_dir: str | None = None, download_npz: bool = False,
             skip_shards: bool = False, overwrite_metadata: bool = False, images: ImageOptions = ImageOptions(),
             revision: str | None = None) -> dict:
    """DataComp's download_upstream: a scale's metadata from the hub, then its images with img2dataset.

    A global step (mode.core.runner.run_global, record `data_dir/download.json`): a rerun with the same flags
    after a complete download does nothing; other flags (npz added, other image settings) fetch what is missing.

    Args:
        scale: small, medium, large, xlarge or datacomp_1b.
        data_dir: the pool directory (DataComp layout: `shards/`, `metadata/`).
        metadata_dir: where the metadata goes (default `data_dir/metadata`).
        download_npz: also fetch the npz files of precomputed CLIP features.
        skip_shards: fetch only the metadata (img2dataset is then not needed).
        overwrite_metadata: fetch the metadata again even if present.
        images: img2dataset settings (DataComp's defaults).
        revision: a branch, tag or commit of the hub repository (default: main).

    Returns:
        The summary, also written to `data_dir/download.json`.
    """
    repo = pool_repo(scale)  # an unknown scale is refused before anything else
    for flag, path in (("--data_dir", data_dir), ("--metadata_dir", metadata_dir)):
        _local(flag, path)
    pool = Pool(data_dir)
    meta = Path(metadata_dir) if metadata_dir else pool.metadata_dir
    img2dataset = None if skip_shards else _img2dataset()  # before fetching anything
    params = {"kind": "pool", "scale": scale, "revision": revision, "npz": download_npz, "metadata_dir": str(meta),
              "img2dataset": None if skip_shards else asdict(images)}
    root = pool.root.resolve()
    done = read_record(root / SUMMARY)
    if done is not None and done.get("kind") == "pool":
        _check_same_pool(done, repo, meta, pool, None if skip_shards else images, overwrite_metadata)
    lost = _lost_metadata(root, done, pool) if done is not None else []
    return run_global("download", root, root, params, [], partial(_pool_outputs, meta, pool, skip_shards),
                      partial(_fetch_pool, scale, pool, meta, download_npz, overwrite_metadata, images, revision,
                              img2dataset, lost), record=root / SUMMARY, lock_name="download",
                      replace=True, force=overwrite_metadata)


def _local(flag: str, path: str | None) -> None:
    if path and re.match(r"^[A-Za-z][\w+.-]*://", path):
        raise UserError(f"{flag} {path}: cloud paths are not supported here (DataComp's download_upstream writes "
                        "to them): download into a local folder and copy it")


# what decides the images' bytes (not how fast they are fetched)
_IMAGE_CONTENT = ("image_size", "resize_mode", "resize_only_if_bigger", "encode_format", "output_format",
                  "bbox_blurring")


def _check_same_pool(done: dict, repo: str, meta: Path, pool: Pool, images: ImageOptions | None,
                     overwrite: bool) -> None:
    """A data_dir holds one pool: another scale's metadata, or shards made with other image settings, would be
    taken as this one's (the hub and img2dataset skip what is there)."""
    if done.get("repo") not in (None, repo) and not overwrite and _files(meta, "*.parquet"):
        raise UserError(f"{meta} holds {done['repo']}'s metadata: pass --overwrite_metadata to replace it with "
                        f"{repo}'s, or another --data_dir")
    made = done.get("img2dataset")
    if images is None or not made or not _files(pool.shards_dir, "*_stats.json"):
        return
    other = [k for k in _IMAGE_CONTENT if made.get(k) != asdict(images)[k]]
    if other:
        raise UserError(f"the shards in {pool.shards_dir} were downloaded with other image settings ({other[0]} "
                        f"{made.get(other[0])!r}, now {asdict(images)[other[0]]!r}); img2dataset would keep them "
                        "beside new ones: use another --data_dir")


def _lost_metadata(root: Path, done: dict, pool: Pool) -> list[str]:
    """Names of the recorded metadata files that went missing or changed; a recorded shard whose tar went missing
    while its _stats.json stayed is warned about (img2dataset takes a shard with stats as done)."""
    lost = []
    for rel, size in done.get("outputs", {}).items():
        path = root / rel
        if path.exists() and path.stat().st_size == size:
            continue
        if path.suffix in (".parquet", ".npz"):
            lost.append(path.name)
        elif path.suffix == ".tar" and (pool.shards_dir / f"{path.stem}_stats.json").exists():
            log.warning(f"{path} is missing but its {path.stem}_stats.json is there: img2dataset takes the shard as "
                        "done; delete that file to download the shard again")
    return lost


def _pool_outputs(meta: Path, pool: Pool, skip_shards: bool) -> list[Path]:
    shards = [] if skip_shards else [p for p in _files(pool.shards_dir, "*") if p.suffix in (".tar", ".json")]
    return _files(meta, "*.parquet") + _files(meta, "*.npz") + shards


def _fetch_pool(scale, pool, meta, download_npz, overwrite_metadata, images, revision, img2dataset, lost) -> dict:
    repo, start, summary_path = pool_repo(scale), time.perf_counter(), pool.root / SUMMARY
    fetched = fetch_metadata(scale, meta, download_npz, overwrite_metadata, revision, summary_path, lost)
    parquets, npzs = _files(meta, "*.parquet"), _files(meta, "*.npz")
    if not parquets:
        raise UserError(f"no metadata parquets in {meta} after fetching {repo}")
    if img2dataset is None:
        shards = {"skipped": True}
    else:
        pool.shards_dir.mkdir(parents=True, exist_ok=True)
        img2dataset.download(**img2dataset_kwargs(meta, pool.shards_dir, images))
        shards = {"skipped": False, **shard_stats(pool.shards_dir)}
    return {"status": COMPLETE, "metadata_status": COMPLETE, "kind": "pool", "scale": scale, "repo": repo,
            "revision": revision, "metadata_dir": str(meta), "fetched": fetched,
            "files": {"parquet": len(parquets), "npz": len(npzs)},
            "bytes": sum(p.stat().st_size for p in parquets + npzs), "npz": bool(npzs), "shards": shards,
            "img2dataset": None if img2dataset is None else asdict(images),
            "seconds": round(time.perf_counter() - start, 3)}


# ------------------------------------------------------------------------------------------------- DataCompDR

def dr_patterns(files: list[str], allow_patterns: list[str] | None, max_shards: int) -> list[str]:
    """Patterns naming the first `max_shards` `.tar` shards (natural order) among the repo files that match
    `allow_patterns`, plus the matching files that are not shards (manifests, README)."""
    from huggingface_hub.utils import filter_repo_objects

    matched = list(filter_repo_objects(files, allow_patterns=allow_patterns))
    tars = sorted((f for f in matched if f.endswith(".tar")), key=natural_key)
    if not tars:
        raise UserError(f"no .tar shards match {allow_patterns or '*'} ({len(files)} files in the repo)")
    keep = [f for f in matched if not f.endswith(".tar")] + tars[:max_shards]
    return [glob.escape(f) for f in keep]  # exact names: fnmatch reads [x] as a character class


def run_dr(repo: str, data_dir: str, allow_patterns: list[str] | None = None, max_shards: int | None = None,
           revision: str | None = None) -> dict:
    """Fetch a DataCompDR dataset (all of it, or a part) from the hub into `data_dir`, keeping its paths.

    Args:
        repo: the hub dataset, e.g. apple/DataCompDR-12M.
        data_dir: where the files go.
        allow_patterns: globs of repository paths to fetch (default: everything).
        max_shards: fetch only the first this many `.tar` shards that match (natural order).
        revision: a branch, tag or commit (default: main).

    Returns:
        The summary, also written to `data_dir/download.json`.
    """
    if not _REPO_ID.match(repo):
        raise UserError(f"--dr {repo!r} is not a hub dataset id (OWNER/NAME), e.g. {', '.join(DR_REPOS)}")
    _local("--data_dir", data_dir)
    if max_shards is not None and max_shards < 1:
        raise UserError("--max-shards must be positive")
    out = Path(data_dir)
    params = {"kind": "dr", "repo": repo, "allow_patterns": list(allow_patterns or []), "max_shards": max_shards,
              "revision": revision}
    root = out.resolve()
    got: list[str] = []
    return run_global("download", root, root, params, [], lambda: [out / f for f in got],
                      partial(_fetch_dr, repo, out, allow_patterns, max_shards, revision, got),
                      record=root / SUMMARY, lock_name="download", replace=True)


def _fetch_dr(repo, out, allow_patterns, max_shards, revision, got: list[str]) -> dict:
    """Fetch the DataCompDR files into `out`; the files are added to `got` (the step's outputs)."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    start = time.perf_counter()
    what, fallback = f"the files of {repo}", f"copy them into {out}"
    patterns = list(allow_patterns) if allow_patterns else None
    # list first: an unreachable hub fails here with its reason (snapshot_download would quietly return the
    # existing folder), and patterns that match nothing fail before anything is written
    files = hub_call(huggingface_hub.list_repo_files, what, fallback, repo_id=repo, repo_type="dataset",
                     revision=revision)
    if max_shards is not None:
        patterns = dr_patterns(files, patterns, max_shards)
    elif not list(filter_repo_objects(files, allow_patterns=patterns)):
        raise UserError(f"nothing of {repo} matches {patterns} ({len(files)} files in the repo)")
    out.mkdir(parents=True, exist_ok=True)
    _guarded_fetch(out / SUMMARY, {"status": IN_PROGRESS, "kind": "dr", "repo": repo}, out,
                   lambda: _snapshot(repo, out, what, fallback, allow_patterns=patterns, revision=revision))
    local = {p.relative_to(out).as_posix() for p in _files(out, "**/*")}
    got.extend(f for f in filter_repo_objects(files, allow_patterns=patterns) if f in local)  # not a user's file
    if not got:
        raise UserError(f"nothing of {repo} matching {patterns or '*'} is in {out} after the download")
    return {"status": COMPLETE, "kind": "dr", "repo": repo, "revision": revision,
            "allow_patterns": list(allow_patterns or []), "max_shards": max_shards, "files": len(got),
            "shards": sum(f.endswith(".tar") for f in got), "bytes": sum((out / f).stat().st_size for f in got),
            "seconds": round(time.perf_counter() - start, 3)}


# ------------------------------------------------------------------------------------------------- CLI

def main(args: argparse.Namespace) -> None:
    """`mode download ...` (flags in `add_arguments`)."""
    if args.dr:
        given = (("--metadata_dir", args.metadata_dir), ("--download_npz", args.download_npz),
                 ("--skip_shards", args.skip_shards), ("--overwrite_metadata", args.overwrite_metadata))
        pool_only = [flag for flag, on in given if on] + [
            f"--{k}" for k, v in _image_flags(args).items() if v != getattr(ImageOptions(), k)]
        if pool_only:
            raise UserError(f"{pool_only[0]} is for a DataComp pool (--scale), not --dr {args.dr}")
        s = run_dr(args.dr, args.data_dir, args.allow_patterns, args.max_shards, args.revision)
        print(f"download: {s['files']} files of {s['repo']} ({s['shards']} .tar shards, {s['bytes'] / 1e9:.2f} GB) "
              f"in {args.data_dir}")
        return
    if args.allow_patterns or args.max_shards is not None:
        raise UserError("--allow-patterns and --max-shards select DataCompDR files: use them with --dr REPO")
    images = ImageOptions(**_image_flags(args))
    s = run_pool(args.scale or "small", args.data_dir, args.metadata_dir, args.download_npz, args.skip_shards,
                 args.overwrite_metadata, images, args.revision)
    got = "fetched from " + s["repo"] if s["fetched"] else "already there (--overwrite_metadata fetches it again)"
    sh = s["shards"]
    images_line = "images skipped (--skip_shards)" if sh["skipped"] else \
        f"{sh['successes']} of {sh['count']} images in {sh['shards']} shards"
    print(f"download {s['scale']}: metadata {got}: {s['files']['parquet']} parquet, {s['files']['npz']} npz files "
          f"in {s['metadata_dir']}; {images_line}")


def _image_flags(args: argparse.Namespace) -> dict:
    """ImageOptions' fields from the flags."""
    return {"processes_count": args.processes_count, "thread_count": args.thread_count,
            "image_size": args.image_size, "resize_mode": args.resize_mode,
            "resize_only_if_bigger": not args.no_resize_only_if_bigger, "encode_format": args.encode_format,
            "output_format": args.output_format, "bbox_blurring": not args.skip_bbox_blurring,
            "retries": args.retries, "enable_wandb": args.enable_wandb, "wandb_project": args.wandb_project}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `mode download` (DataComp's download_upstream.py names, both spellings)."""
    p.description = __doc__.split("\n\n")[1]
    which = p.add_mutually_exclusive_group()
    which.add_argument("--scale", default=None, help=f"DataComp scale: {', '.join(POOL_REPOS)} (default small)")
    which.add_argument("--dr", metavar="REPO", help=f"a DataCompDR hub dataset instead, e.g. {', '.join(DR_REPOS)}")
    p.add_argument("--data-dir", "--data_dir", required=True, help="pool directory (shards/, metadata/), or where "
                                                                  "the --dr files go")
    p.add_argument("--metadata-dir", "--metadata_dir", default=None, help="default: DATA_DIR/metadata")
    p.add_argument("--download-npz", "--download_npz", action="store_true", help="also the npz CLIP features")
    p.add_argument("--skip-shards", "--skip_shards", action="store_true", help="metadata only, no images")
    p.add_argument("--overwrite-metadata", "--overwrite_metadata", action="store_true",
                   help="fetch the metadata again even if present")
    p.add_argument("--revision", default=None, help="hub branch, tag or commit (default main)")
    g = p.add_argument_group("images (img2dataset, DataComp's defaults)")
    g.add_argument("--skip-bbox-blurring", "--skip_bbox_blurring", action="store_true", help="do not blur faces")
    g.add_argument("--processes-count", "--processes_count", type=int, default=16)
    g.add_argument("--thread-count", "--thread_count", type=int, default=128)
    g.add_argument("--image-size", "--image_size", type=int, default=512)
    g.add_argument("--resize-mode", "--resize_mode", choices=RESIZE_MODES, default="keep_ratio_largest")
    g.add_argument("--no-resize-only-if-bigger", "--no_resize_only_if_bigger", action="store_true",
                   help="also resize images smaller than --image_size")
    g.add_argument("--encode-format", "--encode_format", choices=ENCODE_FORMATS, default="jpg")
    g.add_argument("--output-format", "--output_format", choices=OUTPUT_FORMATS, default="webdataset")
    g.add_argument("--retries", type=int, default=2, help="retries per image")
    g.add_argument("--enable-wandb", "--enable_wandb", action="store_true")
    g.add_argument("--wandb-project", "--wandb_project", default="datacomp")
    g = p.add_argument_group("DataCompDR (with --dr)")
    g.add_argument("--allow-patterns", "--allow_patterns", nargs="+", action="extend", default=None,
                   metavar="GLOB", help="repository paths to fetch, e.g. '*.tar' 'manifest*' (default: all)")
    g.add_argument("--max-shards", "--max_shards", type=int, default=None,
                   help="only the first N .tar shards that match (natural order)")
