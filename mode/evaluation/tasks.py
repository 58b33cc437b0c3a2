"""Evaluation tasks in DataComp's format (clip_benchmark webdataset) and their metrics.

A task directory holds `classnames.txt`, `zeroshot_classification_templates.txt` (`{c}` marks the class name),
`test/nshards.txt` and `test/<i>.tar`, whose samples carry an image (`webp`, `png` or `jpg`) and either a
`cls` label (zero-shot classification) or a `txt` of captions, one per line (image-text retrieval). The WILDS,
Dollar Street, GeoDE, FairFace and UTKFace sets also carry an `npy` member of integer metadata per sample
(FairFace and UTKFace only that: their classnames and templates are `objective:text` lines). DataComp's tasks
are on the Hugging Face hub as `djghosh/wds_<key, / as ->_test`; `find_tasks` knows those folder names.
"""

from __future__ import annotations

import argparse
import io
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mode.core.errors import UserError, first_line
from mode.core.layout import EvalTask
from mode.core.shards import iter_tar
from mode.datacomp.tasklist import DATACOMP_TASKS, SCORED  # DataComp's tasklist.yml (also used from here)
from mode.evaluation import special as S

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")

_RECALL = "mean_recall@1"
# the groups DataComp's aggregate_scores.py averages (by task name)
AVERAGE_GROUPS = {
    "ImageNet dist. shifts": ("ImageNet Sketch", "ImageNet v2", "ImageNet-A", "ImageNet-O", "ImageNet-R", "ObjectNet"),
    "VTAB": ("Caltech-101", "CIFAR-100", "CLEVR Counts", "CLEVR Distance", "Describable Textures", "EuroSAT",
             "KITTI Vehicle Distance", "Oxford Flowers-102", "Oxford-IIIT Pet", "PatchCamelyon", "RESISC45", "SVHN",
             "SUN397"),
    "Retrieval": ("Flickr", "MSCOCO", "WinoGAViL"),
}
MULTILABEL = ("fairness/fairface", "fairness/utkface")  # one classifier per objective (race, gender, age, toxic)
# DataComp reads these three with Hugging Face `datasets` (nlphuji/<name>, split test), not as webdatasets
HF_TASKS = ("retrieval/flickr_1k_test_image_text_retrieval", "retrieval/mscoco_2014_5k_test_image_text_retrieval",
            "misc/winogavil")


@dataclass(frozen=True)
class Task:
    """One local evaluation task."""

    key: str  # DataComp's key ("vtab/dtd") or, for other tasks, the directory name
    path: Path
    kind: str  # "classification", "multilabel" (FairFace, UTKFace), "retrieval" or "winogavil"
    classnames: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    source: str = "wds"  # "wds"; for HF_TASKS "disk" (a save_to_disk folder) or "hf_cache" (DataComp's cache)

    @property
    def name(self) -> str:
        info = DATACOMP_TASKS.get(self.key)
        return info.name if info else self.key

    @property
    def main_metric(self) -> str:
        info = DATACOMP_TASKS.get(self.key)
        return info.main_metric if info else (_RECALL if self.kind == "retrieval" else "acc1")

    def prompts(self, classname: str) -> list[str]:
        return [t.format(c=classname) for t in self.templates]


def hub_repo(key: str) -> str:
    """Where DataComp's download_evalsets.py finds task `key`: a `djghosh/wds_<key with / as ->_test` webdataset
    (the `fairness/` prefix dropped), or for retrieval and WinoGAViL the `nlphuji/<name>` Hugging Face dataset."""
    if key.startswith(("retrieval/", "misc/")):
        return f"nlphuji/{key.split('/', 1)[1]}"
    return f"djghosh/{local_name(key)}"


def local_name(key: str) -> str:
    """The folder DataComp's download_evalsets.py writes a webdataset task into: `wds_vtab-dtd_test`."""
    return f"wds_{key.removeprefix('fairness/').replace('/', '-')}_test"


_BY_LOCAL_NAME = {local_name(k): k for k in DATACOMP_TASKS}


