"""Hostile inputs through the CLI (issue 12, finding 8): each bad flag, path or file ends in one line naming it
and exit 2, never a traceback. Runs `mode.cli.main` in this process on copies of the session's toy work dir."""

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mode.cli import main
from mode.core.layout import WorkDir


def _fails(capsys, argv: list[str], *fragments: str) -> str:
    """Run `mode argv`; it must exit 2 with its last stderr line an error holding every fragment."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own one-line errors (after its usage line)
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert rc == 2, err
    last = err.strip().splitlines()[-1]
    assert "error:" in last, err
    for fragment in fragments:
        assert fragment in last, last
    return last


def test_bad_flags_are_one_line(toy_pool, toy_work, tmp_path, capsys):
    shards = str(toy_pool / "shards")
    _fails(capsys, ["captions", "--shards", f"{shards}/{{00000000..00000003.tar", "--work-dir", tmp_path / "w"],
           "unbalanced braces")
    _fails(capsys, ["captions", "--shards", shards, "--work-dir", tmp_path / "w", "--workers", "0"],
           "--workers", "at least 1")
    _fails(capsys, ["embed", "--shards", shards, "--work-dir", tmp_path / "w", "--batch-size", "x"], "--batch-size")
    _fails(capsys, ["embed", "--shards", shards, "--work-dir", toy_work, "--device", "bogus"], "--device 'bogus'")
    _fails(capsys, ["cluster", "--shards", shards, "--work-dir", tmp_path / "w", "--niter", "0"], "--niter")
    for flags, what in ((["--sample-fraction", "0"], "--sample-fraction"),
                        (["--sample-shards", "1.5"], "--sample-shards"),
                        (["--sample-fraction", "0.5", "--sample-shards", "0.5"], "give one")):
        _fails(capsys, ["cluster", "--shards", shards, "--work-dir", tmp_path / "w", "--fine", "8", *flags], what)
    _fails(capsys, ["reshard", "-i", toy_pool, "-o", tmp_path / "o", "-s", tmp_path / "s.npy", "--shard-size", "-1"],
           "--shard-size")


def test_cuda_device_without_a_gpu_is_one_line(toy_pool, toy_work, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _fails(capsys, ["embed", "--shards", toy_pool / "shards", "--work-dir", toy_work, "--device", "cuda:0"],
           "no CUDA GPU")


def test_bad_subset_and_model_files_are_one_line(toy_pool, tmp_path, capsys):
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"uid": 1}], dtype=object), allow_pickle=True)
    _fails(capsys, ["reshard", "-i", toy_pool, "-o", tmp_path / "o", "-s", pickled], str(pickled), "uid subset")
    text = tmp_path / "lid.bin"
    text.write_text("not a model\n")
    _fails(capsys, ["filter", "--name", "basic_filter", "--metadata-dir", toy_pool / "metadata", "--save-path",
                    tmp_path / "b.npy", "--fasttext-model", text], str(text), "fastText model")
    meta = tmp_path / "meta"
    meta.mkdir()
    pq.write_table(pa.table({"uid": ["00" * 16], "caption": ["a"]}), meta / "x.parquet")  # no `text` column
    _fails(capsys, ["filter", "--name", "basic_filter", "--metadata-dir", meta, "--save-path", tmp_path / "b.npy",
                    "--fasttext-model", "packaged"], str(meta / "x.parquet"), "text")


def test_bad_checkpoints_are_one_line(toy_pool, tmp_path, capsys):
    import torch

    empty, wrong, listed = tmp_path / "empty.pt", tmp_path / "wrong.pt", tmp_path / "list.pt"
    empty.write_bytes(b"")
    torch.save({"state_dict": {"visual.proj": torch.zeros(3)}}, wrong)
    torch.save([1, 2, 3], listed)
    for ckpt, what in ((empty, "cannot read"), (wrong, "is not a ViT-Toy-8 checkpoint"), (listed, "no state_dict")):
        _fails(capsys, ["evaluate", "--tasks", toy_pool / "eval_tasks", "--out", tmp_path / "ev", "--model",
                        f"a=toy_tiny:{ckpt}"], "--model a", what)
    _fails(capsys, ["evaluate", "--tasks", toy_pool / "eval_tasks", "--out", tmp_path / "ev", "--model",
                    "a=toy_tiny", "--device", "tpu7"], "--device")


def test_corrupt_work_dir_files_are_one_line(toy_pool, toy_work, tmp_path, capsys):
    shards = str(toy_pool / "shards")
    copies = [WorkDir(shutil.copytree(toy_work, tmp_path / f"work{i}")) for i in range(3)]
    wd = copies[0]
    first = sorted(wd.features_dir.glob("*.npy"))[0]
    first.write_bytes(first.read_bytes()[:100])  # cut inside the array
    for stats in wd.assign_dir.glob("*.json"):
        stats.unlink()  # so assign reads the features again
    _fails(capsys, ["assign", "--shards", shards, "--work-dir", wd.root], str(first), "features .npy")
    wd = copies[1]
    assignment = sorted(wd.assign_dir.glob("*.parquet"))[0]
    assignment.write_bytes(b"junk")
    shutil.rmtree(wd.route_dir)
    _fails(capsys, ["route", "--shards", shards, "--work-dir", wd.root], str(assignment), "assignment parquet")
    wd = copies[2]
    wd.fine_centroids.write_bytes(b"junk")
    shutil.rmtree(wd.assign_dir)
    _fails(capsys, ["assign", "--shards", shards, "--work-dir", wd.root], str(wd.clusters_dir), "clustering")


def test_second_review_findings_are_one_line(toy_pool, toy_work, tmp_path, capsys):
    """Found by a hostile-user review: each was a traceback (or, for the label, a write outside --out)."""
    import json

    shards = str(toy_pool / "shards")
    for step in (["toy", tmp_path / "t"], ["cluster", "--shards", shards, "--work-dir", tmp_path / "w"],
                 ["route", "--shards", shards, "--work-dir", tmp_path / "w"]):
        _fails(capsys, [*step, "--seed", "-1"], "--seed", "not a seed")
    _fails(capsys, ["cluster", "--shards", shards, "--work-dir", tmp_path / "w", "--seed", str(2 ** 70)], "not a seed")
    _fails(capsys, ["prep", "--shards", shards, "--work-dir", tmp_path / "p", "--ooc-ratio", "2"], "--ooc-ratio")
    assert not (tmp_path / "p").exists()  # refused before captions ran

    wd = WorkDir(shutil.copytree(toy_work, tmp_path / "nan"))  # damaged features: NaN rows, or other widths
    first = sorted(wd.features_dir.glob("*.npy"))[0]
    np.save(first, np.full(np.load(first).shape, np.nan, np.float16))
    shutil.rmtree(wd.clusters_dir)
    _fails(capsys, ["cluster", "--shards", shards, "--work-dir", wd.root, "--fine", "8", "--coarse", "3",
                    "--sample-fraction", "1"], "NaN or inf")
    np.save(first, np.zeros((len(np.load(first)), 7), np.float16))
    _fails(capsys, ["cluster", "--shards", shards, "--work-dir", wd.root, "--fine", "8", "--coarse", "3"],
           "columns", "another encoder")

    tasks = tmp_path / "tasks"  # damaged evaluation tasks
    shutil.copytree(toy_pool / "eval_tasks" / "toy_shapes", tasks / "toy_shapes")
    model = ["--model", "m=toy_tiny"]
    _fails(capsys, ["evaluate", "--tasks", tasks, "--out", tmp_path / "ev", "--model", "../../x=toy_tiny"],
           "names a folder under --out")
    templates = tasks / "toy_shapes" / "zeroshot_classification_templates.txt"
    templates.write_text("a {c} photo of {} {0}\n")
    _fails(capsys, ["evaluate", "--tasks", tasks, "--out", tmp_path / "ev", *model], "not a format string")
    templates.write_text("\n")
    _fails(capsys, ["evaluate", "--tasks", tasks, "--out", tmp_path / "ev", *model], "no templates")
    templates.unlink()  # once scored with a default template; clip_benchmark 1.4.0 has none (DataComp asserts)
    _fails(capsys, ["evaluate", "--tasks", tasks, "--out", tmp_path / "ev", *model],
           "a classification task needs zeroshot_classification_templates.txt")
    templates.write_text("a photo of a {c}.\n")
    (tasks / "toy_shapes" / "test" / "nshards.txt").write_text("abc")
    _fails(capsys, ["evaluate", "--tasks", tasks, "--out", tmp_path / "ev", *model], "number of test shards")
    (tasks / "toy_shapes" / "test" / "nshards.txt").write_text("2")
    _fails(capsys, ["evaluate", "--tasks", tasks, "--out", tmp_path / "ev", *model], "1.tar is missing")
    (tasks / "toy_shapes" / "test" / "nshards.txt").write_text("1")
    tar = tasks / "toy_shapes" / "test" / "0.tar"
    whole = tar.read_bytes()
    tar.write_bytes(whole[:5000])
    _fails(capsys, ["evaluate", "--tasks", tasks, "--out", tmp_path / "ev", *model], "0.tar is truncated")
    tar.write_bytes(whole)
    assert main(["evaluate", "--tasks", str(tasks), "--out", str(tmp_path / "ev"), *model]) == 0
    first_logits = np.load(tmp_path / "ev" / "m" / "toy_shapes.npz")["logits"]
    (tasks / "toy_shapes" / "classnames.txt").write_text("circle\nsquare\n")  # the task changed: not reused
    assert main(["evaluate", "--tasks", str(tasks), "--out", str(tmp_path / "ev"), *model]) == 0
    assert np.load(tmp_path / "ev" / "m" / "toy_shapes.npz")["logits"].shape == (len(first_logits), 2)
    record = json.loads((tmp_path / "ev" / "m" / "toy_shapes.stats.json").read_text())
    assert record["labels_outside_classnames"] > 0  # classes 2.. have no name now: scored wrong, and said

    shutil.copytree(tmp_path / "ev" / "m", tmp_path / "ev" / "n")  # ensemble over logits of other shapes
    np.savez(tmp_path / "ev" / "n" / "toy_shapes.npz", logits=first_logits[:, :1], targets=np.zeros(len(first_logits)))
    shutil.copytree(tmp_path / "ev" / "m", tmp_path / "ev" / "o")
    _fails(capsys, ["ensemble", "--work-dir", toy_work, "--tasks", tasks, "--eval-out", tmp_path / "ev", "--experts",
                    "m,n,o", "--report", tmp_path / "rep"], "differ in shape or order")
    np.savez(tmp_path / "ev" / "n" / "toy_shapes.npz", other=np.zeros(2))
    _fails(capsys, ["ensemble", "--work-dir", toy_work, "--tasks", tasks, "--eval-out", tmp_path / "ev", "--experts",
                    "m,n,o", "--report", tmp_path / "rep"], "no logits and targets")
