"""`mode metadata`: dataset2metadata's metadata computation from its yml, written in the pool layout.

Reads dataset2metadata's yml as written (`models`, `postprocess_columns`, `postprocess_features`,
`additional_fields`, `nworkers`, `batch_size`, `device`, `input_tars`, `output_metadata_dir`, `custom_pypath`,
`reprocess`, `use_datacomp_keys`; its `tars_per_wds`, `logging` and `warn_and_continue` are accepted), or the same
as flags, which win over the yml. Unknown keys, unknown names and missing dependencies are one-line errors
before any model loads.

Where dataset2metadata writes one `<md5 of the tar list>.parquet/.npz` per group of tars, this writes one pair
per input shard, named by the shard (`OUT/<shard>.parquet` + `OUT/<shard>.npz`), the layout `mode filter` and the
rest of this project read; rows in tar order. It runs through the per-shard runner: ranks from flags or
torchrun/SLURM, a shard complete once its stats record is written (in `OUT/.mode-metadata/`), a killed run
redoes only unfinished shards, `reprocess: true` redoes all. All models of a batch run once for all their columns.
Every sample needs a decodable image and a caption, whatever the models read, as in dataset2metadata's loader (a cut
JPEG decodes: its LOAD_TRUNCATED_IMAGES) and a json member, if any, that parses. Samples that cannot be used
(undecodable image, no caption, a json that does not parse, no json or a missing field when fields are read, a
json value parquet cannot hold or one of another type than the rest of its column in the shard) are counted by
reason and left out, as dataset2metadata's `warn_and_continue` leaves out what it cannot decode.
Json fields are written as its pandas -> pyarrow writer writes them: lists and objects as list and struct columns.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from mode.core.errors import UserError
from mode.core.runner import run_per_shard
from mode.core.shards import atomic_write, expand, for_rank, iter_tar, rank_and_world, shard_ids
from mode.core.step import print_summary, rank_arguments

log = logging.getLogger(__name__)

REQUIRED = ("models", "nworkers", "batch_size", "device", "input_tars", "output_metadata_dir")
OPTIONAL = ("postprocess_columns", "postprocess_features", "additional_fields", "custom_pypath", "reprocess",
            "use_datacomp_keys", "tars_per_wds", "logging", "warn_and_continue")
LISTS = ("models", "postprocess_columns", "postprocess_features", "additional_fields")
IMAGE_EXTS = ("jpg", "png", "jpeg", "webp")


@dataclass
class Config:
    models: list[str]
    input_tars: list[str]
    output_metadata_dir: str
    nworkers: int = 0
    batch_size: int = 512
    device: int | str = 0
    postprocess_columns: list[str] = field(default_factory=list)
    postprocess_features: list[str] = field(default_factory=list)
    additional_fields: list[str] = field(default_factory=list)
    custom_pypath: str | None = None
    reprocess: bool = False
    use_datacomp_keys: bool = False


def read_yml(path: str) -> dict:
    import yaml

    try:
        with open(path) as f:
            values = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not a readable yml ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of dataset2metadata's keys")
    return values


def make_config(values: dict, where: str = "the yml") -> Config:
    """dataset2metadata's keys -> a checked Config; unknown or missing keys and wrong types are one line."""
    unknown = sorted(set(values) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise UserError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(REQUIRED + OPTIONAL)})")
    missing = [k for k in REQUIRED if values.get(k) is None]
    if missing:
        raise UserError(f"{where}: missing required field {missing[0]!r}")
    for key in LISTS:
        v = values.get(key)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
            raise UserError(f"{where}: {key} must be a list of names, got {v!r}")
    for key in ("nworkers", "batch_size"):
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "batch_size" else 0):
            raise UserError(f"{where}: {key} must be an integer >= {1 if key == 'batch_size' else 0}, got {v!r}")
    tars = values["input_tars"]
    tars = [tars] if isinstance(tars, str) else tars
    if not isinstance(tars, list) or not tars or not all(isinstance(t, str) for t in tars):
        raise UserError(f"{where}: input_tars must be a path or brace pattern, or a list of them")
    out = values["output_metadata_dir"]
    if not isinstance(out, str) or "://" in out:
        raise UserError(f"{where}: output_metadata_dir must be a local folder, got {out!r}")
    custom = values.get("custom_pypath")
    if custom is not None and not isinstance(custom, str):
        raise UserError(f"{where}: custom_pypath must be the path of a Python file, got {custom!r}")
    for key in ("reprocess", "use_datacomp_keys"):
        if values.get(key) is not None and not isinstance(values[key], bool):
            raise UserError(f"{where}: {key} must be true or false, got {values[key]!r}")
    if values.get("tars_per_wds"):
        log.info("tars_per_wds: ignored, every shard is written as its own parquet/npz pair")
    cfg = Config(models=values["models"], input_tars=tars, output_metadata_dir=os.path.expanduser(out),
                 nworkers=values["nworkers"], batch_size=values["batch_size"], device=values["device"],
                 postprocess_columns=values.get("postprocess_columns") or [],
                 postprocess_features=values.get("postprocess_features") or [],
                 additional_fields=values.get("additional_fields") or [],
                 custom_pypath=os.path.expanduser(custom) if custom else None,
                 reprocess=bool(values.get("reprocess")), use_datacomp_keys=bool(values.get("use_datacomp_keys")))
    _check_unique(cfg, where)
    return cfg


