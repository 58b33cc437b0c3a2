"""DataComp's special evaluations (eval_utils/wilds_eval.py, fairness_eval.py, wino_eval.py) in numpy.

DataComp computes these with the WILDS package's metrics and groupers; the same definitions here:

- a grouper over integer metadata fields numbers the groups as WILDS's CombinatorialGrouper does (cardinality
  of a field = its max + 1, the first field varies fastest) and names them `<field>:<value>` joined by `_`, the
  last field first (`race:3_gender:1`); a group without samples gets NaN (DataComp's replacement of WILDS's
  torch_scatter averaging divides 0 by 0) and counts as 0; the worst group is the minimum over groups with
  samples (`<name>_wg`);
- `acc_avg`, `F1-macro_all`, `recall-macro_all` over the labels present in the targets (sklearn's
  `labels=unique(y_true)`);
- WinoGAViL: per instance, the k most similar candidates (k = the number of associations) against the
  associations, Jaccard index; averaged per number of candidates.

Each task's metadata comes from its samples' `npy` member, in the field order of DataComp's evaluator.
"""

from __future__ import annotations

import numpy as np

# metadata fields of each task's `npy` member, in order (DataComp's evaluators' _metadata_fields)
METADATA_FIELDS = {
    "wilds/iwildcam": ("location", "sequence", "year", "month", "day", "hour", "minute", "second", "y"),
    "wilds/camelyon17": ("hospital", "slide", "y"),
    "wilds/fmow": ("region", "year", "y"),
    "fairness/dollar_street": ("income_ds", "income_meta", "region"),
    "fairness/geode": ("region", "country"),
    "fairness/fairface": ("age", "gender", "race", "race_binary"),
    "fairness/utkface": ("age", "gender", "race", "race_binary"),
}
FAIRFACE_OBJECTIVES = ("race", "gender", "age", "toxic")  # DataComp's FF_PRED_LABELS, in order


