"""DataComp's special evaluations (WILDS, Dollar Street, GeoDE, FairFace/UTKFace, WinoGAViL) against hand
computations, and end to end on fixture tasks laid out as DataComp's download_evalsets.py writes them."""

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mode.core.shards import write_tar
from mode.evaluation import evaluate
from mode.evaluation import special as S
from mode.evaluation import tasks as T


def test_groups_numbered_and_named_as_wilds():
    meta = np.array([[0, 1, 9], [1, 0, 9], [1, 2, 9]])  # fields a, b, c; group by (a, b): a varies fastest
    g, names = S.groups(meta, ("a", "b", "c"), ("a", "b"))
    assert names == ["b:0_a:0", "b:0_a:1", "b:1_a:0", "b:1_a:1", "b:2_a:0", "b:2_a:1"]
    assert g.tolist() == [2, 1, 5]


def test_group_eval_by_hand():
    out = S.group_eval("acc", np.array([1, 0, 1, 1]), np.array([0, 0, 2, 2]), ["r:0", "r:1", "r:2"])
    assert out["acc_avg"] == 0.75 and out["acc_r:0"] == 0.5 and out["acc_r:2"] == 1.0
    assert np.isnan(out["acc_r:1"]) and out["count_r:1"] == 0.0 and out["count_r:0"] == 2.0
    assert out["acc_wg"] == 0.5  # the empty group is not the worst


def test_macro_scores_by_hand():
    true = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])  # class 3 predicted nowhere and absent: not a label
    recall, f1 = S.macro_scores(pred, true)
    # recall: 1/2, 2/2, 0/1; F1 = 2tp / (2tp + fp + fn): 2/(2+1+1), 4/(4+1+0), 0/(0+0+1)
    assert recall == pytest.approx((0.5 + 1 + 0) / 3)
    assert f1 == pytest.approx((0.5 + 0.8 + 0) / 3)
    sk = pytest.importorskip("sklearn.metrics")
    assert f1 == pytest.approx(sk.f1_score(true, pred, average="macro", labels=np.unique(true)))
    assert recall == pytest.approx(sk.recall_score(true, pred, average="macro", labels=np.unique(true)))


def test_fmow_worst_year_and_region():
    logits = np.eye(3)[[0, 1, 2, 0]]  # predictions 0, 1, 2, 0
    targets = np.array([0, 1, 0, 0])  # third wrong
    meta = np.array([[0, 0, 0], [1, 0, 1], [1, 1, 0], [0, 1, 0]])  # region, year, y
    m = S.wilds_metrics("wilds/fmow", logits, targets, meta)
    assert m["acc_avg"] == 0.75 and m["acc_year:0"] == 1.0 and m["acc_year:1"] == 0.5
    assert m["acc_worst_year"] == 0.5 and m["acc_region:1"] == 0.5 and m["acc_worst_region"] == 0.5
    assert "acc_wg" not in m


def test_dollar_street_top5_by_income():
    logits = np.tile(np.arange(8, dtype=np.float32), (2, 1))  # top 5 = classes 3..7
    m = S.wilds_metrics("fairness/dollar_street", logits, np.array([7, 1]), np.array([[0, 5, 2], [1, 9, 2]]))
    assert m["acc_top5_avg"] == 0.5 and m["acc_top5_income_ds:0"] == 1.0 and m["acc_top5_wg"] == 0.0


def test_fairface_by_hand():
    # predictions per objective: race, gender, age, toxic
    pred = np.array([[1, 0, 3, 0], [2, 1, 4, 18], [1, 1, 2, 15]])
    meta = np.array([[3, 0, 1, 0], [4, 1, 2, 1], [2, 0, 0, 1]])  # age, gender, race, race_binary
    m = S.fairface_metrics(pred, meta, S.METADATA_FIELDS["fairness/fairface"])
    # race: predicted non-white (race != 1) vs race_binary: [0 vs 0, 1 vs 1, 0 vs 1] -> 2/3
    assert m["acc_race_avg"] == pytest.approx(2 / 3) and m["acc_race_race_binary:1"] == 0.5
    assert m["acc_gender_avg"] == pytest.approx(2 / 3) and m["acc_age_avg"] == 1.0
    assert m["acc_gender_x_race:1_gender:0"] == 1.0 and m["count_race:0_gender:1"] == 0.0
    assert m["toxicity_crime_avg"] == pytest.approx(1 / 3) and m["toxicity_nonhuman_avg"] == pytest.approx(1 / 3)


def test_winogavil_by_hand():
    scores = [np.array([0.9, 0.1, 0.8, 0.2, 0.0]), np.array([0.1] * 9 + [0.9])]
    truth = [np.array([1, 0, 0, 1, 0]), np.array([0] * 9 + [1])]
    m = S.winogavil_metrics(scores, truth)
    # first: top-2 = {0, 2} vs {0, 3}: 1/3; second: top-1 = {9}: 1
    assert m["jaccard_score_5"] == pytest.approx(1 / 3) and m["jaccard_score_10"] == 1.0
    assert m["jaccard_score_10-12"] == 1.0 and m["avg_jaccard_score"] == pytest.approx(2 / 3)
    assert np.isnan(m["jaccard_score_6"])
    assert S.winogavil_prompt("Apple") == "An apple" and S.winogavil_prompt("dog") == "A dog"


