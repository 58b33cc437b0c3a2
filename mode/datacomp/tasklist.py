"""DataComp's tasklist.yml: each task's key, name, main metric, number of classes and tags, in its order; the
38 scored tasks (FairFace and UTKFace are reported outside the average). `mode submit` checks results against
it; `mode.evaluation.tasks` scores them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskInfo:
    """A task of DataComp's tasklist.yml."""

    name: str
    main_metric: str
    num_classes: int | None
    tags: tuple[str, ...]


# DataComp's tasklist.yml: key -> (name, main metric, number of classes, tags); in its order.
_MPCR, _RECALL = "mean_per_class_recall", "mean_recall@1"
DATACOMP_TASKS: dict[str, TaskInfo] = {k: TaskInfo(*v) for k, v in {
    "vtab/caltech101": ("Caltech-101", _MPCR, 102, ("vtab_natural",)),
    "cifar10": ("CIFAR-10", "acc1", 10, ()),
    "vtab/cifar100": ("CIFAR-100", "acc1", 100, ("vtab_natural",)),
    "vtab/clevr_count_all": ("CLEVR Counts", "acc1", 8, ("vtab_structured",)),
    "vtab/clevr_closest_object_distance": ("CLEVR Distance", "acc1", 6, ("vtab_structured",)),
    "country211": ("Country211", "acc1", 211, ()),
    "vtab/dtd": ("Describable Textures", "acc1", 47, ("vtab_natural",)),
    "vtab/eurosat": ("EuroSAT", "acc1", 10, ("vtab_specialized",)),
    "fgvc_aircraft": ("FGVC Aircraft", _MPCR, 100, ()),
    "food101": ("Food-101", "acc1", 101, ()),
    "gtsrb": ("GTSRB", "acc1", 43, ()),
    "imagenet1k": ("ImageNet 1k", "acc1", 1000, ()),
    "imagenet_sketch": ("ImageNet Sketch", "acc1", 1000, ()),
    "imagenetv2": ("ImageNet v2", "acc1", 1000, ()),
    "imagenet-a": ("ImageNet-A", "acc1", 200, ()),
    "imagenet-o": ("ImageNet-O", "acc1", 200, ()),
    "imagenet-r": ("ImageNet-R", "acc1", 200, ()),
    "vtab/kitti_closest_vehicle_distance": ("KITTI Vehicle Distance", "acc1", 4, ("vtab_structured",)),
    "mnist": ("MNIST", "acc1", 10, ()),
    "objectnet": ("ObjectNet", "acc1", 113, ()),
    "vtab/flowers": ("Oxford Flowers-102", _MPCR, 102, ("vtab_natural",)),
    "vtab/pets": ("Oxford-IIIT Pet", _MPCR, 37, ("vtab_natural",)),
    "voc2007": ("Pascal VOC 2007", "acc1", 20, ()),
    "vtab/pcam": ("PatchCamelyon", "acc1", 2, ("vtab_specialized",)),
    "renderedsst2": ("Rendered SST2", "acc1", 2, ()),
    "vtab/resisc45": ("RESISC45", "acc1", 45, ("vtab_specialized",)),
    "cars": ("Stanford Cars", "acc1", 196, ()),
    "stl10": ("STL-10", "acc1", 10, ()),
    "sun397": ("SUN397", "acc1", 397, ("vtab_natural",)),
    "vtab/svhn": ("SVHN", "acc1", 10, ("vtab_natural",)),
    "retrieval/flickr_1k_test_image_text_retrieval": ("Flickr", _RECALL, None, ("retrieval",)),
    "retrieval/mscoco_2014_5k_test_image_text_retrieval": ("MSCOCO", _RECALL, None, ("retrieval",)),
    "misc/winogavil": ("WinoGAViL", "jaccard_score_10-12", None, ("retrieval",)),
    "wilds/iwildcam": ("iWildCam", "F1-macro_all", 182, ("wilds",)),
    "wilds/camelyon17": ("Camelyon17", "acc1", 2, ("wilds",)),
    "wilds/fmow": ("FMoW", "acc_worst_region", 62, ("wilds",)),
    "fairness/dollar_street": ("Dollar Street", "acc_top5_wg", 58, ("fairness",)),
    "fairness/geode": ("GeoDE", "acc_wg", 40, ("fairness",)),
    "fairness/fairface": ("FairFace", "acc1", None, ("fairness",)),
    "fairness/utkface": ("UTKFace", "acc1", None, ("fairness",)),
}.items()}
SCORED = tuple(k for k in DATACOMP_TASKS if not k.startswith(("fairness/fairface", "fairness/utkface")))
