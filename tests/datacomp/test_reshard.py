"""The resharder's DataComp flags: a slice of the input, dry runs, a seeded shuffle, raw subsets and face blurring."""

import io
import json

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mode.cli import main
from mode.core.errors import UserError
from mode.core.shards import expand, iter_tar, write_tar
from mode.core.uids import hex_to_pairs, save_subset
from mode.datacomp import reshard


def _uids(folder):
    return [json.loads(m["json"])["uid"] for p in expand(str(folder)) for _, m in iter_tar(p)]


@pytest.fixture(scope="module")
def everything(toy_pool, tmp_path_factory):
    """A subset of every uid in the toy pool's shards, each listed once."""
    uids = [json.loads(m["json"])["uid"] for p in expand(str(toy_pool)) for _, m in iter_tar(p)]
    path = tmp_path_factory.mktemp("subset") / "all.npy"
    save_subset(str(path), hex_to_pairs(uids))
    return path


def test_datacomp_flags_slice_and_dry_run(toy_pool, everything, tmp_path, capsys):
    shards = expand(str(toy_pool))
    want = [json.loads(m["json"])["uid"] for p in shards[1:3] for _, m in iter_tar(p)]
    argv = ["reshard", "--input-dir", str(toy_pool), "--output-dir", str(tmp_path / "out"), "--subset-file",
            str(everything), "--first-shard", "1", "-n", "2", "-j", "2", "--shard-size", "40"]
    assert main([*argv, "--dry-run"]) == 0
    assert "would be written" in capsys.readouterr().out and not (tmp_path / "out").exists()
    assert main(argv) == 0
    assert _uids(tmp_path / "out") == want  # shards 1 and 2 only, in input order
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["processed_count"] == meta["output_count"] == len(want)
    assert meta["first_shard"] == "1" and meta["num_shards"] == "2"
    assert meta["output_shard_count"] == -(-len(want) // 40)
    with pytest.raises(UserError, match="--first-shard 9"):
        reshard.run(str(toy_pool), str(tmp_path / "o2"), str(everything), first_shard=9)


def test_shards_are_chosen_by_id_and_need_their_stats_as_datacomp_reads_them(toy_pool, everything, tmp_path):
    """Shards 0, 1, 3 and 4, 2 never downloaded and 4 killed mid-download (no _stats.json): --first-shard and -n
    are ids (DataComp's range(first, first + n) of {:08d}.tar), and 4 is left out, counted."""
    import shutil

    src = expand(str(toy_pool))
    pool = tmp_path / "pool"
    pool.mkdir()
    source = dict(zip((0, 1, 3, 4), src))  # the toy's four shards under those ids
    for i, path in source.items():
        shutil.copy(path, pool / f"{i:08d}.tar")
        if i != 4:
            shutil.copy(path.removesuffix(".tar") + "_stats.json", pool / f"{i:08d}_stats.json")
    uids = {i: [json.loads(m["json"])["uid"] for _, m in iter_tar(source[i])] for i in (0, 1, 3)}
    for n, (first, count, want) in enumerate(((1, 2, [1]), (3, 1, [3]), (0, None, [0, 1, 3]))):
        s = reshard.run(str(pool), str(tmp_path / f"o{n}"), str(everything), first_shard=first, num_shards=count)
        assert _uids(tmp_path / f"o{n}") == [u for i in want for u in uids[i]]
        assert s["input_shards"] == len(want) and s["input_shards_without_stats"] == (want == [0, 1, 3])
    with pytest.raises(UserError, match="--first-shard 2 -n 1: no input shard has such an id"):
        reshard.run(str(pool), str(tmp_path / "o9"), str(everything), first_shard=2, num_shards=1)


def test_output_shards_are_cut_at_the_byte_limit_as_shardwriter_cuts_them(toy_pool, everything, tmp_path):
    """DataComp's ShardWriter keeps its default 3 GB maxsize: a shard closes once it holds that many bytes,
    whichever comes first with --shard-size; streamed (1 worker) and packed (2 workers) cut alike."""
    limit = 40_000
    outs = [tmp_path / "one", tmp_path / "two"]
    for out, workers in zip(outs, (1, 2)):
        reshard.run(str(toy_pool), str(out), str(everything), shard_size=1000, workers=workers, max_shard_bytes=limit)
    one, two = (sorted(o.glob("*.tar")) for o in outs)
    assert len(one) > 2 and [p.read_bytes() for p in one] == [p.read_bytes() for p in two]
    for p in one:
        sizes = [reshard.tar_bytes(m) for _, m in iter_tar(p)]
        assert sum(sizes[:-1]) < limit and (p == one[-1] or sum(sizes) >= limit)
    assert _uids(outs[0]) == _uids(toy_pool)


def test_seeded_shuffle(toy_pool, everything, tmp_path):
    runs = {}
    for name, bufsize, seed in (("plain", 0, 0), ("a", 100, 0), ("b", 100, 0), ("c", 100, 1)):
        reshard.run(str(toy_pool), str(tmp_path / name), str(everything), shard_size=200, shuffle_bufsize=bufsize,
                    seed=seed)
        runs[name] = _uids(tmp_path / name)
    assert runs["a"] == runs["b"]  # same seed, same order
    assert runs["a"] != runs["plain"] and runs["a"] != runs["c"]
    assert sorted(runs["a"]) == sorted(runs["plain"]) == sorted(runs["c"])


def test_raw_memmap_subset_as_datacomp_takes_it(toy_pool, everything, tmp_path):
    raw = tmp_path / "subset.bin"
    raw.write_bytes(np.load(everything).tobytes())  # no .npy header
    reshard.run(str(toy_pool), str(tmp_path / "a"), str(everything), shard_size=200)
    reshard.run(str(toy_pool), str(tmp_path / "b"), str(raw), shard_size=200)
    assert [p.read_bytes() for p in sorted((tmp_path / "b").glob("*.tar"))] == \
        [p.read_bytes() for p in sorted((tmp_path / "a").glob("*.tar"))]
    (tmp_path / "odd.bin").write_bytes(b"x" * 17)
    with pytest.raises(UserError, match="16-byte uids"):
        reshard.run(str(toy_pool), str(tmp_path / "c"), str(tmp_path / "odd.bin"))


def test_outputs_not_ours_and_earlier_reshards(toy_pool, everything, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not written by `mode reshard`"):
        reshard.run(str(toy_pool), str(theirs), str(everything))
    old = tmp_path / "old"  # a folder DataComp's resharder (or this tool before its record) wrote
    old.mkdir()
    (old / "meta.json").write_text(json.dumps({"output_shard_count": 0, "output_shard_format": "{:08d}.tar"}))
    with pytest.raises(UserError, match="--overwrite"):
        reshard.run(str(toy_pool), str(old), str(everything))
    assert reshard.run(str(toy_pool), str(old), str(everything), overwrite=True)["samples"] == len(_uids(toy_pool))


# ------------------------------------------------------------------------------------------------- faces

def _jpeg(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_blur_boxes_follows_img2dataset_blurrer():
    """Far from a box nothing changes; inside it the image equals its Gaussian blur with sigma a tenth of the
    box's longest side; no boxes: the image itself."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    assert reshard.blur_boxes(img, []) is img
    out = reshard.blur_boxes(img, [[0.25, 0.25, 0.5, 0.5]])  # 40 x 30 px box: longest side 40, sigma 4
    assert np.array_equal(out[100:, 120:], img[100:, 120:])
    sigma, k = 4.0, int(2 * np.ceil(16)) + 1
    blurred = cv2.GaussianBlur(img.astype(np.float32) / 255, (k, k), sigmaX=sigma)
    centre = (slice(40, 50), slice(55, 65))
    mask = np.zeros((120, 160, 3), np.float32)
    mask[26:64, 36:84] = 1  # the box grown by 4 px each side
    soft = cv2.GaussianBlur(mask, (k, k), sigmaX=sigma)
    hand = ((img / 255 * (1 - soft) + blurred * soft) * 255).astype(np.uint8)
    assert np.abs(out.astype(int) - hand.astype(int)).max() <= 1
    assert np.abs(out[centre].astype(int) - (blurred[centre] * 255).astype(int)).max() <= 2


@pytest.fixture()
def face_pool(tmp_path):
    """Three samples: one face, one without, one face on an undecodable image; their metadata parquet."""
    yy, xx = np.mgrid[0:64, 0:80]
    smooth = np.stack([xx * 3, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)  # WebP keeps it within a level or two
    smooth[16:40, 16:40] = ((yy[16:40, 16:40] // 4 + xx[16:40, 16:40] // 4) % 2 * 255)[..., None]  # a sharp "face"
    uids = ["%032x" % (i + 1) for i in range(3)]
    boxes = [[[0.1, 0.1, 0.6, 0.7]], [], [[0.2, 0.2, 0.4, 0.4]]]
    images = [_jpeg(smooth), _jpeg(smooth[::-1].copy()), b"not an image"]
    pool = tmp_path / "pool"
    (pool / "shards").mkdir(parents=True)
    (pool / "metadata").mkdir()
    write_tar(pool / "shards" / "00000000.tar", [(f"{i:04d}", {"jpg": images[i], "txt": b"a caption",
                                                                 "json": json.dumps({"uid": u}).encode()})
                                                  for i, u in enumerate(uids)])
    table = pa.table({"uid": uids, "face_bboxes": pa.array(boxes, pa.list_(pa.list_(pa.float64())))})
    pq.write_table(table, pool / "metadata" / "part0.parquet")
    save_subset(str(tmp_path / "s.npy"), hex_to_pairs(uids))
    return pool, uids, images, boxes


def test_apply_blur_and_inject_metadata(face_pool, tmp_path):
    pool, uids, images, boxes = face_pool
    s = reshard.run(str(pool / "shards"), str(tmp_path / "out"), str(tmp_path / "s.npy"), apply_blur=True,
                    inject_blur_metadata=True, metadata_dir=str(pool / "metadata"))
    assert s["blurred"] == 1 and s["skipped"] == {"blur_failed": 1} and s["samples"] == 2
    got = {json.loads(m["json"])["uid"]: m for _, m in iter_tar(tmp_path / "out" / "00000000.tar")}
    assert set(got) == {uids[0], uids[1]}  # the face that could not be blurred is never written
    face, plain = got[uids[0]], got[uids[1]]
    assert "jpg" not in face and "webp" in face and json.loads(face["json"])["face_bboxes"] == boxes[0]
    assert plain["jpg"] == images[1] and "face_bboxes" not in json.loads(plain["json"])
    decoded = cv2.imdecode(np.frombuffer(images[0], np.uint8), cv2.IMREAD_UNCHANGED)
    want = reshard.blur_boxes(decoded, boxes[0])
    webp = cv2.imdecode(np.frombuffer(face["webp"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert webp.shape == want.shape and np.abs(webp.astype(int) - want.astype(int)).mean() < 2
    assert np.abs(webp.astype(int) - decoded.astype(int))[20:36, 20:36].mean() > 40  # the checkerboard is blurred
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["blur_count"] == 1 and meta["apply_blur"] == "True"
    # DataComp's --blur-metadata-map names the parquet per shard: the same output
    (tmp_path / "map.json").write_text(json.dumps({"0": {"parquet": str(pool / "metadata" / "part0.parquet"),
                                                         "shards": [str(pool / "shards" / "00000000.tar")]}}))
    reshard.run(str(pool / "shards"), str(tmp_path / "out2"), str(tmp_path / "s.npy"), apply_blur=True,
                inject_blur_metadata=True, blur_metadata_map=str(tmp_path / "map.json"))
    assert (tmp_path / "out2" / "00000000.tar").read_bytes() == (tmp_path / "out" / "00000000.tar").read_bytes()


def test_blur_needs_the_faces(face_pool, tmp_path, capsys):
    pool, *_ = face_pool
    argv = ["reshard", "-i", str(pool / "shards"), "-o", str(tmp_path / "o"), "-s", str(tmp_path / "s.npy")]
    assert main([*argv, "--apply-blur"]) == 2
    assert "--blur-metadata-map" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main([*argv, "--apply-blur", "--blur-metadata-map", str(tmp_path / "bad.json")]) == 2
    assert "DataComp's map" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()



def test_a_run_killed_at_its_marker_is_redone(toy_pool, everything, tmp_path):
    """Killed right after creating the folder or while writing its marker: the rerun takes the folder as its own."""
    for name, marker in (("empty", None), ("cut", b""), ("half", b'{"status": "in pro')):
        out = tmp_path / name
        out.mkdir()
        if marker is not None:
            (out / ".mode-reshard").write_bytes(marker)
        assert reshard.run(str(toy_pool), str(out), str(everything), shard_size=500)["samples"] == \
            len(_uids(toy_pool))


def test_a_uid_with_a_trailing_newline_is_a_counted_no_uid_skip(toy_pool, tmp_path):
    """`"<32 hex>\\n"` is no uid (a `$` regex took it, and the subset lookup then raised on its 33 characters)."""
    from mode.core.uids import NoUid, sample_uid

    samples = [(k, dict(m)) for k, m in list(iter_tar(expand(str(toy_pool))[0]))[:5]]
    uids = [json.loads(m["json"])["uid"] for _, m in samples]
    samples[2][1]["json"] = json.dumps({"uid": uids[2] + "\n"}).encode()
    with pytest.raises(NoUid, match="no_uid"):
        sample_uid(samples[2][1])
    (tmp_path / "in").mkdir()
    write_tar(tmp_path / "in" / "00000000.tar", samples)
    save_subset(str(tmp_path / "s.npy"), hex_to_pairs(uids))
    s = reshard.run(str(tmp_path / "in"), str(tmp_path / "out"), str(tmp_path / "s.npy"))
    assert s["skipped"] == {"no_uid": 1} and s["samples"] == 4
    assert [u.split("-")[0] for u in _uids(tmp_path / "out")] == uids[:2] + uids[3:]


def test_output_holding_the_face_metadata_is_refused_before_anything_goes(face_pool, tmp_path):
    """--overwrite replaces the output: one holding the --metadata-dir parquets or the --blur-metadata-map (or
    the parquets it names) would delete them; refused in one line naming which input it holds."""
    import shutil

    pool, *_ = face_pool
    out = tmp_path / "out"
    reshard.run(str(pool / "shards"), str(out), str(tmp_path / "s.npy"))
    shutil.copytree(pool / "metadata", out / "metadata")
    (out / "map.json").write_text(json.dumps({"0": {"parquet": str(pool / "metadata" / "part0.parquet"),
                                                    "shards": ["00000000.tar"]}}))
    with pytest.raises(UserError, match=r"holds the face metadata parquet \(--metadata-dir\) .*part0.parquet"):
        reshard.run(str(pool / "shards"), str(out), str(tmp_path / "s.npy"), inject_blur_metadata=True,
                    metadata_dir=str(out / "metadata"), overwrite=True)
    with pytest.raises(UserError, match=r"holds the blur metadata map \(--blur-metadata-map\)"):
        reshard.run(str(pool / "shards"), str(out), str(tmp_path / "s.npy"), inject_blur_metadata=True,
                    blur_metadata_map=str(out / "map.json"), overwrite=True)
    assert (out / "metadata" / "part0.parquet").is_file() and (out / "map.json").is_file()


def test_overwrite_replaces_only_the_reshards_own_files(toy_pool, everything, tmp_path, capsys):
    """What the user added to a finished output (a file, a folder) stays through --overwrite, and is said;
    the earlier run's shards, also those the new one does not write again, go."""
    out = tmp_path / "out"
    reshard.run(str(toy_pool), str(out), str(everything), shard_size=100)
    assert (out / "00000003.tar").exists()
    (out / "notes").mkdir()
    (out / "notes" / "a.txt").write_text("mine")
    (out / "README.user").write_text("mine too")
    s = reshard.run(str(toy_pool), str(out), str(everything), shard_size=1000, overwrite=True)
    assert "kept 2 entries" in capsys.readouterr().out
    assert (out / "notes" / "a.txt").read_text() == "mine" and (out / "README.user").read_text() == "mine too"
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000000.tar"] and s["output_shard_count"] == 1
    record = json.loads((out / ".mode-reshard").read_text())
    assert "README.user" not in record["outputs"] and "00000000.tar" in record["outputs"]
    assert reshard.run(str(toy_pool), str(out), str(everything), shard_size=1000) == record  # done: skipped


def test_an_output_shard_deleted_is_made_again_by_the_same_command(toy_pool, everything, tmp_path):
    """The runner sees an output missing and runs again: the reshard replaces its own files without --overwrite
    (it refused, and the record was lost), giving the same bytes."""
    out = tmp_path / "out"
    reshard.run(str(toy_pool), str(out), str(everything), shard_size=100)
    before = {p.name: p.read_bytes() for p in out.glob("0*")}
    (out / "00000002.tar").unlink()
    reshard.run(str(toy_pool), str(out), str(everything), shard_size=100)
    assert {p.name: p.read_bytes() for p in out.glob("0*")} == before
    assert "params_hash" in json.loads((out / ".mode-reshard").read_text())
