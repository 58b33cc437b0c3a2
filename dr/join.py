"""`mode dr-join`: merge DataComp-12M shards with DataCompDR-12M shards into one training set.

DataCompDR-12M is published as reinforcements only (`<key>.paug.json`, `.syn.json`, `.npz`/`.pth.gz`) in
shards named and keyed like DataComp-12M's (`<key>.jpg`, `.txt`, `.json`, ...); its card merges the two with a
shell loop that untars both and tars them together. This does the same per shard pair (paired by shard id: the
file's stem, with its folder's name where stems repeat, as in DataCompDR-1B), in parallel: the output
shard holds, for every key present in both, the members of both (in key order of the image shard).

Checks: a key in only one of the two shards, or whose merged sample lacks a DataCompDR member (synthetic
captions, augmentation parameters, embeddings), is counted and left out (not one reinforced sample is an
error: the wrong folder was given); a caption or image present in both with different bytes, or `.json`
members with different uids, are an error for that shard (the shards do not belong together; the two `.json`
objects are otherwise merged); `.json` members with different image sha256s (the URL's image changed since
DataCompDR was made, so its embeddings describe another image) are counted as `image_changed` and left out.
Members other than the image shard's (image, `.txt`, `.json`) and DataCompDR's (`.url.txt`, `.syn.json`,
`.paug.json`, `.npz`, `.pth.gz`) are dropped and counted (`dropped_members`): webdataset's default decoders
unpickle a `.pyd` or `.pickle`. After writing, the output is read back and every member compared with its
source, byte for byte. Each output shard gets `<shard>_stats.json`; the step runner keeps its records in
`<out>/_dr_join/` (a killed join redoes only unfinished pairs), and `<out>/dr_join.json` sums the counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from functools import partial
from pathlib import Path

from dr import sample as drs
from mode.core.errors import UserError
from mode.core.runner import inputs_hash, run_per_shard
from mode.core.shards import (
    IMAGE_EXTS,
    expand,
    iter_tar,
    overlaps,
    shard_ids,
    tar_stats,
    tar_writer,
    write_json,
    write_tar_stats,
)
from mode.core.step import positive_int, rank_arguments

# what a joined sample may hold: the image shard's (img2dataset's) members and DataCompDR's. Others are dropped
# and counted: webdataset's default decoders would unpickle a `.pyd` or `.pickle` member of a training set.
KNOWN_MEMBERS = (*IMAGE_EXTS, "txt", "json", "url.txt", drs.SYN_MEMBER, drs.PAUG_MEMBER, *drs.EMBEDDING_FORMATS)


def _known(members: dict[str, bytes], counts: Counter) -> dict[str, bytes]:
    kept = {ext: data for ext, data in members.items() if ext in KNOWN_MEMBERS}
    counts["dropped_members"] += len(members) - len(kept)
    return kept


def _digest(members: dict[str, bytes]) -> dict[str, str]:
    return {ext: hashlib.sha256(data).hexdigest() for ext, data in members.items()}


def _reinforced(members: dict[str, bytes]) -> bool:
    """Whether a sample holds DataCompDR's members: synthetic captions, augmentation parameters, embeddings."""
    return (drs.SYN_MEMBER in members and drs.PAUG_MEMBER in members
            and any(ext in members for ext in drs.EMBEDDING_FORMATS))


class ImageChanged(Exception):
    """The two `.json` members name different image hashes: the image shard's download is not the image the
    reinforcements were computed on (the URL's content changed), so the sample is counted and left out."""


def merge_sample(base: dict[str, bytes], extra: dict[str, bytes], where: str) -> dict[str, bytes]:
    """One key's members of both shards. The caption and image must be the same bytes (else the shards do not
    belong together). DataCompDR's `.json` ({uid, sha256}) and the image shard's (img2dataset's fields) are merged
    into one object: their uids must agree, and different sha256s raise ImageChanged; any other member in both is
    the reinforcements' copy, as the card's untar-both-then-tar leaves it."""
    merged = dict(base)
    for ext, data in extra.items():
        if ext not in merged or merged[ext] == data:
            merged[ext] = data
        elif ext == "json":
            merged[ext] = _merge_json(merged[ext], data, where)
        elif ext == "txt" or ext in IMAGE_EXTS:
            raise UserError(f"{where} has different {ext!r} members; these shards do not belong together")
        else:
            merged[ext] = data
    return merged


def _merge_json(base: bytes, extra: bytes, where: str) -> bytes:
    try:
        a, b = json.loads(base), json.loads(extra)
    except ValueError:
        a = b = None
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return extra
    if "uid" in a and "uid" in b and a["uid"] != b["uid"]:
        raise UserError(f"{where} has a different 'uid' in its .json members ({a['uid']!r} vs {b['uid']!r}); "
                        "these shards do not belong together")
    if a.get("sha256") and b.get("sha256") and a["sha256"] != b["sha256"]:
        raise ImageChanged
    return json.dumps({**a, **b}).encode()


