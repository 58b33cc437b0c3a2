"""`mode evaluate`: zero-shot classification and retrieval of one or more checkpoints on every task.

For each task the images are decoded once and preprocessed once per distinct preprocessing (experts of one
recipe share it), then every model encodes the same batch. Per model and task it writes
`<out>/<label>/<task>.npz` (logits float32 = raw cosine similarities: [N, C], FairFace's [N, 4, max C] padded
with -1e9; targets [N]; the samples' `metadata` [N, F] where the task has it) and, for each model,
`<out>/<label>/eval_results.jsonl` with the fields and metrics DataComp's evaluate.py writes (its special
evaluations included, mode.evaluation.special) and `<label>/aggregate.json` with DataComp's averages.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mode.core.compute import normalise
from mode.core.device import pick_device
from mode.core.errors import UserError, first_line
from mode.core.layout import WorkDir
from mode.core.lock import holding
from mode.core.runner import is_complete, params_hash, write_summary
from mode.core.shards import atomic_write, overlaps, write_json
from mode.core.step import positive_int
from mode.evaluation import special as S
from mode.evaluation import tasks as T

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """`LABEL=MODEL:CHECKPOINT[:BRANCH]`, MODEL a recipe of run_configs.py or an open_clip model name; BRANCH, for a
    clip-rocket checkpoint, `z` (the CLIP's embeddings, the default), `h` (the augmented views' heads) or `zhW`
    (clip-rocket's ensemble: W x z similarity + (1 - W) x h similarity, e.g. zh0.5)."""

    label: str
    model: str
    checkpoint: str | None
    branch: str = "z"

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        label, sep, rest = text.partition("=")
        if not sep or not label:
            raise UserError(f"--model {text!r}: expected LABEL=RECIPE_OR_MODEL[:CHECKPOINT[:BRANCH]]")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*", label):  # a folder under --out, never outside it
            raise UserError(f"--model {text!r}: the label {label!r} names a folder under --out: use letters, digits "
                            "and _ . + - (not starting with . or -)")
        model, _, ckpt = rest.partition(":")
        branch = "z"
        head, colon, tail = ckpt.rpartition(":")
        if colon and re.fullmatch(r"z|h|zh[0-9.]+", tail):
            ckpt, branch = head, tail
            if branch.startswith("zh") and not _is_weight(branch[2:]):
                raise UserError(f"--model {text!r}: {branch}: expected zhW with W in [0, 1], e.g. zh0.5")
        return cls(label, model, ckpt or None, branch)

    def open_clip_name(self) -> str:
        import run_configs

        if self.model in run_configs.RECIPES:
            return run_configs.get_recipe(self.model).model
        return self.model


def _is_weight(text: str) -> bool:
    try:
        return 0.0 <= float(text) <= 1.0
    except ValueError:
        return False


def load_model(spec: ModelSpec, device: str):
    """(model in eval mode, its validation preprocessing, its tokenizer).

    A checkpoint trained with `--rocket` holds the heads too (`rocket.*`, and BYOLIP's `rocket_momentum.*`): the
    CLIP loads from its own keys, and the views' heads join it when the spec's branch asks for them."""
    import open_clip
    import torch

    import open_clip_patch

    open_clip_patch.apply()  # registers the tiny model configs
    name = spec.open_clip_name()
    if name not in open_clip.list_models():
        raise UserError(f"--model {spec.label}: {name!r} is neither a recipe nor an open_clip model")
    model, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
    heads = {}
    if spec.checkpoint:
        try:
            ckpt = torch.load(spec.checkpoint, map_location="cpu", weights_only=True)  # never runs pickled code
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
            raise UserError(f"--model {spec.label}: cannot read {spec.checkpoint}: {first_line(e)}") from None
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"--model {spec.label}: {spec.checkpoint} holds no state_dict of tensors")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        heads = {k.removeprefix("rocket."): v for k, v in state.items() if k.startswith("rocket.")}
        state = {k: v for k, v in state.items() if not k.startswith(("rocket.", "rocket_momentum."))}
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise UserError(f"--model {spec.label}: {spec.checkpoint} is not a {name} checkpoint "
                            f"({first_line(e)})") from None
    if spec.branch != "z":
        if not heads:
            raise UserError(f"--model {spec.label}: branch {spec.branch} needs a checkpoint trained with --rocket")
        from open_clip_patch.rocket_model import ZHModel

        model = ZHModel.from_state(model, heads, spec.branch).to(device)
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
    branches = getattr(model, "branches", None)  # clip-rocket's z/h ensemble: each branch renormalised alone
    if branches:
        return np.concatenate([np.sqrt(w) * normalise(emb[:, a:b]) for a, b, w in branches], axis=1).T
    return normalise(emb).T