def _check_unique(cfg: Config, where: str) -> None:
    """One name per parquet column and per npz array, as written (use_datacomp_keys renames caption to text)."""
    for kind, names in (("parquet column", [*cfg.postprocess_columns, *cfg.additional_fields]),
                        ("npz array", cfg.postprocess_features)):
        seen: dict[str, str] = {}
        for name, written in zip(names, _names(cfg, names)):
            if written in seen:
                raise UserError(f"{where}: {name!r} is listed twice" if seen[written] == name else
                                f"{where}: {seen[written]!r} and {name!r} would both be the {kind} {written!r} "
                                "(use_datacomp_keys' name): leave one out")
            seen[written] = name


def check_names(cfg: Config, registry) -> list[str]:
    """Every name known and every dependency listed; returns the models in dependency order."""
    for key, table in (("models", registry.models), ("postprocess_columns", registry.columns),
                       ("postprocess_features", registry.features)):
        for name in getattr(cfg, key):
            if name not in table:
                raise UserError(f"{key}: unknown name {name!r} (known: {', '.join(sorted(table))}; custom_pypath "
                                "adds your own)")
    order: list[str] = []

    def visit(name: str, path: tuple) -> None:
        if name in order:
            return
        if name in path:
            raise UserError(f"models: {name!r} depends on itself through {' -> '.join(path)}")
        if name not in cfg.models:
            raise UserError(f"models: {path[-1]!r} needs {name!r}: add it to models")
        cls = registry.models[name]
        for dep in cls.dependencies:
            visit(dep, (*path, name))
        for pre in cls.preprocessors:
            if pre not in registry.preprocessors:
                raise UserError(f"model {name!r}: unknown preprocessor {pre!r}")
        order.append(name)

    for name in cfg.models:
        visit(name, ())
    for key in ("postprocess_columns", "postprocess_features"):
        table = registry.columns if key == "postprocess_columns" else registry.features
        for name in getattr(cfg, key):
            needs = getattr(table[name], "keywords", {}).get("model")
            if needs and needs not in cfg.models:
                raise UserError(f"{key}: {name!r} is computed by model {needs!r}: add it to models")
    if not cfg.postprocess_columns and not cfg.postprocess_features and not cfg.additional_fields:
        raise UserError("nothing to write: give postprocess_columns, postprocess_features or additional_fields")
    return order


class BadSample(Exception):
    def __init__(self, reason: str):
        self.reason = reason


