"""Evaluation tasks in DataComp's format (clip_benchmark webdataset) and their metrics.

A task directory holds `classnames.txt`, `zeroshot_classification_templates.txt` (`{c}` marks the class name),
`test/nshards.txt` and `test/<i>.tar`, whose samples carry an image (`webp`, `png` or `jpg`) and either a
`cls` label (zero-shot classification) or a `txt` of captions, one per line (image-text retrieval).
DataComp's tasks are on the Hugging Face hub as `djghosh/wds_<task>_test`.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mode.core.errors import UserError
from mode.core.layout import EvalTask
from mode.core.shards import iter_tar

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")

# DataComp's 38 scored tasks (tasklist.yml): key -> (display name, main metric). acc1 unless stated.
_MPCR, _RECALL = "mean_per_class_recall", "mean_recall@1"
DATACOMP_TASKS: dict[str, tuple[str, str]] = {
    "vtab/caltech101": ("Caltech-101", _MPCR), "cifar10": ("CIFAR-10", "acc1"),
    "vtab/cifar100": ("CIFAR-100", "acc1"), "vtab/clevr_count_all": ("CLEVR Counts", "acc1"),
    "vtab/clevr_closest_object_distance": ("CLEVR Distance", "acc1"), "country211": ("Country211", "acc1"),
    "vtab/dtd": ("Describable Textures", "acc1"), "vtab/eurosat": ("EuroSAT", "acc1"),
    "fgvc_aircraft": ("FGVC Aircraft", _MPCR), "food101": ("Food-101", "acc1"), "gtsrb": ("GTSRB", "acc1"),
    "imagenet1k": ("ImageNet 1k", "acc1"), "imagenet_sketch": ("ImageNet Sketch", "acc1"),
    "imagenetv2": ("ImageNet v2", "acc1"), "imagenet-a": ("ImageNet-A", "acc1"), "imagenet-o": ("ImageNet-O", "acc1"),
    "imagenet-r": ("ImageNet-R", "acc1"), "vtab/kitti_closest_vehicle_distance": ("KITTI Vehicle Distance", "acc1"),
    "mnist": ("MNIST", "acc1"), "objectnet": ("ObjectNet", "acc1"), "vtab/flowers": ("Oxford Flowers-102", _MPCR),
    "vtab/pets": ("Oxford-IIIT Pet", _MPCR), "voc2007": ("Pascal VOC 2007", "acc1"),
    "vtab/pcam": ("PatchCamelyon", "acc1"), "renderedsst2": ("Rendered SST2", "acc1"),
    "vtab/resisc45": ("RESISC45", "acc1"), "cars": ("Stanford Cars", "acc1"), "stl10": ("STL-10", "acc1"),
    "sun397": ("SUN397", "acc1"), "vtab/svhn": ("SVHN", "acc1"), "retrieval/flickr30k": ("Flickr", _RECALL),
    "retrieval/mscoco_2014_5k_test_image_text_retrieval": ("MSCOCO", _RECALL),
    "misc/winogavil": ("WinoGAViL", "jaccard_score_10-12"), "wilds/iwildcam": ("iWildCam", "F1-macro_all"),
    "wilds/camelyon17": ("Camelyon17", "acc1"), "wilds/fmow": ("FMoW", "acc_worst_region"),
    "fairness/dollar_street": ("Dollar Street", "acc_top5_wg"), "fairness/geode": ("GeoDE", "acc_wg"),
}


@dataclass(frozen=True)
class Task:
    """One local evaluation task."""

    key: str  # DataComp's key ("vtab/dtd") or, for other tasks, the directory name
    path: Path
    kind: str  # "classification" or "retrieval"
    classnames: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return DATACOMP_TASKS.get(self.key, (self.key, ""))[0]

    @property
    def main_metric(self) -> str:
        return DATACOMP_TASKS.get(self.key, ("", _RECALL if self.kind == "retrieval" else "acc1"))[1]

    def prompts(self, classname: str) -> list[str]:
        return [t.format(c=classname) for t in self.templates]


def hub_repo(key: str) -> str:
    """The Hugging Face dataset that holds DataComp task `key` (clip_benchmark's naming)."""
    return f"djghosh/wds_{key.split('/')[-1]}_test"


def download(key: str, root: str) -> Path:
    """Fetch DataComp task `key` from the Hugging Face hub into `root/<key>` (needs the network)."""
    import huggingface_hub

    from mode.core.hub import hub_call

    target = Path(root) / key
    what, fallback = f"task {key!r} ({hub_repo(key)})", f"copy it into {target}"
    # listed first: offline, snapshot_download would quietly return an existing (perhaps partial) folder
    hub_call(huggingface_hub.list_repo_files, what, fallback, repo_id=hub_repo(key), repo_type="dataset")
    hub_call(huggingface_hub.snapshot_download, what, fallback, repo_id=hub_repo(key), repo_type="dataset",
             local_dir=str(target))
    return target


def load_task(path: str | Path, key: str | None = None) -> Task:
    """Read a task directory's metadata; the kind comes from its first sample (cls or txt)."""
    layout = EvalTask(Path(path))
    if not layout.nshards.exists():
        raise UserError(f"{path} is not an evaluation task (no test/nshards.txt)")
    key = key or layout.name
    first = next(iter(task_samples(layout.root)), (None, {}))[1]
    kind = "retrieval" if "txt" in first and "cls" not in first else "classification"
    classnames = tuple(layout.classnames.read_text().splitlines()) if layout.classnames.exists() else ()
    templates = tuple(t for t in layout.templates.read_text().splitlines() if t) if layout.templates.exists() \
        else ("a photo of a {c}.",)
    if kind == "classification" and not classnames:
        raise UserError(f"{path}: a classification task needs classnames.txt")
    return Task(key, layout.root, kind, classnames, templates)


def find_tasks(root: str | Path) -> list[Task]:
    """Every task under `root` (DataComp's nested keys like vtab/dtd included), sorted by key."""
    root = Path(root)
    found = [p.parent.parent for p in root.rglob("test/nshards.txt")]
    if not found:
        raise UserError(f"no evaluation tasks under {root} (a task has test/nshards.txt)")
    return [load_task(p, str(p.relative_to(root))) for p in sorted(found)]


def task_samples(root: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The samples of a task's test split, in shard order."""
    layout = EvalTask(Path(root))
    n = int(layout.nshards.read_text().strip())
    for i in range(n):
        yield from iter_tar(layout.shard(i))


def decode_image(members: dict[str, bytes]):
    from PIL import Image

    for ext in IMAGE_EXTS:
        if ext in members:
            return Image.open(io.BytesIO(members[ext])).convert("RGB")
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
    metrics = {"acc1": accuracy(logits, targets, 1), "acc5": accuracy(logits, targets, 5),
               "mean_per_class_recall": mean_per_class_recall(logits, targets)}
    metrics["main_metric"] = metrics[main_metric]
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


def datacomp_average(results: dict[str, float]) -> tuple[float, int]:
    """DataComp's average: the mean main metric over its scored tasks present; returns (average, tasks used)."""
    scores = [v for k, v in results.items() if k in DATACOMP_TASKS]
    return (float(np.mean(scores)) if scores else float("nan")), len(scores)


# ------------------------------------------------------------------------------------ `mode download-tasks`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="tasks directory (then `mode evaluate --tasks OUT`)")
    p.add_argument("--keys", default="all", help="all, or DataComp task keys like vtab/dtd,cifar10")


def main(args: argparse.Namespace) -> None:
    keys = list(DATACOMP_TASKS) if args.keys == "all" else args.keys.split(",")
    unknown = [k for k in keys if k not in DATACOMP_TASKS]
    if unknown:
        raise UserError(f"unknown DataComp task {unknown[0]!r}; e.g. {', '.join(list(DATACOMP_TASKS)[:3])}")
    for key in keys:
        print(f"{key}: {download(key, args.out)}")