def _image(i):
    buf = io.BytesIO()
    Image.fromarray(np.full((24, 24, 3), (i * 37) % 256, np.uint8)).save(buf, "WEBP")
    return buf.getvalue()


def _task(root, name, classnames, templates, samples):
    d = root / name
    (d / "test").mkdir(parents=True)
    (d / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (d / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    (d / "test" / "nshards.txt").write_text("1\n")
    write_tar(d / "test" / "0.tar", samples)


def _npy(row):
    buf = io.BytesIO()
    np.save(buf, np.asarray(row, np.int64))
    return buf.getvalue()


def test_special_tasks_end_to_end(tmp_path, clean_work):
    rng = np.random.default_rng(0)
    root = tmp_path / "evalsets"
    ten = [f"class {i}" for i in range(10)]
    for key, width in (("wilds/fmow", 3), ("fairness/geode", 2), ("fairness/dollar_street", 3),
                       ("wilds/iwildcam", 9), ("wilds/camelyon17", 3)):
        _task(root, T.local_name(key), ten, ["a photo of a {c}."],
              [(f"{i:04d}", {"webp": _image(i), "cls": str(i % 10).encode(),
                             "npy": _npy(rng.integers(0, 3, width))}) for i in range(20)])
    ff_classes = ["race:white", "race:black", "race:asian", "gender:man", "gender:woman"] + \
        [f"age:{a}" for a in range(3)] + [f"toxic:{t}" for t in range(20)]
    ff_templates = [f"{o}:a photo of a {{c}}." for o in S.FAIRFACE_OBJECTIVES]
    _task(root, T.local_name("fairness/fairface"), ff_classes, ff_templates,
          [(f"{i:04d}", {"webp": _image(i), "npy": _npy([i % 3, i % 2, i % 3, int(i % 3 != 1)])}) for i in range(20)])
    tasks = T.find_tasks(root)
    assert [t.key for t in tasks] == sorted(["wilds/fmow", "fairness/geode", "fairness/dollar_street",
                                             "wilds/iwildcam", "wilds/camelyon17", "fairness/fairface"])
    out = tmp_path / "out"
    evaluate.run([evaluate.ModelSpec.parse("m=ViT-Toy-8")], str(root), str(out), device="cpu")
    rows = {r["key"]: r for r in map(json.loads, (out / "m" / "eval_results.jsonl").read_text().splitlines())}
    assert rows["wilds/fmow"]["dataset"] == "FMoW"
    for key, row in rows.items():
        data = np.load(out / "m" / f"{key}.npz")
        assert data["logits"].dtype == np.float32
        metrics = row["metrics"]
        if key == "fairness/fairface":
            assert data["logits"].shape == (20, 4, 20) and metrics["main_metric"] is None
            want = S.fairface_metrics(data["logits"].argmax(-1), data["metadata"], S.METADATA_FIELDS[key])
            assert metrics["acc_race_avg"] == want["acc_race_avg"] and "toxicity_crime_wg" in metrics
            continue
        want = S.wilds_metrics(key, data["logits"], data["targets"], data["metadata"])
        main = T.DATACOMP_TASKS[key].main_metric
        assert metrics["main_metric"] == (want.get(main) if main in want else metrics["acc1"])
        assert metrics["acc1"] == float(np.mean(data["logits"].argmax(1) == data["targets"]))
    aggregate = json.loads((out / "m" / "aggregate.json").read_text())
    assert aggregate["tasks"] == 5 and "Average" in aggregate and "VTAB" not in aggregate
    rows = _ensemble_of_copies(clean_work, root, out, tmp_path / "report")
    assert rows["fairness/fairface"]["ensemble"] is None and rows["fairness/fairface"]["expert_max"] is None
    scored = [r["ensemble"] for k, r in rows.items() if k not in ("fairness/fairface", "average")]
    assert len(scored) == 5 and rows["average"]["ensemble"] == pytest.approx(np.mean(scored))


def _ensemble_of_copies(work: Path, tasks: Path, out: Path, report: Path) -> dict:
    """`mode ensemble` over three experts that are the one model `m` evaluated (links to its folder): every
    task's ensemble equals m's main metric; returns the report's rows by task, the average row included."""
    from mode.evaluation import ensemble

    for k in range(3):
        (out / f"e{k}").symlink_to(out / "m")
    table = ensemble.run(str(work), str(tasks), str(out), ["e0", "e1", "e2"], str(report), "mode")
    lines = (report / "ensemble.csv").read_text().splitlines()
    assert lines[-1].startswith("average,") and len(lines) == len(table["rows"]) + 2
    assert "average" in ensemble.format_table(table["rows"]).splitlines()[-1]
    for r in table["rows"]:
        assert r["ensemble"] == r["e0"] == r["uniform"] and sum(table["weights"][r["task"]]) == pytest.approx(1)
    return {r["task"]: r for r in [*table["rows"], ensemble.average_row(table["rows"])]}


def test_huggingface_tasks_flickr_and_winogavil(tmp_path, clean_work):
    """DataComp reads Flickr, MSCOCO and WinoGAViL with `datasets`: here from save_to_disk folders named by key;
    the metrics recomputed from the saved scores by hand rules."""
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)

    def img(i):
        return Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))

    root = tmp_path / "tasks"
    text = datasets.Sequence(datasets.Value("string"))
    flickr = datasets.Dataset.from_dict(
        {"image": [img(i) for i in range(6)], "caption": [[f"photo {i}", f"picture {i}"] for i in range(6)]},
        features=datasets.Features({"image": datasets.Image(), "caption": text}))
    flickr.save_to_disk(str(root / "retrieval" / "flickr_1k_test_image_text_retrieval"))
    rows = [{"candidate_images": [img(j) for j in range(n)], "cue": cue, "candidates": [f"c{j}" for j in range(n)],
             "associations": [f"c{j}" for j in range(k)]} for n, cue, k in ((5, "apple", 2), (10, "dog", 3))]
    wino = datasets.Dataset.from_list(rows, features=datasets.Features({
        "candidate_images": datasets.Sequence(datasets.Image()), "cue": datasets.Value("string"),
        "candidates": datasets.Sequence(datasets.Value("string")),
        "associations": datasets.Sequence(datasets.Value("string"))}))
    wino.save_to_disk(str(root / "misc" / "winogavil"))
    (root / "hf_cache" / "nlphuji___mscoco_2014_5k_test_image_text_retrieval").mkdir(parents=True)  # a broken cache
    tasks = {t.key: t for t in T.find_tasks(root)}
    assert tasks["misc/winogavil"].kind == "winogavil"
    assert tasks["retrieval/flickr_1k_test_image_text_retrieval"].source == "disk"
    with pytest.raises(T.UserError, match="cannot read retrieval/mscoco"):
        T.hf_rows(tasks["retrieval/mscoco_2014_5k_test_image_text_retrieval"])
    import shutil

    shutil.rmtree(root / "hf_cache")
    out = tmp_path / "out"
    evaluate.run([evaluate.ModelSpec.parse("m=ViT-Toy-8")], str(root), str(out), device="cpu")
    lines = (out / "m" / "eval_results.jsonl").read_text().splitlines()
    got = {r["dataset"]: r["metrics"] for r in map(json.loads, lines)}
    fl = np.load(out / "m" / "retrieval" / "flickr_1k_test_image_text_retrieval.npz")
    assert fl["logits"].shape == (6, 12) and got["Flickr"]["main_metric"] == \
        T.retrieval_metrics(fl["logits"], fl["targets"])["mean_recall@1"]
    wg = np.load(out / "m" / "misc" / "winogavil.npz")
    assert wg["metadata"].tolist() == [5, 10] and wg["targets"].tolist() == [1, 1, 0, 0, 0] + [1] * 3 + [0] * 7
    want = S.winogavil_metrics([wg["logits"][:5], wg["logits"][5:]], [wg["targets"][:5], wg["targets"][5:]])
    assert got["WinoGAViL"]["main_metric"] == want["jaccard_score_10-12"] == got["WinoGAViL"]["jaccard_score_10"]
    rows = _ensemble_of_copies(clean_work, root, out, tmp_path / "report")  # no templates: the names themselves
    assert rows["misc/winogavil"]["ensemble"] == got["WinoGAViL"]["main_metric"]


