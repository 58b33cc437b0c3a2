"""`mode ensemble`: weight the experts per task by how close the task's class names are to each cluster.

Each class is embedded with the clustering's own caption encoder (features/meta.json): the mean of its
normalised prompt embeddings, renormalised, as MoDE does. The weighting methods (one registry entry each):

- `mode` (MoDE's): each class goes to its nearest fine centroid (Euclidean distance d) and so to a coarse
  cluster k; s_k = sum over the classes in k of exp((a - d) * m), with a = exp(0.5 - sqrt(C)) if C < 10 else 0
  and m = 5 * log10(max(10, C - 200)) for C classes; weights = softmax(s / 8).
- `uniform`: 1/K each.
- `top1`: all weight on the expert with the largest MoDE score s_k (hard routing).
- `mean_cosine`: softmax over experts of the classes' mean cosine to the coarse centroid, temperature 0.05.

The ensemble's logits are the weighted sum of the experts' raw cosine logits.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mode.core.compute import normalise
from mode.core.errors import UserError, reading
from mode.core.layout import WorkDir
from mode.core.shards import atomic_write, overlaps, write_json
from mode.evaluation import tasks as T
from mode.evaluation.evaluate import task_metrics


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def mode_scores(class_emb: np.ndarray, fine: np.ndarray, fine_to_coarse: np.ndarray) -> np.ndarray:
    """MoDE's per-expert score s_k (before the softmax)."""
    n_classes = len(class_emb)
    d2 = (class_emb ** 2).sum(1)[:, None] - 2 * class_emb @ fine.T + (fine ** 2).sum(1)[None]
    nearest = d2.argmin(axis=1)
    d = np.sqrt(np.maximum(d2[np.arange(n_classes), nearest], 0))
    a = math.exp(0.5 - math.sqrt(n_classes)) if n_classes < 10 else 0.0
    m = 5 * math.log10(max(10, n_classes - 200))
    scores = np.zeros(int(fine_to_coarse.max()) + 1)
    np.add.at(scores, fine_to_coarse[nearest], np.exp((a - d) * m))
    return scores


def _mode(class_emb, fine, f2c, coarse):
    return _softmax(mode_scores(class_emb, fine, f2c) / 8)


def _uniform(class_emb, fine, f2c, coarse):
    k = int(f2c.max()) + 1
    return np.full(k, 1.0 / k)


def _top1(class_emb, fine, f2c, coarse):
    s = mode_scores(class_emb, fine, f2c)
    return np.eye(len(s))[int(s.argmax())]


def _mean_cosine(class_emb, fine, f2c, coarse):
    if coarse is None:
        raise UserError("--weighting mean_cosine needs the coarse centroids")
    c = normalise(coarse)
    return _softmax((class_emb @ c.T).mean(axis=0) / 0.05)


WEIGHTINGS: dict[str, Callable] = {"mode": _mode, "uniform": _uniform, "top1": _top1, "mean_cosine": _mean_cosine}


def expert_weights(method: str, class_emb: np.ndarray, fine: np.ndarray, fine_to_coarse: np.ndarray,
                   coarse: np.ndarray | None = None) -> np.ndarray:
    """Weights [Kc] of the experts for one task.

    Args:
        method: one of WEIGHTINGS (mode, uniform, top1, mean_cosine).
        class_emb: [C, d] one unit-norm embedding per class.
        fine: [Kf, d] fine centroids.
        fine_to_coarse: [Kf] coarse cluster of each fine centroid.
        coarse: [Kc, d] coarse centroids (mean_cosine only).
    """
    if method not in WEIGHTINGS:
        raise UserError(f"--weighting {method!r}: expected one of {', '.join(WEIGHTINGS)}")
    return WEIGHTINGS[method](np.asarray(class_emb, np.float64), np.asarray(fine, np.float64),
                              np.asarray(fine_to_coarse), None if coarse is None else np.asarray(coarse, np.float64))


