"""Evaluation tasks, metrics against hand-computed values, expert weights, and the ensemble report."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mode.core.errors import UserError
from mode.core.layout import Pool, WorkDir
from mode.evaluation import ensemble, evaluate
from mode.evaluation import tasks as T
from mode.toy.pool import DOMAINS


def test_classification_metrics_by_hand():
    logits = np.array([[0.9, 0.1, 0.0],   # pred 0, target 0: hit
                       [0.2, 0.7, 0.1],   # pred 1, target 1: hit
                       [0.5, 0.4, 0.1],   # pred 0, target 1: miss (2nd)
                       [0.1, 0.3, 0.6],   # pred 2, target 2: hit
                       [0.6, 0.1, 0.3]])  # pred 0, target 2: miss (2nd)
    targets = np.array([0, 1, 1, 2, 2])
    m = T.classification_metrics(logits, targets)
    assert m["acc1"] == pytest.approx(3 / 5)
    assert m["acc5"] is None  # DataComp reports no top-5 below 5 classes
    assert T.classification_metrics(np.pad(logits, ((0, 0), (0, 2))), targets)["acc5"] == 1.0
    assert T.accuracy(logits, targets, 2) == 1.0  # both misses are second
    assert T.accuracy(logits[:, [1, 2, 0]], targets, 2) == pytest.approx(2 / 5)  # columns permuted by hand
    # class 0: 1/1, class 1: 1/2, class 2: 1/2 -> mean 2/3
    assert m["mean_per_class_recall"] == pytest.approx(2 / 3)
    assert m["main_metric"] == m["acc1"]
    assert T.classification_metrics(logits, targets, "mean_per_class_recall")["main_metric"] == pytest.approx(2 / 3)


def test_retrieval_recall_by_hand():
    # 2 images, 3 captions: captions 0, 1 belong to image 0, caption 2 to image 1
    sim = np.array([[0.9, 0.1, 0.8],
                    [0.2, 0.3, 0.4]])
    owner = np.array([0, 0, 1])
    m = T.retrieval_metrics(sim, owner)
    # caption -> image (top-1): c0 -> img0 ok, c1 -> img1 (0.3 > 0.1) wrong, c2 -> img0 (0.8 > 0.4) wrong
    assert m["image_retrieval_recall@1"] == pytest.approx(1 / 3)
    # image -> caption (top-1): img0 -> c0 ok, img1 -> c2 ok
    assert m["text_retrieval_recall@1"] == 1.0
    assert m["mean_recall@1"] == pytest.approx((1 / 3 + 1) / 2) == m["main_metric"]
    assert m["image_retrieval_recall@5"] == 1.0


def test_datacomp_task_list_and_average():
    assert len(T.DATACOMP_TASKS) == 40 and len(T.SCORED) == 38  # + FairFace, UTKFace (reported, not averaged)
    assert T.DATACOMP_TASKS["vtab/pets"].main_metric == "mean_per_class_recall"
    assert T.DATACOMP_TASKS["retrieval/flickr_1k_test_image_text_retrieval"].name == "Flickr"
    assert T.hub_repo("vtab/dtd") == "djghosh/wds_vtab-dtd_test"
    assert T.hub_repo("fairness/geode") == "djghosh/wds_geode_test"
    assert T.hub_repo("wilds/iwildcam") == "djghosh/wds_wilds-iwildcam_test"
    assert T.hub_repo("misc/winogavil") == "nlphuji/winogavil"
    avg, n = T.datacomp_average({"imagenet1k": 0.5, "cifar10": 0.7, "toy_shapes": 0.1, "fairness/fairface": None})
    assert (avg, n) == (pytest.approx(0.6), 2)


def test_toy_tasks_load(toy_pool):
    tasks = T.find_tasks(Pool(toy_pool).eval_tasks_dir)
    assert [t.key for t in tasks] == sorted(d.task for d in DOMAINS)
    shapes = next(t for t in tasks if t.key == "toy_shapes")
    assert shapes.kind == "classification" and shapes.main_metric == "acc1"
    assert shapes.prompts("circle")[0] == "a photo of a circle."
    with pytest.raises(UserError, match="not an evaluation task"):
        T.load_task(toy_pool)
    # --tasks naming one task folder: keyed by its name (once ".", its logits written as "..npz")
    for given in (shapes.path, shapes.path / ".", shapes.path / ".." / "toy_shapes"):
        assert [t.key for t in T.find_tasks(given)] == ["toy_shapes"]


def test_class_and_template_lines_read_as_datacomps_clip_benchmark(toy_pool, tmp_path):
    """clip_benchmark 1.4.0 (DataComp's pin) strips each line and drops blank ones, class names included."""
    import shutil

    task = tmp_path / "toy_shapes"
    shutil.copytree(Pool(toy_pool).eval_tasks_dir / "toy_shapes", task)
    (task / "classnames.txt").write_text("very nearby \n nearby\n\nfar\n")
    (task / "zeroshot_classification_templates.txt").write_text("a photo of {c}. \n\n  {c} shapes.\n")
    loaded = T.load_task(task)
    assert loaded.classnames == ("very nearby", "nearby", "far")
    assert loaded.templates == ("a photo of {c}.", "{c} shapes.") and loaded.prompts("far")[1] == "far shapes."


def test_mode_weighting_by_hand():
    # 2 coarse clusters; fine centroids 0,1 -> coarse 0, fine 2 -> coarse 1 (unit vectors in 3-d)
    fine = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    f2c = np.array([0, 0, 1])
    s2 = math.sqrt(0.5)
    class_emb = np.array([[1.0, 0, 0], [s2, 0, s2], [0, 0, 1.0]])  # d = 0, 0.765 (tie -> fine 0), 0
    c = 3
    a, m = math.exp(0.5 - math.sqrt(c)), 5 * math.log10(10)
    d_tie = math.sqrt(2 - 2 * s2)
    s0 = math.exp(a * m) + math.exp((a - d_tie) * m)
    s1 = math.exp(a * m)
    expected = np.exp(np.array([s0, s1]) / 8) / np.exp(np.array([s0, s1]) / 8).sum()
    np.testing.assert_allclose(ensemble.expert_weights("mode", class_emb, fine, f2c), expected, rtol=1e-9)
    np.testing.assert_allclose(ensemble.mode_scores(class_emb, fine, f2c), [s0, s1], rtol=1e-9)
    assert ensemble.expert_weights("top1", class_emb, fine, f2c).tolist() == [1.0, 0.0]
    assert ensemble.expert_weights("uniform", class_emb, fine, f2c).tolist() == [0.5, 0.5]
    coarse = np.array([[1.0, 0, 0], [0, 0, 1.0]])
    w = ensemble.expert_weights("mean_cosine", fine[:2], fine, f2c, coarse)  # mean cosines 0.5 and 0
    np.testing.assert_allclose(w, np.exp([10, 0]) / np.exp([10, 0]).sum())
    # many classes: a = 0 and m grows with C
    many = np.tile(class_emb, (100, 1))
    s = ensemble.mode_scores(many, fine, f2c)
    assert s[1] == pytest.approx(100 * math.exp(0.0))
    with pytest.raises(UserError):
        ensemble.expert_weights("nope", class_emb, fine, f2c)


def _domain_of_cluster(work):
    """Majority toy domain of each coarse cluster, from the assignment and the captions."""
    from collections import Counter

    votes = {}
    wd = WorkDir(work)
    for p in sorted(wd.assign_dir.glob("*.parquet")):
        a = pq.read_table(p).to_pydict()
        caps = pq.read_table(wd.captions(p.stem)).column("caption").to_pylist()
        for k, cap in zip(a["coarse"], caps):
            for d in DOMAINS:
                if any(c in cap for c in d.classes):
                    votes.setdefault(k, Counter())[d.name] += 1
    return {k: v.most_common(1)[0][0] for k, v in votes.items()}


@pytest.mark.parametrize("method", ["mode", "top1", "mean_cosine"])
def test_largest_weight_goes_to_the_tasks_domain(toy_pool, clean_work, method):
    wd = WorkDir(clean_work)
    fine, f2c, coarse = np.load(wd.fine_centroids), np.load(wd.fine_to_coarse), np.load(wd.coarse_centroids)
    domain_of = _domain_of_cluster(clean_work)
    assert sorted(domain_of.values()) == sorted(d.name for d in DOMAINS)
    for task in T.find_tasks(Pool(toy_pool).eval_tasks_dir):
        w = ensemble.expert_weights(method, ensemble.class_embeddings(task, None), fine, f2c, coarse)
        assert domain_of[int(np.argmax(w))] == task.key.removeprefix("toy_"), (task.key, w)


def test_evaluate_and_ensemble_report(toy_pool, clean_work, tmp_path):
    """Random-weight models: the pipeline's files and formats, and the ensemble's arithmetic."""
    tasks = Pool(toy_pool).eval_tasks_dir
    specs = [evaluate.ModelSpec.parse(f"e{k}=ViT-Toy-8") for k in range(3)]
    specs.append(evaluate.ModelSpec.parse("dense=toy_tiny"))
    out = tmp_path / "eval"
    results = evaluate.run(specs, str(tasks), str(out), device="cpu")
    assert set(results) == {"e0", "e1", "e2", "dense"}
    rows = [json.loads(line) for line in (out / "e0" / "eval_results.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == ["toy_glyphs", "toy_shapes", "toy_textures"]
    assert {"acc1", "acc5", "mean_per_class_recall", "main_metric"} <= set(rows[0]["metrics"])
    npz = np.load(out / "e0" / "toy_shapes.npz")
    assert npz["logits"].shape == (24, 6) and npz["logits"].dtype == np.float32 and npz["targets"].shape == (24,)
    assert np.abs(npz["logits"].astype(np.float32)).max() <= 1.0 + 1e-3  # raw cosines
    mtime = (out / "e0" / "toy_shapes.npz").stat().st_mtime_ns
    evaluate.run(specs, str(tasks), str(out), device="cpu")  # complete: skipped
    assert (out / "e0" / "toy_shapes.npz").stat().st_mtime_ns == mtime

    report = tmp_path / "report"
    table = ensemble.run(str(clean_work), str(tasks), str(out), ["e0", "e1", "e2"], str(report), "mode", "dense")
    row = next(r for r in table["rows"] if r["task"] == "toy_shapes")
    w = table["weights"]["toy_shapes"]
    logits = [np.load(out / e / "toy_shapes.npz")["logits"].astype(np.float32) for e in ("e0", "e1", "e2")]
    combined = sum(wk * x for wk, x in zip(w, logits))
    assert row["ensemble"] == pytest.approx(T.accuracy(combined, npz["targets"]))
    assert row["expert_max"] == max(row["e0"], row["e1"], row["e2"])
    csv_lines = (report / "ensemble.csv").read_text().splitlines()
    assert csv_lines[0] == "task,num_classes,e0,e1,e2,expert_max,uniform,ensemble,dense"
    assert csv_lines[-1].startswith("average,") and len(csv_lines) == 5
    assert json.loads((report / "weights.json").read_text())["weighting"] == "mode"
    assert (report / "weights.png").stat().st_size > 0 and (report / "scores.png").stat().st_size > 0
    with pytest.raises(UserError, match="run `mode evaluate` first"):
        ensemble.run(str(clean_work), str(tasks), str(out), ["e0", "e1", "missing"], str(report))
    dense_rows = (out / "dense" / "eval_results.jsonl").read_text()
    # once overwrote e0's eval_results.jsonl, and then that of a label not named on the command line (dense)
    for inside in (out / "e0", out / "dense", out / "dense" / "sub", out / "new", out, clean_work / "clusters"):
        with pytest.raises(UserError, match="overlaps"):
            ensemble.run(str(clean_work), str(tasks), str(out), ["e0", "e1", "e2"], str(inside))
    assert json.loads((out / "e0" / "eval_results.jsonl").read_text().splitlines()[0])["key"] == "toy_glyphs"
    assert (out / "dense" / "eval_results.jsonl").read_text() == dense_rows and not (out / "new").exists()


def _datacomp_results(path: Path, drop: tuple[str, ...] = (), extra: tuple[dict, ...] = (), **scores) -> Path:
    """An eval_results.jsonl with a row for every task of DataComp's tasklist but `drop` (main metric 0.5, or
    scores[key with / as __]; None for FairFace and UTKFace, as DataComp writes them), then `extra` rows."""
    rows = [{"key": k, "dataset": v.name,
             "metrics": {"main_metric": scores.get(k.replace("/", "__"), 0.5) if k in T.SCORED else None}}
            for k, v in T.DATACOMP_TASKS.items() if k not in drop]
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *extra]))
    return path


