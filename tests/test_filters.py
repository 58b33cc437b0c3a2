"""DataComp baseline filters and the resharder, checked against the toy pool's generation record."""

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mode import filters, reshard
from mode.errors import UserError
from mode.layout import Pool
from mode.shards import expand, iter_tar
from mode.uids import hex_to_pairs, is_sorted, pairs_to_hex


@pytest.fixture(scope="module")
def rows(toy_pool):
    t = pa.concat_tables([pq.read_table(p) for p in sorted(Pool(toy_pool).metadata_dir.glob("*.parquet"))])
    return t.to_pylist()


def _run(toy_pool, tmp_path, name, **params):
    out = tmp_path / f"{name}.npy"
    summary = filters.run(name, str(Pool(toy_pool).metadata_dir), str(out), filters.FilterParams(**params))
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
    filters.run("basic_filter", str(Pool(toy_pool).metadata_dir), str(tmp_path / "w2.npy"), filters.FilterParams(),
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
    kept = _run(toy_pool, tmp_path, "laion2b")
    for r in rows:
        if r["toy_noise"] == "non_english" or r["clip_b32_similarity_score"] < 0.28:
            assert r["uid"] not in kept
        elif r["toy_noise"] != "short_caption":  # one-word captions have no reliable language
            assert r["uid"] in kept
    summary = json.loads((tmp_path / "laion2b.npy.json").read_text())
    assert summary["language_id"] in (["fasttext"], ["gcld3"])


def test_filter_errors(toy_pool, tmp_path):
    with pytest.raises(UserError, match="expected one of"):
        filters.run("image_based", str(Pool(toy_pool).metadata_dir), str(tmp_path / "x.npy"), filters.FilterParams())
    with pytest.raises(UserError, match="no .parquet"):
        filters.run("no_filter", str(tmp_path), str(tmp_path / "x.npy"), filters.FilterParams())


def test_reshard_writes_exactly_the_subset_with_multiplicities(toy_pool, tmp_path, rows):
    downloaded = [r["uid"] for r in rows if r["toy_downloaded"]]
    missing = [r["uid"] for r in rows if not r["toy_downloaded"]][:2]
    chosen = downloaded[::3] + downloaded[:5] + missing  # five uids twice; two absent from the shards
    subset = tmp_path / "subset.npy"
    from mode.uids import save_subset

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
    assert Counter(pairs_to_hex(np.load(out / "sample_ids.npy"))) == expected
    meta = json.loads((out / "meta.json").read_text())
    assert meta["output_shard_count"] == len(expand(str(out))) and meta["output_shard_format"] == "{:08d}.tar"
    assert sum(json.loads((out / "sizes.json").read_text()).values()) == summary["samples"]
    with pytest.raises(UserError, match="--overwrite"):
        reshard.run(str(toy_pool), str(out), str(subset))
    bad = tmp_path / "unsorted.npy"
    np.save(bad, np.array([(2, 0), (1, 0)], dtype="u8,u8"))
    with pytest.raises(UserError, match="not sorted"):
        reshard.run(str(toy_pool), str(tmp_path / "o2"), str(bad))