def class_embeddings(task: T.Task, encoder: str | None, pooling: str = "model") -> np.ndarray:
    """[C, d]: per class, the mean of its normalised prompt embeddings with the caption encoder, renormalised.
    Other tasks than classification (retrieval, WinoGAViL, FairFace, UTKFace) are one class, the bare prompt
    `a photo` (MoDE weighs classification tasks only: this is ours)."""
    from mode.prep.embed import encode

    if task.kind != "classification":
        return normalise(encode(["a photo"], encoder, pooling=pooling))
    prompts = [t.format(c=c) for c in task.classnames for t in task.templates]
    emb = encode(prompts, encoder, pooling=pooling).reshape(len(task.classnames), len(task.templates), -1)
    return normalise(emb.mean(axis=1))


def run(work_dir: str, tasks_root: str, eval_out: str, experts: list[str], report: str, weighting: str = "mode",
        dense: str | None = None) -> dict:
    """Weights, ensemble logits and metrics for every task; writes the report. Returns the per-task table."""
    for other, what in ((work_dir, "--work-dir"), (tasks_root, "--tasks"), (eval_out, "--eval-out")):
        if overlaps(report, other):  # any folder under --eval-out may be a label's (not only those named here)
            raise UserError(f"--report {report} overlaps {what} {other}, whose files it would replace (an "
                            "evaluation's eval_results.jsonl, say): choose a folder outside it")
    check_labels(experts, dense)
    wd = WorkDir(Path(work_dir))
    meta = json.loads(wd.features_meta.read_text()) if wd.features_meta.exists() else None
    if meta is None or not wd.fine_centroids.exists():
        raise UserError(f"no clustering in {work_dir}: run `./run_mode.sh prep-steps` first")
    with reading(wd.clusters_dir, "clustering (.npy centroids)"):
        fine, f2c = np.load(wd.fine_centroids), np.load(wd.fine_to_coarse)
        coarse = np.load(wd.coarse_centroids)
    if len(experts) != int(f2c.max()) + 1:
        raise UserError(f"{len(experts)} expert evaluations for {int(f2c.max()) + 1} clusters: list them in order")
    out, rows, weights, results = Path(eval_out), [], {}, []
    for task in T.find_tasks(tasks_root):
        loaded = [_load(out, e, task) for e in experts]
        for label, x in zip(experts[1:], loaded[1:]):  # experts combined sample by sample: one test set
            if x["logits"].shape != loaded[0]["logits"].shape or not np.array_equal(x["targets"],
                                                                                   loaded[0]["targets"]):
                raise UserError(f"{task.key}: {label}'s logits or targets differ in shape or order from "
                                f"{experts[0]}'s: evaluate all of them on the same tasks (one `mode evaluate`)")
        class_emb = class_embeddings(task, meta["encoder"], meta.get("pooling", "model"))
        w = expert_weights(weighting, class_emb, fine, f2c, coarse)
        targets, md = loaded[0]["targets"], loaded[0].get("metadata")  # md: the special evaluations' metadata
        combined = sum(wk * np.asarray(x["logits"], np.float32) for wk, x in zip(w, loaded))
        uniform = sum(np.asarray(x["logits"], np.float32) for x in loaded) / len(loaded)
        row = {"task": task.key, "num_classes": len(task.classnames)}
        for name, x in zip(experts, loaded):
            row[name] = task_metrics(task, x["logits"], targets, md)["main_metric"]
        scored = [row[e] for e in experts if row[e] is not None]
        row["expert_max"] = max(scored) if scored else None
        row["uniform"] = task_metrics(task, uniform, targets, md)["main_metric"]
        metrics = task_metrics(task, combined, targets, md)
        row["ensemble"] = metrics["main_metric"]
        if dense:
            d = _load(out, dense, task)
            row["dense"] = task_metrics(task, d["logits"], d["targets"], d.get("metadata"))["main_metric"]
        rows.append(row)
        weights[task.key] = [round(float(x), 6) for x in w]
        results.append({"key": task.key, "dataset": task.name, "metrics": metrics})
    write_report(Path(report), rows, weights, results, weighting, experts, wd.clustering_id())
    return {"rows": rows, "weights": weights}


REPORT_COLUMNS = ("task", "num_classes", "expert_max", "uniform", "ensemble", "dense")


