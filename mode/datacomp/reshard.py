"""`mode reshard`: write a subset of a pool as new webdataset shards, as DataComp's resharder.py does.

Only samples whose uid is in the subset are written, and a uid listed n times is written n times, keyed
`<uid>-<j>` (j = 0..n-1), DataComp's output keys. Output: `<out>/{00000000..}.tar` of at most `--shard-size`
samples, `<out>/<n>_stats.json` (`successes`), `sample_ids.npy` (a copy of the subset file, as DataComp writes
it), `meta.json` (DataComp's form: our arguments as strings, `processed_count`, `output_count`,
`blur_count`, `blur_time`, `output_shard_count`, `worker_success`, `cwd`), plus `sizes.json`, which
`--data-dir` and `--train-num-samples` read. Redone or replaced, it removes only these files: what else is in
the folder stays.

Ours differs from DataComp's in what the README says: the output is in input order (DataComp's workers
interleave), `--shuffle-bufsize` shuffles with a seeded generator (`--seed`), samples without a uid or whose
faces could not be blurred are counted by reason and left out, and the run is a global step
(mode.core.runner.run_global) whose record is `.mode-reshard`: a rerun with the same arguments on the same
inputs is skipped, one stopped before its end is redone, and another subset or shard size needs --overwrite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mode.core.errors import UserError, reading
from mode.core.parallel import pool_map
from mode.core.runner import read_record, run_global
from mode.core.shards import (
    IMAGE_EXTS,
    RESHARD_MARKER,
    atomic_write,
    concat_tar,
    expand,
    iter_tar,
    overlaps,
    shard_ids,
    tar_stats,
    tar_writer,
    write_json,
    write_tar,
    write_tar_stats,
)
from mode.core.step import positive_int, seed_int
from mode.core.uids import NoUid, UidSet, hex_to_pairs, load_subset, sample_uid

SHARD_FORMAT = "{:08d}.tar"
MAX_SHARD_BYTES = 3e9  # webdataset ShardWriter's default maxsize, which DataComp's resharder keeps
MARKER = RESHARD_MARKER  # the step's record; written first as "in progress": `--overwrite` replaces only such folders


def _check_output(out: Path, spec: str, paths: list[str], subset: str, opts: dict, blur_map: str | None) -> None:
    """Refuse an output folder that is, holds or lies inside an input folder (the shards'), or that holds an input
    file (the subset, the face parquets, the blur map): --overwrite would replace the output with its inputs."""
    folders = {Path(part).resolve() for part in spec.split("::") if Path(part).is_dir()}
    folders |= {Path(p).resolve().parent for p in paths}
    for folder in sorted(folders):
        if overlaps(out, folder):
            raise UserError(f"output {out} overlaps the input shards' folder {folder}: choose an output outside "
                            "the pool")
    source = "--blur-metadata-map" if blur_map else "--metadata-dir"
    files = [(subset, "subset file (-s)"), *((p, f"face metadata parquet ({source})")
                                             for p in opts.get("all_parquets", ()))]
    if blur_map:
        files.append((blur_map, "blur metadata map (--blur-metadata-map)"))
    for path, what in files:
        if out.resolve() in Path(path).resolve().parents:
            raise UserError(f"output {out} holds the {what} {path}: choose an output that holds none of the inputs")


def _is_ours(out: Path) -> bool:
    """A folder this tool wrote: it holds the marker, or is a complete output of a version before the marker."""
    if (out / MARKER).exists():
        return True
    try:
        return "output_shard_format" in json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return False


# ------------------------------------------------------------------------------------------------- faces

def blur_boxes(img: np.ndarray, boxes) -> np.ndarray:
    """Blur the faces in `boxes` ([x0, y0, x1, y1] in [0, 1] of the image) as img2dataset's BoundingBoxBlurrer,
    which DataComp's resharder uses: each box grown by a tenth of its longest side, a Gaussian of sigma a tenth
    of the longest box side over the image and over the box mask, and the two blended by the blurred mask."""
    import cv2

    if len(boxes) == 0:
        return img
    h, w = img.shape[:2]
    x = img.astype(np.float32) / 255.0
    mask = np.zeros_like(x)
    longest = 0
    for b in boxes:
        x0, y0, x1, y1 = int(b[0] * w), int(b[1] * h), int(b[2] * w), int(b[3] * h)
        side = max(x1 - x0, y1 - y0)
        longest = max(longest, side)
        x0, x1 = (int(np.clip(int(v), 0, w - 1)) for v in (x0 - 0.1 * side, x1 + 0.1 * side))
        y0, y1 = (int(np.clip(int(v), 0, h - 1)) for v in (y0 - 0.1 * side, y1 + 0.1 * side))
        mask[y0:y1, x0:x1, ...] = 1
    sigma = 0.1 * longest
    k = int(2 * np.ceil(4 * sigma)) + 1
    blurred, soft = (cv2.GaussianBlur(a, (k, k), sigmaX=sigma) for a in (x, mask))
    return (((x * (1 - soft)) + blurred * soft) * 255.0).astype(np.uint8)


def blur_image(data: bytes, boxes, quality: int) -> bytes:
    """Decode an image, blur its faces and encode it as WebP (DataComp's resharder re-encodes blurred images so)."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError("undecodable image")
    ok, encoded = cv2.imencode(".webp", blur_boxes(img, boxes), [int(cv2.IMWRITE_WEBP_QUALITY), quality])
    if not ok:
        raise ValueError("WebP encoding failed")
    return encoded.tobytes()


@lru_cache(maxsize=1)
def _face_table(parquets: tuple[str, ...]) -> tuple[UidSet, list]:
    """uid -> face boxes of the rows with faces in these metadata parquets (DataComp's `face_bboxes` column)."""
    import pyarrow.parquet as pq

    uids, boxes = [], []
    for path in parquets:
        with reading(path, "metadata parquet with uid and face_bboxes"):
            table = pq.read_table(path, columns=["uid", "face_bboxes"]).to_pydict()
        for uid, b in zip(table["uid"], table["face_bboxes"]):
            if b:
                uids.append(uid)
                boxes.append(b)
    pairs = hex_to_pairs(uids)
    order = np.lexsort((pairs["f1"], pairs["f0"])) if len(pairs) else np.zeros(0, int)
    return UidSet(pairs), [boxes[i] for i in order]


def face_parquets(blur: dict, shard: str) -> tuple[str, ...]:
    """The metadata parquets that hold the face boxes of `shard`'s samples (empty: none known)."""
    if blur.get("map") is not None:
        found = blur["map"].get(Path(shard).name)
        return (found,) if found else ()
    return tuple(blur.get("parquets", ()))


def load_blur_map(path: str, paths: list[str]) -> dict[str, str]:
    """DataComp's `--blur-metadata-map`: `{name: {"parquet": P, "shards": [S, ...]}}`, inverted to shard name ->
    parquet for the input shards."""
    with reading(path, "blur metadata map (json)"):
        entries = json.loads(Path(path).read_text())
    table = {}
    try:
        for entry in entries.values():
            for shard in entry["shards"]:
                table[Path(shard).name] = entry["parquet"]
    except (AttributeError, KeyError, TypeError):
        raise UserError(f"{path}: expected DataComp's map {{name: {{\"parquet\": ..., \"shards\": [...]}}}}")
    missing = sum(Path(p).name not in table for p in paths)
    if missing:
        print(f"reshard: no parquet for {missing} of {len(paths)} shards in {path}: their faces are not blurred")
    return table


# ------------------------------------------------------------------------------------------------- selection

@lru_cache(maxsize=1)
def _subset_lookup(subset_path: str) -> tuple[UidSet, np.ndarray]:
    """The subset's distinct uids and how often each is listed; built once per worker process, not per shard."""
    uniq, counts = np.unique(load_subset(subset_path), return_counts=True)
    return UidSet(uniq), counts


def _with_faces(sample: dict, uid: str, faces: tuple[UidSet, list], opts: dict, result: dict) -> dict | None:
    """The sample with its faces blurred and/or listed in its json, as asked; None when blurring failed."""
    boxes = None
    pos = faces[0].position(uid)
    if pos >= 0:
        boxes = faces[1][pos]
    if not boxes:
        return sample
    sample = dict(sample)
    if opts.get("apply_blur"):
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        start = time.perf_counter()
        try:
            sample["webp"] = blur_image(sample.pop(ext), boxes, opts["quality"])
        except (ValueError, TypeError, KeyError):
            result["skipped"]["blur_failed"] += 1  # never write a face that should have been blurred
            return None
        result["blur_count"] += 1
        result["blur_time"] += time.perf_counter() - start
    if opts.get("inject"):
        meta = json.loads(sample["json"])
        meta["face_bboxes"] = [list(b) for b in boxes]
        sample["json"] = json.dumps(meta).encode()
    return sample


def _selected(subset_path: str, opts: dict, path: str, result: dict) -> Iterator[tuple[str, dict]]:
    """One input shard's samples that are in the subset, each as many times as listed; counts into `result`."""
    members, counts = _subset_lookup(subset_path)
    faces = _face_table(face_parquets(opts, path)) if opts.get("faces") else None  # once per shard
    skipped = Counter()
    result.update(processed=0, written=0, blur_count=0, blur_time=0.0, skipped=skipped)
    for _, sample in iter_tar(path, skipped):
        result["processed"] += 1
        try:
            uid = sample_uid(sample)
        except NoUid as e:
            skipped[e.reason] += 1
            continue
        pos = members.position(uid)
        n = int(counts[pos]) if pos >= 0 else 0
        if n and opts.get("faces"):
            sample = _with_faces(sample, uid, faces, opts, result)
            if sample is None:
                continue
        for j in range(n):
            yield f"{uid}-{j}", sample
            result["written"] += 1


def _select(subset_path: str, opts: dict, parts_dir: str, item: tuple[str, str]) -> dict:
    """Write one input shard's selected samples to a part tar (parallel runs; packed in order afterwards), with
    the byte offset where each sample ends, so packing copies bytes instead of decoding the part again."""
    path, part = item
    result = {"part": part, "ends": []}
    samples = _selected(subset_path, opts, path, result)
    if parts_dir:
        with tar_writer(Path(parts_dir) / f"{part}.tar") as sink:
            for key, members in samples:
                sink.write(key, members)
        result["ends"] = sink.ends
    else:
        for _ in samples:  # --dry-run: count only
            pass
    return {**result, "skipped": dict(result["skipped"])}


def _shard_cuts(lengths: list[int], shard_size: int, max_bytes: float) -> list[int]:
    """Where output shards start, as webdataset's ShardWriter (DataComp's) cuts them: a new shard once the
    current one holds `shard_size` samples or `max_bytes` bytes (the sample that crosses it stays)."""
    cuts, count, size = [0], 0, 0
    for i, n in enumerate(lengths):
        if count >= shard_size or size >= max_bytes:
            cuts.append(i)
            count, size = 0, 0
        count, size = count + 1, size + n
    return cuts


def _pack_parts(out: Path, parts_dir: Path, results: list[dict], shard_size: int, max_bytes: float) -> dict[str, int]:
    """Output shards as byte ranges of the part tars, in input order: equal to writing the samples again."""
    spans = [(parts_dir / f"{r['part']}.tar", start, end)
             for r in results for start, end in zip([0, *r["ends"][:-1]], r["ends"])]
    sizes = {}
    cuts = _shard_cuts([end - start for _, start, end in spans], shard_size, max_bytes)
    for n, (first, stop) in enumerate(zip(cuts, [*cuts[1:], len(spans)])):
        if first == stop:
            break
        chunk, ranges = spans[first:stop], []
        for src, start, end in chunk:  # merge the runs of consecutive samples of one part
            if ranges and ranges[-1][0] == src and ranges[-1][2] == start:
                ranges[-1] = (src, ranges[-1][1], end)
            else:
                ranges.append((src, start, end))
        name = SHARD_FORMAT.format(n)
        concat_tar(out / name, ranges)
        write_tar_stats(out / name, len(chunk))
        sizes[name] = len(chunk)
    return sizes


def tar_bytes(members: dict[str, bytes]) -> int:
    """A sample's size in a tar: a 512-byte header per member and its data padded to 512."""
    return sum(512 + -(-len(v) // 512) * 512 for v in members.values())


def _one_shard(first: tuple, samples: Iterator, shard_size: int, max_bytes: float) -> Iterator[tuple]:
    """The samples of one output shard: `first`, then more from `samples` until the shard holds `shard_size`
    samples or `max_bytes` bytes (ShardWriter's rule, as in _shard_cuts)."""
    sample, count, size = first, 0, 0
    while sample is not None:
        yield sample
        count, size = count + 1, size + tar_bytes(sample[1])
        if count >= shard_size or size >= max_bytes:
            return
        sample = next(samples, None)


def select_shards(paths: list[str], first_shard: int, num_shards: int | None) -> tuple[list[str], int]:
    """DataComp's input selection: shards named by number (`00000123.tar`) are taken by id, ids
    `first_shard .. first_shard + num_shards - 1` (a missing id is no shard); other names by position. Where the
    input has img2dataset's `_stats.json` files, a shard without one (a download killed mid-shard) is left out,
    as DataComp's resharder leaves it. Returns the shards and how many were left out for lack of stats."""
    if first_shard < 0:
        raise UserError(f"--first-shard {first_shard}: expected an id >= 0")
    names = [Path(p).name.removesuffix(".tar") for p in paths]
    if all(n.isdigit() for n in names):
        stop = first_shard + num_shards if num_shards else None
        chosen = [p for p, n in zip(paths, names) if int(n) >= first_shard and (stop is None or int(n) < stop)]
        if not chosen:
            raise UserError(f"--first-shard {first_shard}" + (f" -n {num_shards}" if num_shards else "") +
                            f": no input shard has such an id (ids {int(min(names))}..{int(max(names))})")
    else:
        if first_shard >= len(paths):
            raise UserError(f"--first-shard {first_shard}: the input has {len(paths)} shards (0..{len(paths) - 1})")
        chosen = paths[first_shard:first_shard + num_shards if num_shards else None]
    if any(tar_stats(p).exists() for p in paths):
        with_stats = [p for p in chosen if tar_stats(p).exists()]
        if not with_stats:
            raise UserError(f"none of the {len(chosen)} selected shards has its _stats.json (img2dataset writes it "
                            "when a shard is complete)")
        return with_stats, len(chosen) - len(with_stats)
    return chosen, 0


def _streamed(subset_path: str, opts: dict, paths: list[str], results: list[dict]) -> Iterator[tuple[str, dict]]:
    """With one worker: the selected samples of every input shard in order, with no part tars in between."""
    for path in tqdm(paths, desc="reshard", unit="shard"):
        results.append({})
        yield from _selected(subset_path, opts, path, results[-1])


# ------------------------------------------------------------------------------------------------- run

def run(inputs: str, output_dir: str, subset: str, shard_size: int = 10000, workers: int = 1,
        overwrite: bool = False, first_shard: int = 0, num_shards: int | None = None, shuffle_bufsize: int = 0,
        seed: int = 0, apply_blur: bool = False, inject_blur_metadata: bool = False,
        blur_metadata_map: str | None = None, metadata_dir: str | None = None,
        reencode_webp_quality: int = 100, dry_run: bool = False, max_shard_bytes: float = MAX_SHARD_BYTES) -> dict:
    """Reshard the samples of `subset` from `inputs` into `output_dir`; returns the summary.

    One run per output folder at a time (the lock lies beside the folder, which --overwrite replaces).
    `first_shard`/`num_shards` take a slice of the input shards (DataComp's `--first-shard`/`-n`);
    `apply_blur`/`inject_blur_metadata` read `face_bboxes` from `blur_metadata_map` (DataComp's map) or from
    every parquet of `metadata_dir`; `dry_run` reads and counts but writes nothing.
    """
    if shard_size < 1:
        raise UserError("--shard-size must be positive")
    if not 0 <= reencode_webp_quality <= 100:
        raise UserError("--reencode-webp-quality must be in [0, 100]")
    load_subset(subset)  # checks dtype and order once, with a clear error
    paths, no_stats = select_shards(expand(inputs), first_shard, num_shards)
    opts = _face_options(apply_blur, inject_blur_metadata, blur_metadata_map, metadata_dir, paths,
                         reencode_webp_quality)
    out = Path(output_dir)
    _check_output(out, inputs, paths, subset, opts, blur_metadata_map)  # before anything is written, the lock included
    args = {"input_dir": inputs, "output_dir": output_dir, "subset_file": subset, "num_shards": num_shards,
            "first_shard": first_shard, "num_workers": workers, "shard_size": shard_size,
            "output_shard_format": SHARD_FORMAT, "output_shard_stats_format": "{:08d}_stats.json",
            "shuffle_bufsize": shuffle_bufsize, "seed": seed, "blur_metadata_map": blur_metadata_map,
            "metadata_dir": metadata_dir, "apply_blur": apply_blur, "inject_blur_metadata": inject_blur_metadata,
            "reencode_webp_quality": reencode_webp_quality, "dry_run": dry_run, "overwrite": overwrite,
            "max_shard_bytes": max_shard_bytes, "input_shards_without_stats": no_stats}
    # a finished reshard of ours is there: run_global lets the work run only where --overwrite replaces it or its
    # outputs went missing (it then removes the record), and either way the work replaces its files
    ours = read_record(out / MARKER) is not None
    work = partial(_run, paths, out, subset, opts, args, overwrite or ours)
    if dry_run:
        return work()
    params = {k: args[k] for k in ("shard_size", "shuffle_bufsize", "seed", "apply_blur", "inject_blur_metadata",
                                   "reencode_webp_quality", "max_shard_bytes")}
    inputs_files = [Path(p) for p in paths] + [Path(subset)] + [Path(p) for p in opts.get("all_parquets", ())]
    resolved = out.resolve()
    return run_global("reshard", out, resolved.parent, params, inputs_files, partial(_outputs, out), work,
                      record=out / MARKER, lock_name=f"reshard-{resolved.name}", replace=overwrite,
                      hint="pass --overwrite to replace it")


def _face_options(apply_blur, inject, blur_map, metadata_dir, paths, quality) -> dict:
    if not (apply_blur or inject):
        return {}
    if not (blur_map or metadata_dir):
        raise UserError("--apply-blur and --inject-blur-metadata need the faces: pass --blur-metadata-map (DataComp's "
                        "map of shards to metadata parquets) or --metadata-dir (the pool's metadata folder)")
    if apply_blur:
        try:
            import cv2  # noqa: F401  (an optional dependency: only blurring needs it)
        except ImportError:
            raise UserError("--apply-blur needs OpenCV: pip install 'mode-clip[blur]'")
    opts = {"faces": True, "apply_blur": apply_blur, "inject": inject, "quality": quality}
    if blur_map:
        opts["map"] = load_blur_map(blur_map, paths)
        opts["all_parquets"] = sorted(set(opts["map"].values()))
    else:
        found = sorted(str(p) for p in Path(metadata_dir).glob("*.parquet"))
        if not found:
            raise UserError(f"--metadata-dir {metadata_dir}: no .parquet files there")
        opts["parquets"] = opts["all_parquets"] = found
    return opts


def _outputs(out: Path) -> list[Path]:
    """The files of the record: the reshard's own, not what the user keeps beside them."""
    return sorted(p for p in out.iterdir() if p.is_file() and not p.name.startswith(".") and _written_here(p.name))


def _run(paths: list[str], out: Path, subset: str, opts: dict, args: dict, replace: bool = False) -> dict:
    """The work: select, pack into shards in input order (optionally shuffled), write DataComp's files."""
    start = time.perf_counter()
    dry = args["dry_run"]
    if not dry:
        _prepare(out, replace)
    workers, shard_size = args["num_workers"], args["shard_size"]
    parts_dir = "" if dry else str(out / ".parts")
    results: list[dict] = []
    if workers > 1 or dry:  # select in parallel into part tars, then pack them in input order
        if parts_dir:
            os.makedirs(parts_dir)
        ids = shard_ids(paths)
        work = partial(_select, subset, opts, parts_dir)
        items = [(p, ids[p]) for p in paths]
        results = list(tqdm(pool_map(work, items, workers), total=len(items), desc="reshard: select", unit="shard"))
        samples = (s for res in results for s in iter_tar(Path(parts_dir) / f"{res['part']}.tar")) if parts_dir \
            else iter(())
    else:
        samples = _streamed(subset, opts, paths, results)
    if args["shuffle_bufsize"] > 0:
        import webdataset.filters as wds_filters

        samples = wds_filters._shuffle(samples, args["shuffle_bufsize"], args["shuffle_bufsize"],
                                       rng=random.Random(args["seed"]))
    sizes, n_out = {}, 0
    if workers > 1 and parts_dir and not args["shuffle_bufsize"]:  # in order: the parts' bytes, copied
        sizes = _pack_parts(out, Path(parts_dir), results, shard_size, args["max_shard_bytes"])
        n_out, samples = len(sizes), iter(())
    while (first := next(samples, None)) is not None:  # stream: at most a shuffle buffer in memory
        name = SHARD_FORMAT.format(n_out)
        count = write_tar(out / name, _one_shard(first, samples, shard_size, args["max_shard_bytes"]))
        write_tar_stats(out / name, count)
        sizes[name], n_out = count, n_out + 1
    state = {"processed_count": sum(r["processed"] for r in results),
             "output_count": sum(r["written"] for r in results),
             "blur_count": sum(r["blur_count"] for r in results),
             "blur_time": sum(r["blur_time"] for r in results),
             "output_shard_count": -(-sum(r["written"] for r in results) // shard_size) if dry else n_out,
             "worker_success": min(workers, len(paths))}
    skipped = sum((Counter(r["skipped"]) for r in results), Counter())
    summary = {"input_shards": len(paths), "input_shards_without_stats": args["input_shards_without_stats"],
               "output_shard_count": state["output_shard_count"],
               "output_shard_format": SHARD_FORMAT, "shard_size": shard_size, "samples": state["output_count"],
               "processed": state["processed_count"], "blurred": state["blur_count"], "skipped": dict(skipped),
               "subset": str(subset), "dry_run": dry}
    if dry:
        return {**summary, "seconds": round(time.perf_counter() - start, 3)}
    shutil.rmtree(out / ".parts", ignore_errors=True)
    with reading(subset, "uid subset .npy"), open(subset, "rb") as src, atomic_write(out / "sample_ids.npy") as f:
        shutil.copyfileobj(src, f)  # DataComp's sample_ids.npy: the subset file itself
    write_json(out / "sizes.json", sizes)
    meta = {**{k: str(v) for k, v in args.items()}, **state, "cwd": str(Path.cwd())}
    write_json(out / "meta.json", meta)  # last of the outputs; the record (.mode-reshard) follows it
    return summary


def _prepare(out: Path, replace: bool) -> None:
    """Clear the output folder of a reshard's files when it is ours (a run stopped early, one whose outputs went
    missing, or one `replace` replaces); else refuse. What the user added there stays."""
    if out.exists() and any(out.iterdir()):
        if not _is_ours(out):
            raise UserError(f"{out} is not empty and was not written by `mode reshard` (no {MARKER}); remove it "
                            "yourself or choose another output")
        if not (out / MARKER).exists() and not replace:
            raise UserError(f"{out} holds an earlier reshard; pass --overwrite to replace it")
        kept = []
        for entry in sorted(out.iterdir()):
            if not _written_here(entry.name):
                kept.append(entry.name)
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        if kept:
            print(f"reshard: kept {len(kept)} entries in {out} that a reshard does not write: "
                  + ", ".join(kept[:5]) + (", ..." if len(kept) > 5 else ""))
    out.mkdir(parents=True, exist_ok=True)
    # not an atomic write: the marker must exist from its first byte on, or a kill before its rename would leave
    # a folder this tool no longer recognises as its own (found by tests/test_faults.py)
    (out / MARKER).write_text(json.dumps({"status": "in progress", "pid": os.getpid()}))


_OWN = r"(?:\d{8}\.tar|\d{8}_stats\.json|sample_ids\.npy|meta\.json|sizes\.json|\.mode-reshard|\.parts)"


def _written_here(name: str) -> bool:
    """A name a reshard writes in its output folder: its shards and their stats, DataComp's files, its record,
    its part tars' folder, and the temp files of any of them (a killed run's)."""
    return re.fullmatch(_OWN, name) is not None or re.fullmatch(rf"\.tmp-{_OWN}\.\w+", name) is not None


# ------------------------------------------------------------------------------------------- `mode reshard`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input-dir", "--input", dest="input", required=True,
                   help="input shards: dir, brace pattern, '::' list")
    p.add_argument("-o", "--output-dir", "--output", dest="output", required=True, help="output directory")
    p.add_argument("-s", "--subset-file", "--subset", dest="subset", required=True, help="sorted u8,u8 uid .npy")
    p.add_argument("-n", "--num-shards", type=positive_int, default=None,
                   help="process only this many input shards (default: all from --first-shard)")
    p.add_argument("--first-shard", type=int, default=0, help="index of the first input shard to process")
    p.add_argument("-j", "--num-workers", "--workers", dest="workers", type=positive_int, default=os.cpu_count() or 1,
                   help="processes reading the input shards (default: the CPUs, as DataComp's; the output does not "
                        "depend on it)")
    p.add_argument("--shard-size", type=positive_int, default=10000, help="samples per output shard (at most)")
    p.add_argument("--shuffle-bufsize", type=int, default=0,
                   help="shuffle the output with a buffer of this many samples (0: input order)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of --shuffle-bufsize's shuffle")
    p.add_argument("--apply-blur", action="store_true",
                   help="blur the faces listed in the metadata's face_bboxes and re-encode those images as WebP")
    p.add_argument("--inject-blur-metadata", action="store_true", help="add face_bboxes to the samples' json")
    p.add_argument("--blur-metadata-map", default=None,
                   help="DataComp's json map from shards to the metadata parquets holding face_bboxes")
    p.add_argument("--metadata-dir", default=None,
                   help="or: a folder of metadata parquets (uid, face_bboxes) covering the input, e.g. POOL/metadata")
    p.add_argument("--reencode-webp-quality", type=int, default=100, help="WebP quality of blurred images")
    p.add_argument("--dry-run", action="store_true", help="read and count, write nothing")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier reshard in the output directory")


def main(args: argparse.Namespace) -> None:
    s = run(args.input, args.output, args.subset, args.shard_size, args.workers, args.overwrite, args.first_shard,
            args.num_shards, args.shuffle_bufsize, args.seed, args.apply_blur, args.inject_blur_metadata,
            args.blur_metadata_map, args.metadata_dir, args.reencode_webp_quality, args.dry_run)
    blurred = f", {s['blurred']} with faces blurred" if s.get("blurred") else ""
    left_out = {**s.get("skipped", {}), **({"input_shards_without_stats": s["input_shards_without_stats"]}
                                          if s.get("input_shards_without_stats") else {})}
    if left_out:  # a truncated or unreadable input shard is counted, and said, not only recorded
        print("reshard: left out " + ", ".join(f"{k} {v}" for k, v in sorted(left_out.items())))
    if s.get("dry_run"):
        print(f"reshard --dry-run: {s['samples']} samples would be written in {s['output_shard_count']} shards "
              f"({s['processed']} read{blurred}); nothing written")
    else:
        print(f"reshard: {s['samples']} samples in {s['output_shard_count']} shards{blurred} -> {args.output}")