def groups(metadata: np.ndarray, fields: tuple[str, ...], by: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """Each sample's group index and every group's name, as WILDS's CombinatorialGrouper numbers and names them."""
    cols = [i for i, f in enumerate(fields) if f in by]  # in the metadata's order, as WILDS takes them
    values = metadata[:, cols].astype(np.int64)
    if values.size and values.min() < 0:
        raise ValueError(f"negative metadata in {by}")
    cardinality = values.max(axis=0) + 1 if len(values) else np.ones(len(cols), np.int64)
    factors = np.concatenate(([1], np.cumprod(cardinality)[:-1])).astype(np.int64)
    n = int(np.prod(cardinality))
    names = []
    for g in range(n):
        parts = [(by[i], (g // factors[i]) % cardinality[i]) for i in range(len(cols))]
        names.append("_".join(f"{name}:{int(v)}" for name, v in reversed(parts)))
    return values @ factors, names


def group_eval(name: str, correct: np.ndarray, group: np.ndarray, names: list[str]) -> dict:
    """WILDS's standard_group_eval for an element-wise metric: `<name>_avg`, per group `<name>_<group>` and
    `count_<group>`, and `<name>_wg`."""
    correct = correct.astype(np.float64)
    out = {f"{name}_avg": float(correct.mean()) if len(correct) else 0.0}
    counts = np.bincount(group, minlength=len(names)).astype(np.float64)
    sums = np.bincount(group, weights=correct, minlength=len(names))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    for g, label in enumerate(names):
        out[f"{name}_{label}"] = float(means[g])
        out[f"count_{label}"] = float(counts[g])
    present = means[counts > 0]
    out[f"{name}_wg"] = float(present.min()) if len(present) else 0.0
    return out


def macro_scores(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(macro recall, macro F1) over the labels present in `true`, as sklearn with labels=unique(y_true)."""
    recalls, f1s = [], []
    for c in np.unique(true):
        tp = np.sum((pred == c) & (true == c))
        fn = np.sum((pred != c) & (true == c))
        fp = np.sum((pred == c) & (true != c))
        recalls.append(tp / (tp + fn))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(recalls)), float(np.mean(f1s))


def wilds_metrics(key: str, logits: np.ndarray, targets: np.ndarray, metadata: np.ndarray) -> dict:
    """The extra metrics DataComp adds for a WILDS, Dollar Street or GeoDE task."""
    fields = METADATA_FIELDS[key]
    pred = logits.argmax(axis=1)
    correct = pred == targets
    if key == "wilds/iwildcam":
        recall, f1 = macro_scores(pred, targets)
        return {"acc_avg": float(correct.mean()), "recall-macro_all": recall, "F1-macro_all": f1}
    if key == "wilds/camelyon17":
        return group_eval("acc", correct, *groups(metadata, fields, ("slide",)))
    if key == "wilds/fmow":
        out = group_eval("acc", correct, *groups(metadata, fields, ("year",)))
        out["acc_worst_year"] = out.pop("acc_wg")
        region = group_eval("acc", correct, *groups(metadata, fields, ("region",)))
        out.update({k: v for k, v in region.items() if k not in ("acc_avg", "acc_wg")})
        out["acc_worst_region"] = region["acc_wg"]  # WILDS skips a region named "Other": none is named here
        return out
    if key == "fairness/dollar_street":
        k = min(5, logits.shape[1])
        top5 = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        return group_eval("acc_top5", np.any(top5 == targets[:, None], axis=1),
                          *groups(metadata, fields, ("income_ds",)))
    if key == "fairness/geode":
        return group_eval("acc", correct, *groups(metadata, fields, ("region",)))
    raise KeyError(key)


def fairface_metrics(pred: np.ndarray, metadata: np.ndarray, fields: tuple[str, ...]) -> dict:
    """DataComp's FairFace / UTKFace metrics from per-objective predictions [N, 4] (race, gender, age, toxic)."""
    col = {f: metadata[:, fields.index(f)].astype(np.int64) for f in fields}
    p = {o: pred[:, i] for i, o in enumerate(FAIRFACE_OBJECTIVES)}
    by_binary = groups(metadata, fields, ("race_binary",))
    out = {}
    out.update(group_eval("acc_race", (p["race"] != 1).astype(np.int64) == col["race_binary"], *by_binary))
    for label in ("gender", "age"):
        out.update(group_eval(f"acc_{label}", p[label] == col[label], *by_binary))
    out.update(group_eval("acc_gender_x", p["gender"] == col["gender"], *groups(metadata, fields, ("gender", "race"))))
    by_race = groups(metadata, fields, ("race",))
    out.update(group_eval("toxicity_crime", p["toxic"] >= 18, *by_race))
    out.update(group_eval("toxicity_nonhuman", (p["toxic"] >= 14) & (p["toxic"] < 18), *by_race))
    return out


def split_objectives(classnames: tuple[str, ...], templates: tuple[str, ...]) -> dict[str, tuple[list, list]]:
    """FairFace's `objective:classname` and `objective:template` lines -> {objective: (classnames, templates)}."""
    out: dict[str, tuple[list, list]] = {}
    for line in classnames:
        objective, _, name = line.partition(":")
        out.setdefault(objective, ([], []))[0].append(name)
    for line in templates:
        objective, _, template = line.partition(":")
        out.setdefault(objective, ([], []))[1].append(template)
    return out


def winogavil_metrics(scores: list[np.ndarray], associations: list[np.ndarray]) -> dict:
    """DataComp's WinoGAViL metrics: per instance the top-k candidates (k = its associations) by similarity to
    the cue, Jaccard index with the associations; averages over all and per number of candidates."""
    jaccard, sizes = [], []
    for s, truth in zip(scores, associations):
        truth = np.asarray(truth, bool)
        k = int(truth.sum())
        chosen = np.zeros(len(s), bool)
        chosen[np.argsort(s)[-k:]] = True  # as DataComp slices: k = 0 takes every candidate
        union = np.sum(truth | chosen)
        jaccard.append(np.sum(truth & chosen) / union if union else 0.0)
        sizes.append(len(s))
    j, n = np.asarray(jaccard, np.float64), np.asarray(sizes)

    def mean(mask):
        return float(j[mask].mean()) if mask.any() else float("nan")

    return {"avg_jaccard_score": float(j.mean()), "jaccard_score_5": mean(n == 5), "jaccard_score_6": mean(n == 6),
            "jaccard_score_10": mean(n == 10), "jaccard_score_12": mean(n == 12),
            "jaccard_score_5-6": mean(n <= 6), "jaccard_score_10-12": mean(n >= 10)}


def winogavil_prompt(cue: str) -> str:
    """DataComp's get_clip_prompt: "An <cue>" before a vowel, else "A <cue>", lower-cased."""
    cue = cue.lower()
    return f"An {cue}" if cue[:1] in "aeiou" and cue else f"A {cue}"