def _encode_task(task: T.Task, models: dict, device: str, batch_size: int) -> dict[str, dict]:
    """Image features of every model for every image (decoded once), plus targets or captions."""
    import torch

    groups: dict[str, list[str]] = {}
    for label, (_, preprocess, _) in models.items():
        groups.setdefault(repr(preprocess), []).append(label)
    feats = {label: [] for label in models}
    targets, captions, images, metadata, skipped, kept = [], [], [], [], 0, 0

    def flush():
        with torch.no_grad():
            for labels in groups.values():
                pixels = torch.stack([models[labels[0]][1](im) for im in images]).to(device)
                for label in labels:
                    feats[label].append(models[label][0].encode_image(pixels, normalize=True).float().cpu().numpy())
        images.clear()

    for image, label, meta in tqdm(_samples(task), desc=task.key, unit="img", leave=False):
        if image is None or label is None:
            skipped += 1
            continue
        images.append(image)
        kept += 1
        if meta is not None:
            metadata.append(meta)
        if task.kind == "classification":
            targets.append(label)
        elif task.kind == "retrieval":
            captions.append(label)
        if len(images) == batch_size:
            flush()
    if images:
        flush()
    if not kept:
        raise UserError(f"{task.key}: no sample in {task.path} has an image and a label")
    if skipped:
        log.warning(f"{task.key}: {skipped} samples without a (decodable) image or a label skipped")
    outside = sum(1 for t in targets if t >= len(task.classnames)) if task.kind == "classification" else 0
    if outside:  # clip_benchmark scores them as wrong (no logit can be theirs); so does this, and says so
        log.warning(f"{task.key}: {outside} samples have a class beyond the {len(task.classnames)} of classnames.txt")
    if metadata and len(metadata) != kept:
        raise UserError(f"{task.key}: {kept - len(metadata)} samples lack the npy metadata the others have")
    meta = np.stack(metadata) if metadata else None
    return {"features": {k: np.concatenate(v) for k, v in feats.items() if v}, "targets": targets,
            "captions": captions, "skipped": skipped, "metadata": meta, "outside": outside}


def _samples(task: T.Task):
    """(image, target, metadata row) per sample, whatever the task's format; None image or target: skipped.
    The target is a class index, a list of captions (retrieval) or the metadata row (FairFace, UTKFace)."""
    if task.source != "wds":  # DataComp's Hugging Face retrieval sets: an image and its list of captions
        for row in T.hf_rows(task):
            image, caps = row.get("image"), row.get("caption")
            yield (image.convert("RGB") if image is not None else None), ([c for c in caps if c.strip()] or None
                                                                          if caps else None), None
        return
    member = {"classification": "cls", "retrieval": "txt", "multilabel": "npy"}[task.kind]
    for key, members in T.task_samples(task.path):
        raw = members.get(member)
        meta = np.load(io.BytesIO(members["npy"])).reshape(-1) if "npy" in members else None
        if raw is None:
            label = None
        elif task.kind == "classification":
            try:
                label = int(raw.decode().strip())
            except (UnicodeDecodeError, ValueError):
                raise UserError(f"{task.path}: sample {key}'s class {raw[:20]!r} is not an integer") from None
            if label < 0:
                raise UserError(f"{task.path}: sample {key} has class {label}")
        elif task.kind == "retrieval":
            label = [c for c in raw.decode("utf-8").splitlines() if c.strip()]
        else:
            label = meta
        yield T.decode_image(members), label, meta