def test_submit_takes_datacomps_tasks_only(tmp_path):
    """DataComp's --submit scores every task of its tasklist and keeps only those: results missing a scored task's
    main metric are refused in one line naming them (once a bundle of three toy tasks was made), and rows of
    other tasks stay out of the bundle's results.jsonl and the record."""
    from mode.core.uids import hex_to_pairs, save_subset
    from mode.datacomp import submit

    save_subset(str(tmp_path / "ids.npy"), hex_to_pairs(["ab" * 16]))
    toy = {"key": "toy_shapes", "dataset": "toy_shapes", "metrics": {"main_metric": 0.9}}

    def bundle(results: Path, name: str) -> Path:
        return submit.build_bundle(submit.Submission(scale="small", track="filtering", method_name="m", author="a",
                                                     email="e", samples=str(tmp_path / "ids.npy"),
                                                     results=str(results), hf_repo="me/sub"), str(tmp_path / name))

    root = bundle(_datacomp_results(tmp_path / "full.jsonl", extra=(toy,), cars=0.25), "b1")
    rows = [json.loads(line) for line in (root / "small_scale" / "results.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == list(T.DATACOMP_TASKS)
    rec = json.loads((root / "submission.json").read_text())
    assert "toy_shapes" not in rec and rec["Stanford Cars"] == 0.25 and "FairFace" not in rec
    assert sum(v.name in rec for v in T.DATACOMP_TASKS.values()) == 38
    for results, why in ((_datacomp_results(tmp_path / "p.jsonl", drop=("cars",), mnist=None), "2 of DataComp's 38 "
                          "scored tasks (MNIST, Stanford Cars)"),
                         (tmp_path / "toy.jsonl", "38 of DataComp's 38 scored tasks (Caltech-101, CIFAR-10, "
                          "CIFAR-100, ...)"),
                         (_datacomp_results(tmp_path / "twice.jsonl", extra=(rows[0],)), "vtab/caltech101 twice")):
        if results.name == "toy.jsonl":
            results.write_text(json.dumps(toy) + "\n")
        with pytest.raises(UserError, match=re.escape(why)):
            bundle(results, "b2")
        assert not (tmp_path / "b2").exists()


def test_submit_dry_run_bundle(tmp_path, monkeypatch):
    from mode.core.uids import hex_to_pairs, save_subset

    from ..conftest import PYTHON, run

    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_never_written")
    rng = np.random.default_rng(0)
    save_subset(str(tmp_path / "a.npy"), hex_to_pairs([rng.bytes(16).hex() for _ in range(7)]))
    save_subset(str(tmp_path / "b.npy"), hex_to_pairs([rng.bytes(16).hex() for _ in range(5)]))
    results = _datacomp_results(tmp_path / "eval_results.jsonl")
    bundle = tmp_path / "bundle"
    res = run([PYTHON, "-m", "mode", "submit", "--scale", "small", "--track", "filtering", "--method-name", "m",
               "--author", "me", "--email", "me@example.org",
               "--samples", f"{tmp_path / 'a.npy'}::{tmp_path / 'b.npy'}",
               "--results", str(results), "--hf-repo", "me/sub", "--bundle", str(bundle), "--dry-run"],
              env={"HF_TOKEN": "hf_secret_token_never_written"})
    assert res.returncode == 0, res.stderr
    assert "dry run" in res.stdout and "hf_secret" not in res.stdout + res.stderr
    rec = json.loads((bundle / "submission.json").read_text())
    fields = {"scale", "model", "dataset_size", "checkpoint", "batch_size", "learning_rate", "method_name", "author",
              "email", "hf_username", "hf_repo_name", "timestamp", "track", "writeup"}
    assert fields <= set(rec)
    # dataset_size: DataComp fills in the scale's train_num_samples when none is given
    assert (rec["scale"], rec["model"], rec["batch_size"], rec["dataset_size"]) == ("small", "ViT-B-32", 4096,
                                                                                  12_800_000)
    # nothing is sent to DataComp's leaderboard: the preview once said the record's fields were public there
    assert "public on the leaderboard" not in res.stdout and "small_scale/results.jsonl" in res.stdout
    assert f"sent nowhere: {bundle / 'submission.json'}, DataComp's leaderboard record" in res.stdout
    assert (rec["hf_username"], rec["hf_repo_name"], rec["ImageNet 1k"]) == ("me", "sub", 0.5)
    assert sorted(p.name for p in (bundle / "small_scale" / "samples").iterdir()) == ["a.npy", "b.npy"]
    assert (bundle / "small_scale" / "results.jsonl").read_text() == results.read_text()
    assert not any("hf_secret" in p.read_text(errors="ignore") for p in bundle.rglob("*") if p.is_file())
    unsorted = tmp_path / "bad.npy"
    np.save(unsorted, np.array([(5, 0), (1, 0)], dtype="u8,u8"))
    res = run([PYTHON, "-m", "mode", "submit", "--scale", "small", "--track", "filtering", "--method-name", "m",
               "--author", "me", "--email", "e", "--samples", str(unsorted), "--results", str(results),
               "--hf-repo", "me/sub", "--bundle", str(tmp_path / "b2"), "--dry-run"])
    assert res.returncode == 2 and "not sorted" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    for text, why in (("", "holds no results"), ("\n\n", "holds no results"), ("not json\n", "line 1"),
                      ('{"key": "x"}\n', "line 1")):  # an empty results file once made an empty bundle
        bad = tmp_path / "bad_results.jsonl"
        bad.write_text(text)
        res = run([PYTHON, "-m", "mode", "submit", "--scale", "small", "--track", "filtering", "--method-name", "m",
                   "--author", "me", "--email", "e", "--samples", str(tmp_path / "a.npy"), "--results", str(bad),
                   "--hf-repo", "me/sub", "--bundle", str(tmp_path / "b3"), "--dry-run"])
        assert res.returncode == 2 and why in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (tmp_path / "b3").exists()


def test_submit_byod_takes_other_data_files_as_they_are(tmp_path):
    """DataComp's BYOD track: `ids.npy::custom_data.parquet`; the parquet is bundled byte for byte, while the
    filtering track still takes only uid subsets, and two files of one name are refused."""
    from dataclasses import replace

    from mode.core.uids import hex_to_pairs, save_subset
    from mode.datacomp import submit

    save_subset(str(tmp_path / "ids.npy"), hex_to_pairs(["ab" * 16, "cd" * 16]))
    extra = tmp_path / "custom_data.parquet"
    extra.write_bytes(b"PAR1 not checked PAR1")
    results = _datacomp_results(tmp_path / "eval_results.jsonl")

    def sub(track, samples):
        return submit.Submission(scale="small", track=track, method_name="m", author="a", email="e",
                                 samples=samples, results=str(results), hf_repo="me/sub")

    root = submit.build_bundle(sub("byod", f"{tmp_path / 'ids.npy'}::{extra}"), str(tmp_path / "bundle"))
    assert (root / "small_scale" / "samples" / "custom_data.parquet").read_bytes() == extra.read_bytes()
    with pytest.raises(UserError, match="custom_data.parquet"):
        submit.build_bundle(sub("filtering", f"{tmp_path / 'ids.npy'}::{extra}"), str(tmp_path / "b2"))
    (tmp_path / "d").mkdir()
    save_subset(str(tmp_path / "d" / "ids.npy"), hex_to_pairs(["ef" * 16]))
    with pytest.raises(UserError, match="two files named ids.npy"):
        submit.build_bundle(sub("byod", f"{tmp_path / 'ids.npy'}::{tmp_path / 'd' / 'ids.npy'}"), str(tmp_path / "b3"))
    # resubmitting from the bundle's own copies once deleted them before reading them: refused, nothing lost
    inside = root / "small_scale" / "samples" / "ids.npy"
    with pytest.raises(UserError, match="inside the bundle"):
        submit.build_bundle(sub("byod", str(inside)), str(root))
    assert inside.read_bytes() == (tmp_path / "ids.npy").read_bytes()
    save_subset(str(tmp_path / "none.npy"), hex_to_pairs([]))  # both once made a bundle without samples
    for samples, why in (("::", "expected one or more files containing the sample ids"),
                         ("", "expected one or more files"), (str(tmp_path / "none.npy"), "none.npy holds no uids")):
        with pytest.raises(UserError, match=why):
            submit.build_bundle(sub("byod", samples), str(tmp_path / "b5"))
        assert not (tmp_path / "b5").exists()
    for junk in (b"", b"checkpoint? no", (tmp_path / "ids.npy").read_bytes()):
        (tmp_path / "c.pt").write_bytes(junk)
        with pytest.raises(UserError, match="not a complete torch checkpoint"):
            submit.build_bundle(replace(sub("byod", str(tmp_path / "ids.npy")), checkpoint=str(tmp_path / "c.pt")),
                                str(tmp_path / "b4"))


def test_submit_uploads_as_datacomp_to_a_fake_hub(tmp_path, monkeypatch, capsys):
    """A model repo by default, only `<scale>_scale/` uploaded (the record with the email stays local), the
    public files printed before the upload; DataComp's --hf_username/--hf_repo_name and --dataset_size."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    from mode.cli import main
    from mode.core.uids import hex_to_pairs, save_subset

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, repo_type=None, exist_ok=False):
            calls.append(("create_repo", repo_id, repo_type))

        def upload_folder(self, folder_path, repo_id, repo_type=None, allow_patterns=None, commit_message=None):
            root = Path(folder_path)
            names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
            kept = sorted(filter_repo_objects(names, allow_patterns=allow_patterns))
            calls.append(("upload_folder", repo_id, repo_type, kept))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_token")
    save_subset(str(tmp_path / "a.npy"), hex_to_pairs(["%032x" % i for i in range(3)]))
    results = _datacomp_results(tmp_path / "eval_results.jsonl")
    argv = ["submit", "--scale", "medium", "--track", "filtering", "--method_name", "m", "--author", "me",
            "--email", "secret@example.org", "--samples", str(tmp_path / "a.npy"), "--results", str(results),
            "--hf_username", "me", "--hf_repo_name", "sub", "--dataset_size", "3", "--bundle", str(tmp_path / "b")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.index("public: https://huggingface.co/me/sub receives") < out.index("uploaded")
    assert calls[0] == ("create_repo", "me/sub", "model")
    assert calls[1][:3] == ("upload_folder", "me/sub", "model")
    assert calls[1][3] == ["medium_scale/results.jsonl", "medium_scale/samples/a.npy"]
    assert not any("secret@" in (tmp_path / "b" / f).read_text(errors="ignore") for f in calls[1][3])
    rec = json.loads((tmp_path / "b" / "submission.json").read_text())
    assert rec["email"] == "secret@example.org" and rec["dataset_size"] == 3 and rec["hf_repo_name"] == "sub"
    assert main([*argv, "--repo-type", "dataset"]) == 0
    assert calls[-2] == ("create_repo", "me/sub", "dataset") and "huggingface.co/datasets/me/sub" in \
        capsys.readouterr().out


def test_retrieval_task_end_to_end(toy_pool, tmp_path):
    """A retrieval task (images + caption lines), evaluated like DataComp's flickr/mscoco."""
    from mode.core.shards import iter_tar, write_tar

    src = next(t for t in T.find_tasks(Pool(toy_pool).eval_tasks_dir) if t.key == "toy_shapes")
    task = tmp_path / "tasks" / "retrieval" / "toy_captions"
    samples = []
    for key, members in iter_tar(src.path / "test" / "0.tar"):
        name = src.classnames[int(members["cls"])]
        samples.append((key, {"webp": members["webp"], "txt": f"a {name}\nthe {name} shape".encode()}))
    write_tar(task / "test" / "0.tar", samples)
    (task / "test" / "nshards.txt").write_text("1\n")
    loaded = T.find_tasks(tmp_path / "tasks")[0]
    assert (loaded.key, loaded.kind, loaded.main_metric) == ("retrieval/toy_captions", "retrieval", "mean_recall@1")
    evaluate.run([evaluate.ModelSpec.parse("m=ViT-Toy-8")], str(tmp_path / "tasks"), str(tmp_path / "out"), "cpu")
    data = np.load(tmp_path / "out" / "m" / "retrieval" / "toy_captions.npz")
    assert data["logits"].shape == (len(samples), 2 * len(samples))
    assert data["targets"].tolist() == [i for i in range(len(samples)) for _ in range(2)]
    row = json.loads((tmp_path / "out" / "m" / "eval_results.jsonl").read_text())
    assert {"image_retrieval_recall@1", "text_retrieval_recall@1", "mean_recall@1"} <= set(row["metrics"])


def test_download_tasks_offline_is_one_line(tmp_path):
    from ..conftest import PYTHON, run

    res = run([PYTHON, "-m", "mode", "download-tasks", "--out", str(tmp_path), "--keys", "vtab/dtd"],
              env={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "djghosh/wds_vtab-dtd_test" in res.stderr


def test_evaluate_refuses_a_checkpoint_that_runs_code(tmp_path):
    """A crafted .pt whose unpickling would run code is refused in one line; the code never runs."""
    import os
    import pickle

    import torch

    from mode.core.errors import UserError
    from mode.evaluation.evaluate import ModelSpec, load_model

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, bad, pickle_module=pickle)
    with pytest.raises(UserError, match="cannot read"):
        load_model(ModelSpec.parse(f"x=ViT-Toy-8:{bad}"), "cpu")
    assert not marker.exists()


def test_a_replaced_checkpoint_is_evaluated_again(toy_pool, tmp_path):
    """Logits are reused only while their record says they come from the same checkpoint bytes (once a new
    checkpoint under an old label silently kept the old logits); records and summary follow the step protocol."""
    import open_clip
    import torch

    import open_clip_patch

    open_clip_patch.apply()
    tasks, ckpt = str(Pool(toy_pool).eval_tasks_dir), tmp_path / "model.pt"
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append({"state_dict": open_clip.create_model("ViT-Toy-8").state_dict(), "epoch": 1})
    torch.save(states[0], ckpt)
    spec = [evaluate.ModelSpec.parse(f"m=ViT-Toy-8:{ckpt}")]
    evaluate.run(spec, tasks, str(tmp_path / "eval"), device="cpu")
    first = np.load(tmp_path / "eval" / "m" / "toy_shapes.npz")["logits"]
    torch.save(states[1], ckpt)  # the same path, new weights
    evaluate.run(spec, tasks, str(tmp_path / "eval"), device="cpu")
    again = np.load(tmp_path / "eval" / "m" / "toy_shapes.npz")["logits"]
    evaluate.run(spec, tasks, str(tmp_path / "fresh"), device="cpu")
    fresh = np.load(tmp_path / "fresh" / "m" / "toy_shapes.npz")["logits"]
    assert not np.array_equal(first, again) and np.array_equal(again, fresh)
    summary = json.loads((tmp_path / "eval" / "m" / "summary.json").read_text())
    assert summary["params"]["model"] == "ViT-Toy-8" and len(summary["params"]["checkpoint_sha256"]) == 64
    assert summary["complete"] and summary["shards_total"] == 3 and summary["kept"] == summary["processed"] > 0
    record = json.loads((tmp_path / "eval" / "m" / "toy_shapes.stats.json").read_text())
    assert record["outputs"] == {"toy_shapes.npz": (tmp_path / "eval" / "m" / "toy_shapes.npz").stat().st_size}


def test_readme_lists_datacomps_tasks_as_scored():
    """The README's task table is DataComp's tasklist as the code holds it: every key, name and main metric."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = [[c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            for line in readme.splitlines() if line.strip().startswith("| `") and "main metric" not in line]
    listed = {r[0]: (r[1], r[2]) for r in rows if len(r) == 4 and r[3].startswith(("yes", "no"))}
    assert listed == {k: (v.name, v.main_metric) for k, v in T.DATACOMP_TASKS.items()}


def test_a_killed_reevaluation_leaves_no_old_results(toy_pool, tmp_path, monkeypatch):
    """A rerun that finds a stale task removes the label's summary and results before evaluating: killed midway,
    it once left the earlier run's eval_results.jsonl and a summary saying complete beside the new logits; and
    `mode submit` refuses results whose summary.json says incomplete."""
    import shutil

    tasks, out = tmp_path / "tasks", tmp_path / "eval"
    shutil.copytree(Pool(toy_pool).eval_tasks_dir, tasks)
    spec = [evaluate.ModelSpec.parse("m=ViT-Toy-8")]
    evaluate.run(spec, str(tasks), str(out), device="cpu")
    assert json.loads((out / "m" / "summary.json").read_text())["complete"]
    (tasks / "toy_shapes" / "classnames.txt").write_text((tasks / "toy_shapes" / "classnames.txt").read_text())

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "_encode_task", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate.run(spec, str(tasks), str(out), device="cpu")
    left = sorted(p.name for p in (out / "m").iterdir())
    assert not {"summary.json", "eval_results.jsonl", "aggregate.json"} & set(left), left
    assert "toy_glyphs.npz" in left and "toy_shapes.npz" not in left  # what was still valid is kept

    from mode.core.uids import hex_to_pairs, save_subset
    from mode.datacomp import submit

    save_subset(str(tmp_path / "ids.npy"), hex_to_pairs(["ab" * 16]))
    results = tmp_path / "r" / "eval_results.jsonl"
    results.parent.mkdir()
    results.write_text(json.dumps({"key": "imagenet1k", "dataset": "ImageNet 1k", "metrics": {"main_metric": .5}}))
    (results.parent / "summary.json").write_text(json.dumps({"complete": False, "shards_done": 1, "shards_total": 3}))
    sub = submit.Submission(scale="small", track="filtering", method_name="m", author="a", email="e",
                            samples=str(tmp_path / "ids.npy"), results=str(results), hf_repo="me/sub")
    with pytest.raises(UserError, match="incomplete .1 of 3 tasks"):
        submit.build_bundle(sub, str(tmp_path / "bundle"))
    assert not (tmp_path / "bundle").exists()


def test_results_are_written_under_the_out_lock(toy_pool, tmp_path, monkeypatch):
    """summary.json and eval_results.jsonl are written while `mode evaluate` holds --out's lock: written after
    it, a second run could replace the logits in between, and the first one summed them under its checkpoint."""
    from mode.core.lock import acquire

    out, held = tmp_path / "eval", []

    def probe(real):
        def wrapped(*a, **k):
            with pytest.raises(UserError, match="another `mode evaluate`"):
                acquire(out, "evaluate", "`mode evaluate` into this --out")
            held.append(real.__name__)
            return real(*a, **k)
        return wrapped

    monkeypatch.setattr(evaluate, "write_summary", probe(evaluate.write_summary))
    monkeypatch.setattr(evaluate, "write_results", probe(evaluate.write_results))
    evaluate.run([evaluate.ModelSpec.parse("m=ViT-Toy-8")], str(Pool(toy_pool).eval_tasks_dir), str(out), "cpu")
    assert held == ["write_summary", "write_results"] and (out / "m" / "eval_results.jsonl").exists()


def test_submit_removes_only_the_files_it_wrote(tmp_path):
    """A bundle is rewritten whole, but `<scale>_scale/` once lost every file in it (rmtree), the user's too: a
    file submit did not write is refused in one line and kept; those an earlier run wrote are replaced."""
    from mode.core.uids import hex_to_pairs, save_subset
    from mode.datacomp import submit

    for name in ("a.npy", "b.npy"):
        save_subset(str(tmp_path / name), hex_to_pairs(["ab" * 16]))
    results = _datacomp_results(tmp_path / "eval_results.jsonl")

    def bundle(samples: str) -> Path:
        return submit.build_bundle(submit.Submission(scale="small", track="filtering", method_name="m", author="a",
                                                     email="e", samples=samples, results=str(results),
                                                     hf_repo="me/sub"), str(tmp_path / "bundle"))

    notes = tmp_path / "bundle" / "small_scale" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("precious")
    with pytest.raises(UserError, match="1 file.s. `mode submit` did not write .e.g. notes.txt"):
        bundle(str(tmp_path / "a.npy"))
    assert notes.read_text() == "precious"
    notes.unlink()
    root = bundle(str(tmp_path / "a.npy"))
    root = bundle(str(tmp_path / "b.npy"))  # the earlier run's a.npy is not uploaded again
    assert sorted(p.name for p in (root / "small_scale" / "samples").iterdir()) == ["b.npy"]
    (root / "small_scale" / "samples" / "mine.txt").write_text("mine")
    with pytest.raises(UserError, match="e.g. samples/mine.txt"):
        bundle(str(tmp_path / "a.npy"))
    assert (root / "small_scale" / "samples" / "mine.txt").read_text() == "mine"
    assert (root / "small_scale" / "samples" / "b.npy").exists()


def test_ensemble_weighs_other_tasks_than_classification_by_the_bare_prompt(monkeypatch):
    """As the README says: retrieval, WinoGAViL and the fairness heads are one class, `a photo` (a retrieval task
    once read a default template, 'a photo of a a photo.', FairFace its objective lines, 'race:a photo of ...')."""
    import mode.prep.embed

    seen = []

    def encode(prompts, *a, **k):
        seen.append(list(prompts))
        return np.ones((len(prompts), 4), np.float32)

    monkeypatch.setattr(mode.prep.embed, "encode", encode)
    fairface = ("race:a photo of a {c} person.", "gender:a photo of a {c}.")
    for task in (T.Task("retrieval/x", Path("/x"), "retrieval", (), ("a photo of a {c}.",)),
                 T.Task("misc/winogavil", Path("/x"), "winogavil"),
                 T.Task("fairness/fairface", Path("/x"), "multilabel", ("race:White", "gender:male"), fairface)):
        emb = ensemble.class_embeddings(task, None)
        assert seen.pop() == ["a photo"] and emb.shape == (1, 4), task.key
    ensemble.class_embeddings(T.Task("t", Path("/x"), "classification", ("cat", "dog"), ("a {c}.", "the {c}")), None)
    assert seen.pop() == ["a cat.", "the cat", "a dog.", "the dog"]


def test_evaluate_refuses_an_out_overlapping_a_task(toy_pool, tmp_path):
    """Logits written inside a task folder changed its signature, so every rerun computed them again."""
    import shutil

    tasks = shutil.copytree(Pool(toy_pool).eval_tasks_dir, tmp_path / "tasks")
    for out, label in ((tasks / "toy_shapes" / "evalout", "m"), (tasks / "toy_shapes", "m"), (tasks, "toy_shapes")):
        with pytest.raises(UserError, match=f"--out {out}: {label}'s folder overlaps task toy_shapes"):
            evaluate.run([evaluate.ModelSpec.parse(f"{label}=ViT-Toy-8")], str(tasks), str(out), device="cpu")
    assert not (tasks / "toy_shapes" / "evalout").exists() and not (tasks / "toy_shapes" / "m").exists()
