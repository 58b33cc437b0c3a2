"""Step 0: read each shard's captions into `captions/<shard>.parquet` (uid, key, caption), in tar order.

Captions are cleaned as OpenCLIP's tokenizer cleans them (ftfy, HTML unescape, whitespace; `--cleaning open_clip`,
the default) or kept as the shard has them (`--cleaning none`: MoDE embeds the raw caption string). A sample
without a caption (or a blank one), without a uid, with unreadable json or an undecodable caption is counted
and skipped.
"""

from __future__ import annotations

import argparse
import html
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import ftfy
import pyarrow as pa
import pyarrow.parquet as pq

from mode.core.errors import UserError
from mode.core.layout import WorkDir
from mode.core.runner import run_per_shard
from mode.core.shards import atomic_write, expand, iter_tar
from mode.core.step import print_summary, shard_step_arguments
from mode.core.uids import NoUid, sample_uid

SCHEMA = pa.schema([("uid", pa.string()), ("key", pa.string()), ("caption", pa.string())])


def clean_caption(text: str) -> str:
    """The caption as OpenCLIP's tokenizer sees it before BPE: ftfy-fixed, HTML-unescaped twice, whitespace
    collapsed (open_clip.tokenizer's basic_clean + whitespace_clean, tested equal). Written out rather than
    imported: importing open_clip imports torch, 3 s and hundreds of MB in every spawned caption worker."""
    return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split())


CLEANINGS = {"open_clip": clean_caption, "none": lambda text: text}


def shard_captions(path: str, skipped: Counter, cleaning: str = "open_clip") -> Iterator[tuple[str, str, str]]:
    """`(uid, key, caption)` for each usable sample of a shard, counting the rest in `skipped` by reason. A key
    seen before in the shard is a `duplicate_key` skip: later steps find a sample by its key, and webdataset reads
    two samples of one key written side by side as one."""
    seen: set[str] = set()
    for key, members in iter_tar(path, skipped):
        if key in seen:
            skipped["duplicate_key"] += 1
            continue
        seen.add(key)
        if "txt" not in members:
            skipped["no_caption"] += 1
            continue
        try:
            uid = sample_uid(members)
        except NoUid as e:
            skipped[e.reason] += 1
            continue
        try:
            caption = CLEANINGS[cleaning](members["txt"].decode("utf-8"))
        except UnicodeDecodeError:
            skipped["bad_caption"] += 1
            continue
        if not caption.strip():
            skipped["no_caption"] += 1
            continue
        yield uid, key, caption


def _work(work_dir: str, cleaning: str, path: str, shard_id: str) -> dict:
    skipped: Counter = Counter()
    rows = list(shard_captions(path, skipped, cleaning))
    table = pa.Table.from_arrays([pa.array(col, pa.string()) for col in zip(*rows)] if rows else
                                 [pa.array([], pa.string())] * 3, schema=SCHEMA)
    with atomic_write(WorkDir(work_dir).captions(shard_id)) as f:
        pq.write_table(table, f)
    return {"processed": len(rows) + sum(v for k, v in skipped.items() if not k.endswith("_tar")),
            "kept": len(rows), "skipped": dict(skipped)}


def run(shards: str, work_dir: str, rank: int | None = None, world_size: int | None = None,
        workers: int = 1, cleaning: str = "open_clip") -> dict:
    """Write captions/<shard>.parquet for this rank's shards; return the step summary."""
    if cleaning not in CLEANINGS:
        raise UserError(f"--cleaning {cleaning!r}: expected one of {', '.join(CLEANINGS)}")
    wd = WorkDir(Path(work_dir))
    recorded = "open_clip basic_clean+whitespace_clean" if cleaning == "open_clip" else cleaning
    return run_per_shard("captions", wd.captions_dir, expand(shards), partial(_work, str(wd.root), cleaning),
                         params={"cleaning": recorded},
                         rank=rank, world_size=world_size, workers=workers, outputs=lambda i: [wd.captions(i)])


# ------------------------------------------------------------------------------------------- `mode captions`

def add_arguments(p: argparse.ArgumentParser) -> None:
    shard_step_arguments(p)
    p.add_argument("--cleaning", choices=tuple(CLEANINGS), default="open_clip",
                   help="open_clip: as its tokenizer cleans (ftfy, HTML unescape, whitespace); none: the caption as "
                        "the shard has it (MoDE's)")


def main(args: argparse.Namespace) -> None:
    print_summary(run(args.shards, args.work_dir, args.rank, args.world_size, args.workers, args.cleaning))