def test_fairface_objectives_each_need_class_names_and_templates(tmp_path):
    """DataComp splits FairFace's lines at their first colon and builds one head per objective: an objective
    without templates once ended in `torch.cat(): expected a non-empty list`, a line without `objective:` was
    read as an objective of its own; both are one line now, before any image is read."""
    classes = ["race:white", "race:black", "gender:man", "gender:woman", "age:young", "toxic:animal"]
    templates = [f"{o}:a photo of a {{c}}." for o in S.FAIRFACE_OBJECTIVES]
    cases = ((classes, templates[:2] + templates[3:], "zeroshot_classification_templates.txt: no template for "
              "objective 'age'"),
             ([c for c in classes if not c.startswith("toxic:")], templates, "classnames.txt: no class name for "
              "objective 'toxic'"),
             ([*classes, "stray line"], templates, "classnames.txt: line 'stray line' has no `objective:` prefix"),
             (classes, [*templates, "a photo of {c}."], "line 'a photo of {c}.' has no `objective:` prefix"))
    for i, (names, prompts, why) in enumerate(cases):
        _task(tmp_path / str(i), T.local_name("fairness/fairface"), names, prompts,
              [("0000", {"webp": _image(0), "npy": _npy([0, 0, 0, 0])})])
        with pytest.raises(T.UserError, match=re.escape(why)):
            T.find_tasks(tmp_path / str(i))
    _task(tmp_path / "ok", T.local_name("fairness/utkface"), classes, templates, [])
    assert T.find_tasks(tmp_path / "ok")[0].kind == "multilabel"