def download(key: str, root: str) -> Path:
    """Fetch DataComp task `key` from the Hugging Face hub into `root/<wds_..._test>` (needs the network)."""
    import huggingface_hub

    from mode.core.hub import hub_call

    if key in HF_TASKS:
        return _download_hf(key, Path(root))
    target = Path(root) / local_name(key)
    what, fallback = f"task {key!r} ({hub_repo(key)})", f"copy it into {target}"
    # listed first: offline, snapshot_download would quietly return an existing (perhaps partial) folder
    hub_call(huggingface_hub.list_repo_files, what, fallback, repo_id=hub_repo(key), repo_type="dataset")
    hub_call(huggingface_hub.snapshot_download, what, fallback, repo_id=hub_repo(key), repo_type="dataset",
             local_dir=str(target))
    return target


def _download_hf(key: str, root: Path) -> Path:
    """A Hugging Face `datasets` task as DataComp's download_evalsets.py fetches it: into `root/hf_cache`."""
    datasets = _datasets()
    cache = root / "hf_cache"
    try:
        datasets.load_dataset(hub_repo(key), split="test", cache_dir=str(cache))
    except Exception as e:  # the hub, the network or the cache: one line
        raise UserError(f"could not fetch {hub_repo(key)} into {cache} ({type(e).__name__}: {first_line(e)})")
    return cache


def _datasets():
    try:
        import datasets
    except ImportError:
        raise UserError("Flickr, MSCOCO and WinoGAViL are Hugging Face `datasets` datasets, as in DataComp: "
                        "pip install 'mode-clip[eval]' (or datasets)") from None
    return datasets


def hf_rows(task: Task):
    """The test split of a `datasets` task: a `save_to_disk` folder, or DataComp's hf_cache read offline."""
    datasets = _datasets()
    try:
        if task.source == "disk":
            return datasets.load_from_disk(str(task.path))
        return datasets.load_dataset(hub_repo(task.key), split="test", cache_dir=str(task.path))
    except Exception as e:  # a partial cache, offline without one, a folder of something else: one line
        raise UserError(f"{task.path}: cannot read {task.key} ({hub_repo(task.key)}) with `datasets` "
                        f"({type(e).__name__}: {first_line(e)})") from None


def _hf_tasks(root: Path) -> list[Task]:
    """DataComp's three `datasets` tasks under `root`: `<key>/` saved with save_to_disk, or in `hf_cache/` (the
    cache folder `datasets` names `nlphuji___<name>`)."""
    found = []
    for key in HF_TASKS:
        kind = "winogavil" if key == "misc/winogavil" else "retrieval"
        if (root / key / "dataset_info.json").is_file():
            found.append(Task(key, root / key, kind, source="disk"))
        elif (root / "hf_cache" / f"nlphuji___{key.split('/', 1)[1]}").is_dir():
            found.append(Task(key, root / "hf_cache", kind, source="hf_cache"))
    return found


def _lines(path: Path) -> tuple[str, ...]:
    """A class-name or template file's lines as clip_benchmark 1.4.0 (DataComp's pin) reads them: stripped, blank
    lines dropped (so a blank class name is not a class there, nor here)."""
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def load_task(path: str | Path, key: str | None = None) -> Task:
    """Read a task directory's metadata; the kind comes from its first sample (cls or txt)."""
    layout = EvalTask(Path(path))
    if not layout.nshards.exists():
        raise UserError(f"{path} is not an evaluation task (no test/nshards.txt)")
    key = key or layout.name
    first = next(iter(task_samples(layout.root)), (None, {}))[1]
    kind = "multilabel" if key in MULTILABEL else \
        "retrieval" if "txt" in first and "cls" not in first else "classification"
    classnames = _lines(layout.classnames) if layout.classnames.exists() else ()
    templates = _lines(layout.templates) if layout.templates.exists() else ()
    if kind == "classification" and not classnames:
        raise UserError(f"{path}: a classification task needs classnames.txt")
    if kind != "retrieval" and not layout.templates.exists():  # clip_benchmark has no default; DataComp asserts
        raise UserError(f"{path}: a {kind} task needs {layout.templates.name} (one template per line, with {{c}} "
                        "for the class name)")
    if kind != "retrieval" and not templates:
        raise UserError(f"{layout.templates}: no templates (one per line, with {{c}} for the class name)")
    for t in templates:
        try:
            t.format(c="x")
        except (IndexError, KeyError, ValueError):
            raise UserError(f"{layout.templates}: template {t!r} is not a format string with only {{c}}") from None
    if kind == "multilabel":
        _check_objectives(layout, classnames, templates)
    return Task(key, layout.root, kind, classnames, templates)