def check_labels(experts: list[str], dense: str | None) -> None:
    """Expert labels name the report's columns: one that is another column's name would overwrite it."""
    taken = [e for e in experts if e in REPORT_COLUMNS]
    if taken:
        raise UserError(f"expert label {taken[0]!r} is a column of the report ({', '.join(REPORT_COLUMNS)}): "
                        "evaluate that expert under another label")
    twice = [e for e in experts if experts.count(e) > 1]
    if twice:
        raise UserError(f"expert label {twice[0]!r} is listed twice in --experts")


def _load(out: Path, label: str, task: T.Task):
    path = out / label / f"{task.key}.npz"
    if not path.exists():
        raise UserError(f"no evaluation of {label!r} on {task.key} in {out}: run `mode evaluate` first")
    with reading(path, "logits .npz"):
        data = np.load(path)
        got = {k: data[k] for k in data.files}
    if "logits" not in got or "targets" not in got:
        raise UserError(f"{path}: no logits and targets in it (not written by `mode evaluate`): evaluate again")
    return got


def write_report(report: Path, rows: list[dict], weights: dict, results: list[dict], weighting: str,
                 experts: list[str], clustering: str) -> None:
    """ensemble.csv (+ average row), weights.json, the ensemble's eval_results.jsonl and two plots."""
    import csv
    import io

    columns = list(rows[0])
    average = average_row(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for r in [*rows, average]:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    with atomic_write(report / "ensemble.csv", "w") as f:
        f.write(buf.getvalue())
    write_json(report / "weights.json", {"weighting": weighting, "experts": experts, "weights": weights,
                                         "clustering": clustering})
    with atomic_write(report / "eval_results.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in results)
    _plots(report, rows, weights, experts)


def average_row(rows: list[dict]) -> dict:
    """Each column's mean over the tasks that have a main metric (DataComp's FairFace and UTKFace have none and
    are left out of its average, as here); None where no task has one."""
    average = {"task": "average", "num_classes": ""}
    for c in list(rows[0])[2:]:
        scored = [r[c] for r in rows if r[c] is not None]
        average[c] = float(np.mean(scored)) if scored else None
    return average


def _plots(report: Path, rows: list[dict], weights: dict, experts: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task_names = [r["task"] for r in rows]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(experts), 0.8 + 0.4 * len(rows)))
    im = ax.imshow(np.array([weights[t] for t in task_names]), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(experts)), experts, rotation=30, ha="right")
    ax.set_yticks(range(len(task_names)), task_names)
    ax.set_title("expert weight per task")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(report / "weights.png", dpi=120)
    plt.close(fig)
    series = [*experts, "uniform", "ensemble"] + (["dense"] if "dense" in rows[0] else [])
    fig, ax = plt.subplots(figsize=(2 + 1.5 * len(rows), 4))
    width = 0.8 / len(series)
    for i, s in enumerate(series):
        ax.bar(np.arange(len(rows)) + i * width, [np.nan if r[s] is None else r[s] for r in rows], width, label=s)
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, task_names)
    ax.set_ylabel("main metric")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(report / "scores.png", dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ `mode ensemble`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", required=True, help="the clustering work dir")
    p.add_argument("--tasks", required=True)
    p.add_argument("--eval-out", required=True, help="what `mode evaluate --out` wrote")
    p.add_argument("--experts", required=True, help="evaluation labels of experts 0..K-1, comma separated, in order")
    p.add_argument("--dense", default=None, help="evaluation label of a dense baseline for the report")
    p.add_argument("--weighting", default="mode", choices=("mode", "uniform", "top1", "mean_cosine"))
    p.add_argument("--report", required=True, help="report dir: ensemble.csv, weights.json, eval_results.jsonl, *.png")


def main(args: argparse.Namespace) -> None:
    table = run(args.work_dir, args.tasks, args.eval_out, args.experts.split(","), args.report, args.weighting,
                args.dense)
    print(format_table(table["rows"]))
    print(f"weighting: {args.weighting}; report in {args.report}")


def format_table(rows: list[dict]) -> str:
    """A fixed-width table of the report rows, with an average row."""
    cols = list(rows[0])
    avg = average_row(rows)

    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else "-" if v is None else str(v)

    cells = [[str(c) for c in cols]] + [[cell(r[c]) for c in cols] for r in [*rows, avg]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
                     for row in cells)