def _winogavil(task: T.Task, models: dict, device: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """DataComp's WinoGAViL evaluation: per instance, the cue's prompt ("A cue" / "An cue") against each candidate
    image; per label the scores of all instances concatenated, whether each candidate is an association, and
    each instance's candidate count."""
    import torch

    got = {label: ([], [], []) for label in models}
    for row in tqdm(T.hf_rows(task), desc=task.key, unit="instance", leave=False):
        images = [im.convert("RGB") for im in row["candidate_images"]]
        truth = np.isin(row["candidates"], row["associations"])
        prompt = S.winogavil_prompt(row["cue"])
        for label, (model, preprocess, tokenizer) in models.items():
            with torch.no_grad():
                img = model.encode_image(torch.stack([preprocess(im) for im in images]).to(device), normalize=True)
                txt = model.encode_text(tokenizer([prompt]).to(device), normalize=True)
            got[label][0].append((txt.float().cpu().numpy() @ img.float().cpu().numpy().T)[0])
            got[label][1].append(truth)
            got[label][2].append(len(images))
    return {label: (np.concatenate(a).astype(np.float32), np.concatenate(b).astype(np.int64), np.asarray(c, np.int64))
            for label, (a, b, c) in got.items()}


def _logits(task: T.Task, model_entry, image_feats: np.ndarray, encoded: dict, device: str):
    model, _, tokenizer = model_entry
    if task.kind == "classification":
        return image_feats @ _classifier(model, tokenizer, task, device), np.asarray(encoded["targets"], np.int64)
    if task.kind == "multilabel":  # FairFace, UTKFace: one zero-shot head per objective, padded as DataComp pads
        heads = S.split_objectives(task.classnames, task.templates)  # every objective has both (load_task)
        width = max(len(heads[o][0]) for o in S.FAIRFACE_OBJECTIVES)
        logits = np.full((len(image_feats), len(S.FAIRFACE_OBJECTIVES), width), -1e9, np.float32)
        for i, o in enumerate(S.FAIRFACE_OBJECTIVES):
            names, templates = heads[o]
            head = T.Task(task.key, task.path, "classification", tuple(names), tuple(templates))
            logits[:, i, :len(names)] = image_feats @ _classifier(model, tokenizer, head, device)
        return logits, encoded["metadata"].astype(np.int64)
    texts = [c for caps in encoded["captions"] for c in caps]
    owner = np.asarray([i for i, caps in enumerate(encoded["captions"]) for _ in caps], np.int64)
    return image_feats @ _text_features(model, tokenizer, texts, device).T, owner


def task_metrics(task: T.Task, logits: np.ndarray, targets: np.ndarray, metadata: np.ndarray | None = None) -> dict:
    """The metrics DataComp's evaluate.py reports for the task, `main_metric` included (None where DataComp's is
    absent, as for FairFace's acc1)."""
    logits = np.asarray(logits, np.float32)
    if task.kind == "winogavil":  # metadata: each instance's candidate count
        bounds = np.cumsum(metadata)[:-1]
        metrics = S.winogavil_metrics(np.split(logits, bounds), np.split(targets, bounds))
        metrics["main_metric"] = metrics.get(task.main_metric)
        return metrics
    if task.kind == "retrieval":
        return T.retrieval_metrics(logits, targets, task.main_metric)
    if task.kind == "multilabel":
        metrics = S.fairface_metrics(logits.argmax(axis=-1), targets, S.METADATA_FIELDS[task.key])
    else:
        metrics = T.classification_metrics(logits, targets, task.main_metric)
        if task.key in S.METADATA_FIELDS:
            if metadata is None:
                raise UserError(f"{task.key}: its samples carry no npy metadata, which DataComp's {task.name} "
                                "evaluation needs")
            metrics.update(S.wilds_metrics(task.key, logits, targets, metadata))
    metrics["main_metric"] = metrics.get(task.main_metric)
    return metrics


def write_results(out_dir: Path, label: str, tasks: list[T.Task]) -> list[dict]:
    """DataComp's eval_results.jsonl for one model, from the logits files present."""
    rows = []
    for task in tasks:
        path = out_dir / label / f"{task.key}.npz"
        if path.exists():
            data = np.load(path)
            meta = data["metadata"] if "metadata" in data.files else None
            rows.append({"key": task.key, "dataset": task.name,
                         "metrics": task_metrics(task, data["logits"], data["targets"], meta)})
    with atomic_write(out_dir / label / "eval_results.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    write_json(out_dir / label / "aggregate.json", T.aggregate_scores(rows))
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
    out = {"model": spec.open_clip_name(), "checkpoint_sha256": digest}
    return out if spec.branch == "z" else {**out, "branch": spec.branch}


def task_signature(task: T.Task) -> list:
    """The task's files as (path, size, mtime): logits computed before a task was downloaded again or changed
    are not reused. (`datasets` touches its cache's .lock files on every read: those are left out.)"""
    files = sorted(p for p in Path(task.path).rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    return [(str(p.relative_to(task.path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _forget_stale(label_dir: Path, expected: dict[str, str]) -> None:
    """Drop a label's task records (and their logits) made from another model or checkpoint or from other task
    files, so they are computed again: a new checkpoint evaluated under an old label once reused the old logits."""
    stale = []
    for r in label_dir.rglob("*.stats.json"):
        key = str(r.relative_to(label_dir)).removesuffix(".stats.json")
        if key in expected and json.loads(r.read_text()).get("params_hash") != expected[key]:
            stale.append(r)
    if stale:
        log.warning(f"{label_dir.name}: {len(stale)} task logits in {label_dir} come from another model, checkpoint "
                    "or task files: computing them again")
    for record in stale:
        record.with_name(record.name.removesuffix(".stats.json") + ".npz").unlink(missing_ok=True)
        record.unlink()


def _drop_results(label_dir: Path) -> None:
    """Remove a label's summary and results before its tasks are evaluated again: they are written only at the
    end, so a killed run would leave those of the earlier checkpoint beside the new logits, saying complete."""
    for name in ("summary.json", "eval_results.jsonl", "aggregate.json"):
        (label_dir / name).unlink(missing_ok=True)


def run(specs: list[ModelSpec], tasks_root: str, out: str, device: str = "auto", batch_size: int = 64) -> dict:
    """Evaluate every model on every task under `tasks_root`; returns {label: {task key: main metric}}.

    The step protocol with tasks in place of shards: per label, `<task>.npz` and its record `<task>.stats.json`
    (images processed, skipped by reason, the hash of the label's model and checkpoint bytes, the output's size);
    a task counts as done only while its record matches the checkpoint and its logits are there unchanged, so a
    rerun computes just what is missing or stale. `<label>/summary.json` sums the records; one `mode evaluate`
    per --out at a time. Each task's images are decoded once for all labels that need it."""
    if len({s.label for s in specs}) != len(specs):
        raise UserError("--model labels must be distinct")
    device = pick_device(device)
    task_list, out_dir = T.find_tasks(tasks_root), Path(out)
    for spec in specs:  # a task's signature covers every file in its folder: logits written there make it stale
        task = next((t for t in task_list if overlaps(out_dir / spec.label, t.path)), None)
        if task:
            raise UserError(f"--out {out}: {spec.label}'s folder overlaps task {task.key} ({task.path}), whose "
                            "files tell whether its logits are current: choose an --out outside the tasks")
    digests = {s.label: params_hash(fingerprint(s)) for s in specs}
    signatures = {t.key: task_signature(t) for t in task_list}

    def digest(label: str, task: T.Task) -> str:  # a task's logits: from this model and these task files
        return params_hash({"model": digests[label], "task": signatures[task.key]})

    with holding(out_dir, "evaluate", "`mode evaluate` into this --out"):
        for spec in specs:
            _forget_stale(out_dir / spec.label, {t.key: digest(spec.label, t) for t in task_list})
            if not all(is_complete(out_dir / spec.label, t.key) for t in task_list):
                _drop_results(out_dir / spec.label)  # a run killed from here on leaves no old results behind
        models = {}
        for task in tqdm(task_list, desc="tasks", unit="task"):
            todo = [s for s in specs if not is_complete(out_dir / s.label, task.key)]
            if not todo:
                continue
            for s in todo:
                if s.label not in models:
                    models[s.label] = load_model(s, device)
            if task.kind == "winogavil":
                scored = _winogavil(task, {s.label: models[s.label] for s in todo}, device)
                encoded = {"skipped": 0, "metadata": None}
            else:
                encoded = _encode_task(task, {s.label: models[s.label] for s in todo}, device, batch_size)
            for s in todo:
                if task.kind == "winogavil":
                    logits, targets, sizes = scored[s.label]
                    extra = {"metadata": sizes}
                else:
                    logits, targets = _logits(task, models[s.label], encoded["features"][s.label], encoded, device)
                    extra = {"metadata": encoded["metadata"]} if encoded["metadata"] is not None else {}
                path = out_dir / s.label / f"{task.key}.npz"
                with atomic_write(path) as f:
                    np.savez(f, logits=logits.astype(np.float32), targets=targets, **extra)
                skipped = {"no_image_or_label": encoded["skipped"]} if encoded["skipped"] else {}
                n = len(extra["metadata"]) if task.kind == "winogavil" else len(logits)  # instances, not candidates
                outside = {"labels_outside_classnames": encoded["outside"]} if encoded.get("outside") else {}
                write_json(WorkDir.stats(out_dir / s.label, task.key),
                           {"processed": n + encoded["skipped"], "kept": n, "skipped": skipped, **outside,
                            "params_hash": digest(s.label, task), "outputs": {f"{task.key}.npz": path.stat().st_size}})
        results = {}  # still under the lock: another run's logits must not be read or summed in between
        for s in specs:
            write_summary("evaluate", out_dir / s.label, [t.key for t in task_list], fingerprint(s), digests[s.label])
            rows = write_results(out_dir, s.label, task_list)
            results[s.label] = {r["key"]: r["metrics"]["main_metric"] for r in rows}
    return results


# ------------------------------------------------------------------------------------------ `mode evaluate`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", "--data_dir", "--data-dir", dest="tasks", required=True,
                   help="the tasks: DataComp's download_evalsets.py folder (wds_*_test, hf_cache) or task folders")
    p.add_argument("--out", "--output_dir", "--output-dir", dest="out", required=True,
                   help="output dir: <out>/<label>/<task>.npz and eval_results.jsonl")
    p.add_argument("--model", action="append", required=True, metavar="LABEL=RECIPE:CKPT[:BRANCH]",
                   help="a model to evaluate (repeat); RECIPE a run_configs recipe or an open_clip model name; "
                        "BRANCH for --rocket checkpoints: z (default), h, or zhW (W z + (1 - W) h, e.g. zh0.5)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", "--batch_size", type=positive_int, default=64)


def main(args: argparse.Namespace) -> None:
    results = run([ModelSpec.parse(m) for m in args.model], args.tasks, args.out, args.device, args.batch_size)
    for label, scores in results.items():
        print(f"{label}: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in scores.items()))