def _check_objectives(layout: EvalTask, classnames: tuple[str, ...], templates: tuple[str, ...]) -> None:
    """FairFace's and UTKFace's lines are `objective:text` (DataComp splits each at its first colon) and every
    objective needs a class name and a template for its zero-shot head."""
    for path, lines in ((layout.classnames, classnames), (layout.templates, templates)):
        stray = next((line for line in lines if ":" not in line), None)
        if stray is not None:
            raise UserError(f"{path}: line {stray!r} has no `objective:` prefix (one of "
                            f"{', '.join(S.FAIRFACE_OBJECTIVES)})")
    heads = S.split_objectives(classnames, templates)
    for objective in S.FAIRFACE_OBJECTIVES:
        names, prompts = heads.get(objective, ([], []))
        for path, got, what in ((layout.classnames, names, "class name"), (layout.templates, prompts, "template")):
            if not got:
                raise UserError(f"{path}: no {what} for objective {objective!r} (a line `{objective}:...`)")


def find_tasks(root: str | Path) -> list[Task]:
    """Every task under `root`, sorted by key: DataComp's download folders (`wds_vtab-dtd_test` is vtab/dtd),
    nested keys (`vtab/dtd/`) and any other task folder (keyed by its path)."""
    root = Path(root)
    found = [p.parent.parent for p in root.rglob("test/nshards.txt")]
    tasks = [load_task(p, _task_key(root, p)) for p in found] + _hf_tasks(root)
    if not tasks:
        raise UserError(f"no evaluation tasks under {root} (a task has test/nshards.txt, or is one of DataComp's "
                        "Hugging Face datasets in hf_cache/)")
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        twice = sorted(k for k in set(keys) if keys.count(k) > 1)[0]
        raise UserError(f"task {twice} is under {root} twice (e.g. as {local_name(twice)} and {twice}/); keep one")
    return sorted(tasks, key=lambda t: t.key)


def _task_key(root: Path, task: Path) -> str:
    """DataComp's key of a download folder, else the folder's path under `root`; `root` itself, its name."""
    name = Path(os.path.abspath(task)).name
    if name in _BY_LOCAL_NAME:
        return _BY_LOCAL_NAME[name]
    rel = task.relative_to(root)
    return str(rel) if rel.parts else name


