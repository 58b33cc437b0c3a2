"""Step 0: read each shard's captions into `captions/<shard>.parquet` (uid, key, caption), in tar order.

Captions are cleaned as OpenCLIP's tokenizer cleans them (ftfy, HTML unescape, whitespace). A sample without
a caption, without a uid, with unreadable json or an undecodable caption is counted and skipped.
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


def shard_captions(path: str, skipped: Counter) -> Iterator[tuple[str, str, str]]:
    """`(uid, key, caption)` for each usable sample of a shard, counting the rest in `skipped` by reason."""
    for key, members in iter_tar(path, skipped):
        if "txt" not in members:
            skipped["no_caption"] += 1
            continue
        try:
            uid = sample_uid(members)
        except NoUid as e:
            skipped[e.reason] += 1
            continue
        try:
            caption = clean_caption(members["txt"].decode("utf-8"))
        except UnicodeDecodeError:
            skipped["bad_caption"] += 1
            continue
        if not caption:
            skipped["no_caption"] += 1
            continue
        yield uid, key, caption


def _work(work_dir: str, path: str, shard_id: str) -> dict:
    skipped: Counter = Counter()
    rows = list(shard_captions(path, skipped))
    table = pa.Table.from_arrays([pa.array(col, pa.string()) for col in zip(*rows)] if rows else
                                 [pa.array([], pa.string())] * 3, schema=SCHEMA)
    with atomic_write(WorkDir(work_dir).captions(shard_id)) as f:
        pq.write_table(table, f)
    return {"processed": len(rows) + sum(v for k, v in skipped.items() if not k.endswith("_tar")),
            "kept": len(rows), "skipped": dict(skipped)}


def run(shards: str, work_dir: str, rank: int | None = None, world_size: int | None = None,
        workers: int = 1) -> dict:
    """Write captions/<shard>.parquet for this rank's shards; return the step summary."""
    wd = WorkDir(Path(work_dir))
    return run_per_shard("captions", wd.captions_dir, expand(shards), partial(_work, str(wd.root)),
                         params={"cleaning": "open_clip basic_clean+whitespace_clean"},
                         rank=rank, world_size=world_size, workers=workers, outputs=lambda i: [wd.captions(i)])


# ------------------------------------------------------------------------------------------- `mode captions`

def add_arguments(p: argparse.ArgumentParser) -> None:
    shard_step_arguments(p)


def main(args: argparse.Namespace) -> None:
    print_summary(run(args.shards, args.work_dir, args.rank, args.world_size, args.workers))