def join_pair(base: str, reinforcements: str, out: str) -> dict:
    """Merge one shard pair into `out` and verify it; returns the shard's counts."""
    errors: Counter = Counter()
    counts = Counter()
    extra = {key: _known(members, counts) for key, members in iter_tar(reinforcements, errors)}
    expected = {}
    with tar_writer(out) as sink:
        for key, members in iter_tar(base, errors):
            if key not in extra:
                counts["only_in_base"] += 1
                continue
            try:
                merged = merge_sample(_known(members, counts), extra.pop(key),
                                      f"{base} and {reinforcements}: sample {key}")
            except ImageChanged:
                counts["image_changed"] += 1
                continue
            if not _reinforced(merged):
                counts["no_reinforcement"] += 1
                continue
            sink.write(key, merged)
            expected[key] = _digest(merged)
            counts["joined"] += 1
    counts["only_in_reinforcements"] += len(extra)
    written = {key: _digest(members) for key, members in iter_tar(out)}
    if written != expected:
        raise UserError(f"{out}: read back differs from what was written (disk full or a concurrent writer?)")
    write_tar_stats(out, counts["joined"])
    return dict(counts) | {f"bad_tar_{k}": v for k, v in errors.items()}


def run(base: str, reinforcements: str, out: str, workers: int = 1, rank: int | None = None,
        world_size: int | None = None) -> dict:
    """Join every shard of `base` with the shard of `reinforcements` that has the same id (its file name, with
    its folder's where names repeat, as in DataCompDR-1B's `{00..64}/0000000N.tar`) into `out`, through the
    step runner (`out/_dr_join/`: a rerun redoes only unfinished pairs; ranks split the pairs)."""
    base_list, dr_list = expand(base), expand(reinforcements)
    for flag, paths in (("--shards", base_list), ("--reinforcements", dr_list)):  # outputs never replace inputs
        for folder in sorted({Path(p).resolve().parent for p in paths}):
            if overlaps(out, folder):
                raise UserError(f"--out {out} and the {flag} folder {folder} overlap: write the joined shards "
                                "elsewhere")
    base_ids, dr_ids = _pair_ids(base_list, "--shards"), _pair_ids(dr_list, "--reinforcements")
    pairs = {p: dr_ids[i] for i, p in base_ids.items() if i in dr_ids}
    if not pairs:
        raise UserError(f"no shard names in common between {base} and {reinforcements}")
    params = {"shards": inputs_hash(pairs), "reinforcements": inputs_hash(pairs.values()), "format_version": 2}
    s = run_per_shard("dr-join", Path(out) / "_dr_join", list(pairs), partial(_join_work, pairs, out), params,
                      rank=rank, world_size=world_size, workers=workers,
                      outputs=lambda i: [Path(out) / f"{i}.tar", tar_stats(Path(out) / f"{i}.tar")],
                      hint="use another --out, or delete that folder")
    if s["complete"] and not s.get("joined") and s.get("no_reinforcement"):
        raise UserError(f"no sample of {reinforcements} holds DataCompDR members ({drs.SYN_MEMBER}, "
                        f"{drs.PAUG_MEMBER}, {' or '.join(drs.EMBEDDING_FORMATS)}): --reinforcements must be the "
                        "DataCompDR shards (or `mode dr-generate --only-reinforcements` output)")
    summary = {"shards": len(pairs), "shards_only_in_base": len(base_ids.keys() - dr_ids.keys()),
               "shards_only_in_reinforcements": len(dr_ids.keys() - base_ids.keys()),
               **{k: v for k, v in s.items() if k not in ("step", "params", "params_hash")}}
    if s["complete"]:
        write_json(Path(out) / "dr_join.json", summary)
    return summary


def _pair_ids(paths: list[str], flag: str) -> dict:
    """{shard id: path} for one side (`shard_ids`: the file's stem, `<folder>-<stem>` where stems repeat). Where
    folder and file names both repeat, the ids hold a hash of the folder's path and cannot pair with the other
    side's: refused."""
    ids = shard_ids(paths)
    stems = {p: f"{Path(p).parent.name}-{Path(p).stem}" for p in paths}
    twice = next((p for p, i in ids.items() if i not in (Path(p).stem, stems[p])), None)
    if twice:
        raise UserError(f"{flag}: two shards are named {Path(twice).parent.name}/{Path(twice).name} (in "
                        "different places); dr-join pairs shards by file name and, where those repeat, folder "
                        "name: give folders with distinct names")
    return {i: p for p, i in ids.items()}


def _join_work(pairs: dict, out: str, path: str, shard_id: str) -> dict:
    c = join_pair(path, pairs[path], str(Path(out) / f"{shard_id}.tar"))
    skipped = {k: v for k, v in c.items()
               if k in ("only_in_base", "no_reinforcement", "image_changed") or k.startswith("bad_tar_")}
    return {"processed": c.get("joined", 0) + sum(skipped.values()), "kept": c.get("joined", 0), "skipped": skipped,
            **c}


# ------------------------------------------------------------------------------------------- `mode dr-join`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", required=True, help="the image-text shards (e.g. DataComp-12M)")
    p.add_argument("--reinforcements", required=True, help="the DataCompDR shards (same shard names and keys)")
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=positive_int, default=1)
    rank_arguments(p)


def main(args: argparse.Namespace) -> None:
    s = run(args.shards, args.reinforcements, args.out, args.workers, args.rank, args.world_size)
    print(f"dr-join: {s.get('joined', 0)} samples in {s['shards']} shards -> {args.out} "
          f"({s.get('only_in_base', 0)} only in the shards, {s.get('only_in_reinforcements', 0)} only in the "
          f"reinforcements, {s.get('no_reinforcement', 0)} without DataCompDR members, "
          f"{s.get('image_changed', 0)} whose image hash differs from DataCompDR's, "
          f"{s.get('dropped_members', 0)} unknown members dropped; "
          f"{sum(v for k, v in s.items() if k.startswith('bad_tar_'))} input tars cut or unreadable, read up to "
          "the damage)")