def task_samples(root: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The samples of a task's test split, in shard order. A missing, truncated or unreadable shard is an error:
    scores over part of a test set are not DataComp's."""
    layout = EvalTask(Path(root))
    text = layout.nshards.read_text().strip()
    if not text.isdigit():
        raise UserError(f"{layout.nshards}: expected the number of test shards, got {text[:40]!r}")
    n = int(text)
    for i in range(n):
        shard, errors = layout.shard(i), Counter()
        if not shard.is_file():
            raise UserError(f"{shard} is missing ({layout.nshards} says {n} shards): download the task again")
        yield from iter_tar(shard, errors)
        if errors:
            raise UserError(f"{shard} is {'truncated' if 'truncated_tar' in errors else 'unreadable'}: download the "
                            "task again")


def decode_image(members: dict[str, bytes]):
    """The sample's image as RGB; None when it has none or it does not decode (a counted skip)."""
    from PIL import Image

    for ext in IMAGE_EXTS:
        if ext in members:
            try:
                return Image.open(io.BytesIO(members[ext])).convert("RGB")
            except (OSError, ValueError, Image.DecompressionBombError):
                return None
    return None


# ------------------------------------------------------------------------------------------------- metrics

def accuracy(logits: np.ndarray, targets: np.ndarray, k: int = 1) -> float:
    """Share of samples whose target is among the k highest logits."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == targets[:, None], axis=1)))


def mean_per_class_recall(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean over the classes present of the share of their samples predicted correctly (top-1)."""
    pred = logits.argmax(axis=1)
    classes = np.unique(targets)
    return float(np.mean([np.mean(pred[targets == c] == c) for c in classes]))


def classification_metrics(logits: np.ndarray, targets: np.ndarray, main_metric: str = "acc1") -> dict:
    """DataComp's: acc1, acc5 (None below 5 classes) and mean per-class recall; `main_metric` may name a metric
    added later (the special evaluations), so it is left to the caller when absent."""
    metrics = {"acc1": accuracy(logits, targets, 1),
               "acc5": accuracy(logits, targets, 5) if logits.shape[1] >= 5 else None,
               "mean_per_class_recall": mean_per_class_recall(logits, targets)}
    metrics["main_metric"] = metrics.get(main_metric)
    return metrics


def retrieval_metrics(sim: np.ndarray, text_to_image: np.ndarray, main_metric: str = _RECALL) -> dict:
    """Recall@1/5/10 both ways from image-text similarities [n_images, n_texts] (clip_benchmark's definitions).

    Args:
        sim: cosine similarity of every image with every caption.
        text_to_image: for each caption, the index of its image.
    """
    metrics = {}
    n_img = sim.shape[0]
    for k in (1, 5, 10):
        kk = min(k, n_img)  # image retrieval: for each caption, is its image among the k nearest images?
        top_img = np.argpartition(-sim.T, kk - 1, axis=1)[:, :kk]
        metrics[f"image_retrieval_recall@{k}"] = float(np.mean(np.any(top_img == text_to_image[:, None], axis=1)))
        kt = min(k, sim.shape[1])  # text retrieval: for each image, is one of its captions among the k nearest?
        top_txt = np.argpartition(-sim, kt - 1, axis=1)[:, :kt]
        hits = text_to_image[top_txt] == np.arange(n_img)[:, None]
        metrics[f"text_retrieval_recall@{k}"] = float(np.mean(np.any(hits, axis=1)))
    metrics[_RECALL] = (metrics["text_retrieval_recall@1"] + metrics["image_retrieval_recall@1"]) / 2
    metrics["main_metric"] = metrics[main_metric]
    return metrics


def datacomp_average(results: dict[str, float | None]) -> tuple[float, int]:
    """DataComp's average: the mean main metric over its scored tasks present (None skipped, as DataComp skips
    it); returns (average, tasks used)."""
    scores = [v for k, v in results.items() if k in SCORED and v is not None]
    return (float(np.mean(scores)) if scores else float("nan")), len(scores)


def aggregate_scores(rows: list[dict]) -> dict:
    """DataComp's aggregate_scores.py over eval_results.jsonl rows: ImageNet, the distribution shifts, VTAB,
    retrieval and the average over tasks with a main metric; a group with a task missing is left out, and
    `tasks` says how many of the 38 were there (DataComp asserts all 38)."""
    by_name = {r["dataset"]: r["metrics"].get("main_metric") for r in rows
               if r["key"] in SCORED and r["metrics"].get("main_metric") is not None}
    out: dict = {"tasks": len(by_name)}
    if "ImageNet 1k" in by_name:
        out["ImageNet"] = by_name["ImageNet 1k"]
    for group, names in AVERAGE_GROUPS.items():
        if all(n in by_name for n in names):
            out[group] = float(np.mean([by_name[n] for n in names]))
    if by_name:
        out["Average"] = float(np.mean(list(by_name.values())))
    return out


# ------------------------------------------------------------------------------------ `mode download-tasks`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", "--data_dir", "--data-dir", dest="out", required=True,
                   help="tasks directory, laid out as download_evalsets.py lays it (then `mode evaluate --tasks OUT`)")
    p.add_argument("--keys", default="all", help="all, or DataComp task keys like vtab/dtd,cifar10")


def main(args: argparse.Namespace) -> None:
    keys = list(DATACOMP_TASKS) if args.keys == "all" else args.keys.split(",")
    unknown = [k for k in keys if k not in DATACOMP_TASKS]
    if unknown:
        raise UserError(f"unknown DataComp task {unknown[0]!r}; e.g. {', '.join(list(DATACOMP_TASKS)[:3])}")
    for key in keys:
        print(f"{key}: {download(key, args.out)}")