class Plan:
    """What each sample becomes: the distinct (raw input, preprocessor) pairs of the models, in model order, and
    for each model the positions of its inputs among them."""

    def __init__(self, cfg: Config, registry, order: list[str]):
        self.order = order
        self.directives: list[tuple[str, str]] = []
        self.inputs: dict[str, list[int]] = {}
        for name in order:
            cls = registry.models[name]
            if len(cls.raw_inputs) != len(cls.preprocessors):
                raise UserError(f"model {name!r}: {len(cls.raw_inputs)} raw_inputs but "
                                f"{len(cls.preprocessors)} preprocessors")
            idx = []
            for pair in zip(cls.raw_inputs, cls.preprocessors):
                if pair not in self.directives:
                    self.directives.append(pair)
                idx.append(self.directives.index(pair))
            self.inputs[name] = idx
        self.fields = list(cfg.additional_fields)
        self.preprocessors = [registry.preprocessors[p] for _, p in self.directives]

    def sample(self, members: dict[str, bytes]) -> tuple[list, list]:
        """One sample's preprocessed inputs and its json fields, or BadSample with the reason. As in
        dataset2metadata's loader (decode, then rename image=jpg;png;jpeg;webp, text=txt), every sample needs a
        decodable image and caption, whatever its models read."""
        raws = {"image": _image(members), "text": _caption(members)}
        fields: list = []
        if self.fields or any(raw == "json" for raw, _ in self.directives):
            meta = _json(members)
            if any(k not in meta for k in self.fields):
                raise BadSample("missing_json_field")
            fields = [meta[k] for k in self.fields]
            if not all(_storable(v) for v in fields):  # e.g. a lone surrogate: no parquet cell
                raise BadSample("bad_json_field")
            raws["json"] = fields if self.fields else meta  # dataset2metadata's json: the fields, else the dict
        elif "json" in members:  # read by no one, still decoded by its loader: a broken one drops the sample
            _json(members)
        try:
            return [pre(raws[raw]) for (raw, _), pre in zip(self.directives, self.preprocessors)], fields
        except (OSError, ValueError) as e:
            log.debug(f"preprocessing failed: {e}")
            raise BadSample("preprocess_failed") from None


def _image(members: dict[str, bytes]):
    from PIL import Image

    ext = next((e for e in IMAGE_EXTS if e in members), None)
    if ext is None:
        raise BadSample("no_image")
    try:
        with Image.open(io.BytesIO(members[ext])) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        raise BadSample("bad_image") from None


def _caption(members: dict[str, bytes]) -> str:
    if "txt" not in members:
        raise BadSample("no_caption")
    try:
        return members["txt"].decode("utf-8")
    except UnicodeDecodeError:
        raise BadSample("bad_caption") from None


def _json(members: dict[str, bytes]) -> dict:
    try:
        meta = json.loads(members["json"])
    except KeyError:
        raise BadSample("no_json") from None
    except ValueError:
        raise BadSample("bad_json") from None
    if not isinstance(meta, dict):
        raise BadSample("missing_json_field")
    return meta


# pyarrow's ArrowInvalid, ArrowTypeError, ArrowNotImplementedError are these too
_ARROW_ERRORS = (ValueError, TypeError, NotImplementedError, OverflowError, UnicodeEncodeError)


def _storable(value) -> bool:
    """A json field value a parquet cell holds, as dataset2metadata's pandas -> pyarrow writer stores it: anything
    pyarrow types on its own (numbers, strings, lists, objects; not a lone surrogate, an int past 64 bits, a list
    mixing strings and numbers) with no empty object in it (parquet has no struct without fields)."""
    if value is None or isinstance(value, (bool, float)) or (isinstance(value, int) and -2**63 <= value < 2**63):
        return True
    import pyarrow as pa

    try:
        if isinstance(value, str):  # the common case, without pyarrow
            value.encode("utf-8")
            return True
        return _writable(pa.array([value]).type)
    except _ARROW_ERRORS:
        return False


def _writable(type_) -> bool:
    import pyarrow as pa

    if pa.types.is_struct(type_):
        return type_.num_fields > 0 and all(_writable(type_.field(i).type) for i in range(type_.num_fields))
    if pa.types.is_list(type_):
        return _writable(type_.value_type)
    return True


def _kind(value) -> str:
    return {bool: "bool", int: "number", float: "number", str: "string", list: "list", dict: "object"}[type(value)]


def _fits(values: list, type_=None) -> bool:
    import pyarrow as pa

    try:
        pa.array(values, type=type_)
        return True
    except _ARROW_ERRORS:
        return False


