"""`mode evaluate`: zero-shot classification and retrieval of one or more checkpoints on every task.

For each task the images are decoded once and preprocessed once per distinct preprocessing (experts of one
recipe share it), then every model encodes the same batch. Per model and task it writes
`<out>/<label>/<task>.npz` (logits [N, C] float16 = raw cosine similarities, targets [N]) and, for each model,
`<out>/<label>/eval_results.jsonl` in DataComp's format. A task whose outputs exist is skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mode.core.compute import normalise
from mode.core.device import pick_device
from mode.core.errors import UserError, first_line
from mode.core.shards import atomic_write, write_json
from mode.core.step import positive_int
from mode.evaluation import tasks as T

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """`LABEL=MODEL:CHECKPOINT`, MODEL a recipe of run_configs.py or an open_clip model name."""

    label: str
    model: str
    checkpoint: str | None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        label, sep, rest = text.partition("=")
        if not sep or not label:
            raise UserError(f"--model {text!r}: expected LABEL=RECIPE_OR_MODEL[:CHECKPOINT]")
        model, _, ckpt = rest.partition(":")
        return cls(label, model, ckpt or None)

    def open_clip_name(self) -> str:
        import run_configs

        if self.model in run_configs.RECIPES:
            return run_configs.get_recipe(self.model).model
        return self.model


def load_model(spec: ModelSpec, device: str):
    """(model in eval mode, its validation preprocessing, its tokenizer)."""
    import open_clip
    import torch

    import open_clip_patch

    open_clip_patch.apply()  # registers the tiny model configs
    name = spec.open_clip_name()
    if name not in open_clip.list_models():
        raise UserError(f"--model {spec.label}: {name!r} is neither a recipe nor an open_clip model")
    model, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
    if spec.checkpoint:
        try:
            ckpt = torch.load(spec.checkpoint, map_location="cpu", weights_only=True)  # never runs pickled code
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
            raise UserError(f"--model {spec.label}: cannot read {spec.checkpoint}: {first_line(e)}") from None
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"--model {spec.label}: {spec.checkpoint} holds no state_dict of tensors")
        try:
            model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        except RuntimeError as e:
            raise UserError(f"--model {spec.label}: {spec.checkpoint} is not a {name} checkpoint "
                            f"({first_line(e)})") from None
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def _text_features(model, tokenizer, texts: list[str], device: str, batch: int = 256) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            out.append(model.encode_text(tokenizer(texts[i:i + batch]).to(device), normalize=True).float().cpu())
    return torch.cat(out).numpy()


def _classifier(model, tokenizer, task: T.Task, device: str) -> np.ndarray:
    """[d, C]: per class, the mean of its normalised prompt embeddings, renormalised (CLIP's zero-shot head)."""
    prompts = [p for c in task.classnames for p in task.prompts(c)]
    emb = _text_features(model, tokenizer, prompts, device).reshape(len(task.classnames), len(task.templates), -1)
    emb = emb.mean(axis=1)
    return normalise(emb).T


def _encode_task(task: T.Task, models: dict, device: str, batch_size: int) -> dict[str, dict]:
    """Image features of every model for every image (decoded once), plus targets or captions."""
    import torch

    groups: dict[str, list[str]] = {}
    for label, (_, preprocess, _) in models.items():
        groups.setdefault(repr(preprocess), []).append(label)
    feats = {label: [] for label in models}
    targets, captions, images, skipped = [], [], [], 0

    def flush():
        with torch.no_grad():
            for labels in groups.values():
                pixels = torch.stack([models[labels[0]][1](im) for im in images]).to(device)
                for label in labels:
                    feats[label].append(models[label][0].encode_image(pixels, normalize=True).float().cpu().numpy())
        images.clear()

    for _, members in tqdm(T.task_samples(task.path), desc=task.key, unit="img", leave=False):
        image = T.decode_image(members)
        label_bytes = members.get("cls") if task.kind == "classification" else members.get("txt")
        if image is None or label_bytes is None:
            skipped += 1
            continue
        images.append(image)
        if task.kind == "classification":
            targets.append(int(label_bytes.decode().strip()))
        else:
            captions.append([c for c in label_bytes.decode("utf-8").splitlines() if c.strip()])
        if len(images) == batch_size:
            flush()
    if images:
        flush()
    if skipped:
        log.warning(f"{task.key}: {skipped} samples without image or label skipped")
    return {"features": {k: np.concatenate(v) for k, v in feats.items() if v}, "targets": targets,
            "captions": captions}


def _logits(task: T.Task, model_entry, image_feats: np.ndarray, encoded: dict, device: str):
    model, _, tokenizer = model_entry
    if task.kind == "classification":
        return image_feats @ _classifier(model, tokenizer, task, device), np.asarray(encoded["targets"], np.int64)
    texts = [c for caps in encoded["captions"] for c in caps]
    owner = np.asarray([i for i, caps in enumerate(encoded["captions"]) for _ in caps], np.int64)
    return image_feats @ _text_features(model, tokenizer, texts, device).T, owner


def task_metrics(task: T.Task, logits: np.ndarray, targets: np.ndarray) -> dict:
    if task.kind == "classification":
        return T.classification_metrics(logits.astype(np.float32), targets, task.main_metric)
    return T.retrieval_metrics(logits.astype(np.float32), targets, task.main_metric)


def write_results(out_dir: Path, label: str, tasks: list[T.Task]) -> list[dict]:
    """DataComp's eval_results.jsonl for one model, from the logits files present."""
    rows = []
    for task in tasks:
        path = out_dir / label / f"{task.key}.npz"
        if path.exists():
            data = np.load(path)
            rows.append({"key": task.key, "dataset": task.name,
                         "metrics": task_metrics(task, data["logits"], data["targets"])})
    with atomic_write(out_dir / label / "eval_results.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def fingerprint(spec: ModelSpec) -> dict:
    """What a label's logits were computed from: the open_clip model and the checkpoint's bytes (sha256)."""
    digest = None
    if spec.checkpoint:
        try:
            with open(spec.checkpoint, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as e:
            raise UserError(f"--model {spec.label}: cannot read {spec.checkpoint}: {e.strerror}") from None
    return {"model": spec.open_clip_name(), "checkpoint_sha256": digest}


def _forget_stale(out_dir: Path, spec: ModelSpec) -> None:
    """Keep a label's logits only while they come from the same model and checkpoint bytes; else drop them so
    they are computed again (a new checkpoint evaluated under an old label once reused the old logits)."""
    label_dir, want = out_dir / spec.label, fingerprint(spec)
    record = label_dir / "model.json"
    have = json.loads(record.read_text()) if record.exists() else None
    old = sorted(label_dir.glob("*.npz"))
    if have != want and old:
        log.warning(f"{spec.label}: {len(old)} task logits in {label_dir} come from "
                    f"{'another checkpoint' if have else 'an unrecorded model'}: computing them again")
        for path in old:
            path.unlink()
    if have != want:
        write_json(record, want)


def run(specs: list[ModelSpec], tasks_root: str, out: str, device: str = "auto", batch_size: int = 64) -> dict:
    """Evaluate every model on every task under `tasks_root`; returns {label: {task key: main metric}}.

    A task's logits are reused while `<out>/<label>/model.json` says they come from the same checkpoint bytes."""

    if len({s.label for s in specs}) != len(specs):
        raise UserError("--model labels must be distinct")
    device = pick_device(device)
    task_list, out_dir = T.find_tasks(tasks_root), Path(out)
    for spec in specs:
        _forget_stale(out_dir, spec)
    models = {}
    for task in tqdm(task_list, desc="tasks", unit="task"):
        todo = [s for s in specs if not (out_dir / s.label / f"{task.key}.npz").exists()]
        if not todo:
            continue
        for s in todo:
            if s.label not in models:
                models[s.label] = load_model(s, device)
        encoded = _encode_task(task, {s.label: models[s.label] for s in todo}, device, batch_size)
        for s in todo:
            logits, targets = _logits(task, models[s.label], encoded["features"][s.label], encoded, device)
            with atomic_write(out_dir / s.label / f"{task.key}.npz") as f:
                np.savez(f, logits=logits.astype(np.float16), targets=targets)
    return {s.label: {r["key"]: r["metrics"]["main_metric"] for r in write_results(out_dir, s.label, task_list)}
            for s in specs}


# ------------------------------------------------------------------------------------------ `mode evaluate`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", required=True, help="a directory of tasks in DataComp's (clip_benchmark wds) format")
    p.add_argument("--out", required=True, help="output dir: <out>/<label>/<task>.npz and eval_results.jsonl")
    p.add_argument("--model", action="append", required=True, metavar="LABEL=RECIPE:CKPT",
                   help="a model to evaluate (repeat); RECIPE a run_configs recipe or an open_clip model name")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=positive_int, default=64)


def main(args: argparse.Namespace) -> None:
    results = run([ModelSpec.parse(m) for m in args.model], args.tasks, args.out, args.device, args.batch_size)
    for label, scores in results.items():
        print(f"{label}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