def _odd_ones(path: str, name: str, values: list) -> list[int]:
    """Positions of the values one parquet column of the others cannot hold: none when pyarrow types them all
    together (ints with floats, lists of any length, objects with other keys), else those of another kind (number,
    bool, string, list, object) than the most common one, then any of that kind not of its most common type."""
    import pyarrow as pa

    if _fits(values):
        return []
    kinds = [None if v is None else _kind(v) for v in values]
    common = Counter(k for k in kinds if k).most_common(1)[0][0]
    odd = {i for i, k in enumerate(kinds) if k not in (None, common)}
    if not _fits([v for i, v in enumerate(values) if i not in odd]):  # e.g. lists of strings and lists of numbers
        type_ = Counter(pa.array([v]).type for i, v in enumerate(values) if kinds[i] == common).most_common(1)[0][0]
        odd |= {i for i, v in enumerate(values) if kinds[i] == common and not _fits([v], type_)}
        if not _fits([v for i, v in enumerate(values) if i not in odd]):
            raise UserError(f"{path}: the json field {name!r} holds values pyarrow cannot put in one column")
    return sorted(odd)


def _column(path: str, name: str, values: list, type_=None):
    import pyarrow as pa

    try:
        return pa.array(values, type=type_)
    except _ARROW_ERRORS as e:
        raise UserError(f"{path}: the column {name!r} cannot be stored in parquet ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _prepared(path: str, plan: Plan, worker: int = 0, workers: int = 1):
    """(index, inputs, fields) for each usable sample of a tar this worker takes (every workers-th), and
    ("skip", reason) items for the rest, so that the counts survive DataLoader workers."""
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True  # dataset2metadata's setting (every process): a cut JPEG decodes
    skipped: Counter = Counter()
    for i, (_, members) in enumerate(iter_tar(path, skipped)):
        if i % workers != worker:
            continue
        try:
            inputs, fields = plan.sample(members)
        except BadSample as e:
            yield ("skip", e.reason)
            continue
        yield (i, inputs, fields)
    if worker == 0:
        for reason, n in skipped.items():
            for _ in range(n):
                yield ("skip", reason)


def _stream(path: str, plan: Plan, nworkers: int):
    if nworkers <= 1:
        yield from _prepared(path, plan)
        return
    import torch

    class Tar(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            return _prepared(path, plan, info.id, info.num_workers)

    loader = torch.utils.data.DataLoader(Tar(), batch_size=None, num_workers=nworkers,
                                         collate_fn=lambda x: x)
    yield from loader


def _collate(values: list):
    """One input of a batch as webdataset's default_collation_fn makes it (dataset2metadata's wds.batched): numbers
    -> a numpy array, tensors stacked, numpy arrays -> one numpy array, anything else (strings, faces-aug's
    (image, padding) tuples) a list."""
    import torch

    first = values[0]
    if isinstance(first, (int, float)):
        return np.array(values)
    if isinstance(first, torch.Tensor):
        return torch.stack(values)
    if isinstance(first, np.ndarray):
        return np.array(values)
    return list(values)


def _to(value, device):
    """A to_device model's input moved as dataset2metadata moves it: a list of tuples of tensors (faces-aug's)
    transposed, each part concatenated on the device; a tensor moved; anything else as it is."""
    import torch

    if isinstance(value, list) and isinstance(value[0], tuple) and all(torch.is_tensor(v) for v in value[0]):
        return [torch.cat(part).to(device, non_blocking=True) for part in zip(*value)]
    if hasattr(value, "to"):
        return value.to(device, non_blocking=True)
    return value


class Pipeline:
    """The models of one run, built once per process, and what a batch becomes."""

    def __init__(self, cfg: Config, registry, order: list[str], device: str):
        import urllib.error

        from mode.datacomp.d2m import model_device

        self.cfg, self.registry, self.device = cfg, registry, device
        self.plan = Plan(cfg, registry, order)
        self.models = {}
        for name in order:
            log.info(f"metadata: loading {name} on {device}")
            try:
                self.models[name] = registry.models[name](model_device(cfg.device, device))
            except (OSError, RuntimeError, ValueError, urllib.error.URLError) as e:  # weights missing, offline, ...
                text = str(e).strip().splitlines()
                raise UserError(f"model {name!r} could not be loaded on {device}: {type(e).__name__}: "
                                f"{text[0] if text else ''} (offline? see README: what needs a download)") from None

    def batch(self, items: list) -> tuple[dict, dict]:
        import torch

        columns = [_collate([inputs[k] for _, inputs, _ in items]) for k in range(len(self.plan.directives))]
        outputs: dict = {}
        with torch.inference_mode():
            for name in self.plan.order:
                model = self.models[name]
                args = [columns[k] for k in self.plan.inputs[name]]
                if getattr(model, "to_device", False):
                    args = [_to(a, self.device) for a in args]
                outputs[name] = model(*args, *(outputs[d] for d in type(model).dependencies))
            if self.plan.fields:
                outputs["json"] = [fields for _, _, fields in items]
            cols = {c: _as_column(self.registry.columns[c](outputs), c, len(items))
                    for c in self.cfg.postprocess_columns}
            feats = {f: _as_array(self.registry.features[f](outputs), f) for f in self.cfg.postprocess_features}
        for j, name in enumerate(self.plan.fields):
            cols[name] = [fields[j] for _, _, fields in items]
        return cols, feats


def _as_column(value, name: str, rows: int) -> list:
    """A postprocessor's output as one value per sample: [B] -> numbers, [B, k] -> a list per sample (as
    dataset2metadata's writer, torch.cat(...).tolist()), a list as it is."""
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    if isinstance(value, np.ndarray):
        value = value.reshape(-1).tolist() if value.ndim <= 1 else value.tolist()
    value = list(value)
    if len(value) != rows:
        raise UserError(f"postprocess_columns {name!r}: {len(value)} values for a batch of {rows} samples "
                        "(expected one per sample)")
    return value


def _as_array(value, name: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim != 2:
        raise UserError(f"postprocess_features {name!r}: expected [batch, dim], got shape {arr.shape}")
    return arr


_PIPELINES: dict = {}


def _pipeline(cfg: Config, order: list[str]) -> Pipeline:
    """Models load on the first shard this process processes (never when all are done), then are reused."""
    from mode.datacomp.d2m import Registry, torch_device

    key = json.dumps(asdict(cfg), sort_keys=True, default=str)
    if key not in _PIPELINES:
        _PIPELINES.clear()
        _PIPELINES[key] = Pipeline(cfg, Registry(cfg.custom_pypath), order, torch_device(cfg.device))
    return _PIPELINES[key]


def _names(cfg: Config, names: list[str]) -> list[str]:
    if not cfg.use_datacomp_keys:
        return list(names)
    from mode.datacomp.d2m import DATACOMP_KEYS

    return [DATACOMP_KEYS.get(n, n) for n in names]


def _collect(cfg: Config, pipe: Pipeline, path: str) -> tuple[list, dict, dict, Counter]:
    """The shard's model outputs and fields, batch by batch: sample indices, columns, feature arrays, skips."""
    skipped: Counter = Counter()
    rows: list[int] = []
    cols: dict[str, list] = {c: [] for c in [*cfg.postprocess_columns, *cfg.additional_fields]}
    feats: dict[str, list] = {f: [] for f in cfg.postprocess_features}
    pending: list = []

    def flush():
        c, f = pipe.batch(pending)
        rows.extend(i for i, _, _ in pending)
        for k, v in c.items():
            cols[k].extend(v)
        for k, v in f.items():
            feats[k].append(v)
        pending.clear()

    for item in _stream(path, pipe.plan, cfg.nworkers):
        if item[0] == "skip":
            skipped[item[1]] += 1
            continue
        pending.append(item)
        if len(pending) >= cfg.batch_size:
            flush()
    if pending:
        flush()
    return rows, cols, feats, skipped


def _kept(cfg: Config, path: str, rows: list, cols: dict, skipped: Counter) -> np.ndarray:
    """The rows to write, in tar order (whatever the workers did), less those whose json field is of another type
    than the rest of its column (e.g. one numeric uid among strings): counted mixed_json_field."""
    order = np.argsort(np.asarray(rows, dtype=np.int64), kind="stable")
    keep = np.ones(len(order), dtype=bool)
    for name in cfg.additional_fields:
        keep[_odd_ones(path, name, [cols[name][i] for i in order])] = False
    if not keep.all():
        skipped["mixed_json_field"] += int((~keep).sum())
    return order[keep]


def _write(cfg: Config, path: str, shard_id: str, cols: dict, feats: dict, order: np.ndarray) -> None:
    """`<shard>.parquet` and `<shard>.npz`, atomically; an output this configuration does not make (a reprocess
    without features) is removed, not left beside the new one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(cfg.output_metadata_dir)
    boxes = pa.list_(pa.list_(pa.float64()))  # typed even for a shard without faces
    if cols:
        table = pa.table({n: _column(path, n, [cols[c][i] for i in order], boxes if c == "face-boxes" else None)
                          for n, c in zip(_names(cfg, list(cols)), cols)})
        with atomic_write(out / f"{shard_id}.parquet") as f:
            pq.write_table(table, f)
    if feats:
        arrays = {n: (np.concatenate(feats[k])[order] if feats[k] else np.zeros((0, 0), np.float32))
                  for n, k in zip(_names(cfg, list(feats)), feats)}
        with atomic_write(out / f"{shard_id}.npz") as f:
            np.savez_compressed(f, **arrays)
    for suffix, made in ((".parquet", cols), (".npz", feats)):
        if not made:
            (out / f"{shard_id}{suffix}").unlink(missing_ok=True)


def _work(cfg: Config, order: list[str], path: str, shard_id: str) -> dict:
    rows, cols, feats, skipped = _collect(cfg, _pipeline(cfg, order), path)
    processed = len(rows) + sum(v for k, v in skipped.items() if not k.endswith("_tar"))
    kept = _kept(cfg, path, rows, cols, skipped)
    _write(cfg, path, shard_id, cols, feats, kept)
    return {"processed": processed, "kept": len(kept), "skipped": dict(skipped)}


def run(cfg: Config, rank: int | None = None, world_size: int | None = None) -> dict:
    from mode.datacomp.d2m import Registry, torch_device

    registry = Registry(cfg.custom_pypath)
    order = check_names(cfg, registry)
    torch_device(cfg.device)  # a bad device is refused before anything runs
    paths = [p for spec in cfg.input_tars for p in expand(spec)]
    if not paths:
        raise UserError(f"input_tars {cfg.input_tars}: no tar files")
    out = Path(cfg.output_metadata_dir)
    step_dir = out / ".mode-metadata"
    if not step_dir.is_dir() and (any(out.glob("*.parquet")) or any(out.glob("*.npz"))):
        raise UserError(f"output_metadata_dir {out} holds metadata `mode metadata` did not write (a pool's own?): "
                        "it would be overwritten; choose an empty folder")
    params = {"models": cfg.models, "columns": cfg.postprocess_columns, "features": cfg.postprocess_features,
              "fields": cfg.additional_fields, "use_datacomp_keys": cfg.use_datacomp_keys,
              "custom": hashlib.sha256(Path(cfg.custom_pypath).read_bytes()).hexdigest()[:16]
              if cfg.custom_pypath else None}
    rank, world_size = rank_and_world(rank, world_size)
    # dataset2metadata's reprocess: this rank's shards again, whatever was made before; shards of other ranks done
    # with other settings are forgotten too (drop_stale), so that each rank redoes its own
    if cfg.reprocess:
        ids = shard_ids(paths)
        for p in for_rank(paths, rank, world_size):
            (step_dir / f"{ids[p]}.stats.json").unlink(missing_ok=True)
    suffixes = ([".parquet"] if cfg.postprocess_columns or cfg.additional_fields else []) + \
        ([".npz"] if cfg.postprocess_features else [])
    return run_per_shard("metadata", step_dir, paths, partial(_work, cfg, order), params, rank=rank,
                         world_size=world_size, outputs=lambda i: [out / f"{i}{s}" for s in suffixes],
                         hint="set reprocess: true (--reprocess) on every rank to redo all shards with these "
                         "settings, or use a new output_metadata_dir", drop_stale=cfg.reprocess)


# --------------------------------------------------------------------------------------------- `mode metadata`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--yml", default=None, help="dataset2metadata's yml; the flags below override its keys")
    for key in LISTS:
        p.add_argument(f"--{key.replace('_', '-')}", default=None, metavar="A,B", help=f"{key} (comma list)")
    p.add_argument("--input-tars", default=None, help="shards: a path, a brace pattern or '::'-joined paths")
    p.add_argument("--output-metadata-dir", default=None, help="where <shard>.parquet and <shard>.npz go")
    p.add_argument("--nworkers", type=int, default=None, help="decoding processes (dataset2metadata's nworkers)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per model call")
    p.add_argument("--device", default=None, help="a CUDA index (dataset2metadata's), cpu or cuda:N")
    p.add_argument("--custom-pypath", default=None, help="a Python file adding models/pre/postprocessors")
    p.add_argument("--reprocess", action=argparse.BooleanOptionalAction, default=None,
                   help="redo every shard (default: only those not done)")
    p.add_argument("--use-datacomp-keys", action=argparse.BooleanOptionalAction, default=None,
                   help="DataComp's column names (clip_b32_similarity_score, face_bboxes, b32_img, ...)")
    rank_arguments(p)
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="slurm: a job array of --ranks tasks, each a process with its share of the shards")
    p.add_argument("--ranks", type=int, default=1, help="slurm: array tasks (rank r takes every R-th shard)")
    p.add_argument("--gpus-per-task", type=int, default=0, help="slurm: GPUs per task (0: CPU)")
    p.add_argument("--cpus-per-task", type=int, default=None, help="slurm: CPUs per task (default nworkers + 1)")
    p.add_argument("--time", type=int, default=240, help="slurm: time limit per task, minutes")
    for flag in ("--partition", "--account", "--constraint"):
        p.add_argument(flag, default=None, help=f"slurm: {flag[2:]}")
    p.add_argument("--folder", default="logs/submitit", help="slurm: submitit's job folder")
    p.add_argument("--wait", action="store_true", help="slurm: follow the tasks to their final states")


def config_from_args(args: argparse.Namespace) -> Config:
    values = read_yml(args.yml) if args.yml else {}
    where = args.yml or "the flags"
    for key in (*REQUIRED, *OPTIONAL):
        flag = getattr(args, key, None)
        if flag is None:
            continue
        if key in LISTS:
            flag = [x.strip() for x in flag.split(",") if x.strip()]
        elif key == "device":
            flag = int(flag) if flag.lstrip("-").isdigit() else flag
        values[key] = flag
    return make_config(values, where)


def submit(cfg: Config, args: argparse.Namespace) -> None:
    """The run as a SLURM job array: the resolved settings go to `OUT/.mode-metadata/submitted.yml`, which every
    task reads with its rank; a resubmission redoes only the shards not done."""
    import yaml

    from mode.core import jobs
    from mode.datacomp.d2m import Registry

    if args.ranks < 1 or args.gpus_per_task < 0:
        raise UserError(f"--ranks {args.ranks} / --gpus-per-task {args.gpus_per_task}: expected >= 1 / >= 0")
    check_names(cfg, Registry(cfg.custom_pypath))
    paths = [p for spec in cfg.input_tars for p in expand(spec)]
    spec = Path(cfg.output_metadata_dir) / ".mode-metadata" / "submitted.yml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(spec, "w") as f:
        yaml.safe_dump(asdict(cfg), f, sort_keys=False)
    ex = jobs.executor("slurm", args.folder, "mode_metadata", gpus_per_node=args.gpus_per_task,
                       cpus_per_task=args.cpus_per_task or cfg.nworkers + 1, time_min=args.time,
                       partition=args.partition, account=args.account, constraint=args.constraint)
    group = jobs.submit_ranks(ex, "mode.datacomp.metadata", ["--yml", str(spec)], args.ranks, "the metadata jobs")
    print(f"metadata: submitted job {jobs.base_id(group[0].job_id)} (array of {args.ranks}); logs in {args.folder}",
          flush=True)
    if args.wait:
        step_dir = spec.parent
        finals = jobs.follow({"metadata": group}, progress=lambda _: f"{len(list(step_dir.glob('*.stats.json')))}"
                             f"/{len(paths)} shards done")
        failed = jobs.report({"metadata": group}, finals)
        if failed:
            raise UserError(f"{len(failed)} metadata job(s) did not complete:\n  " + "\n  ".join(failed)
                            + "\nsubmit the same command again to redo only the unfinished shards")


def main(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    if args.executor == "slurm":
        submit(cfg, args)
        return
    print_summary(run(cfg, args.rank, args.world_size))
