"""mode dr-join: DataComp-style shards + DataCompDR-style reinforcement shards -> one set, verified."""

import json

import numpy as np
import pytest

from dr import join
from dr import sample as drs
from mode.core.errors import UserError
from mode.core.layout import Pool
from mode.core.shards import expand, iter_tar, write_tar


def _reinforcements(key: str, rng) -> dict[str, bytes]:
    embs = {"image_emb": rng.standard_normal((2, 4)).astype(np.float32),
            "text_emb": rng.standard_normal((3, 4)).astype(np.float32)}
    return {"syn.json": drs.encode_syn(["a", "b"]), "paug.json": drs.encode_paug([[[0, 0, 8, 8], []]] * 2),
            "npz": drs.encode_embeddings(embs, "npz")}


@pytest.fixture()
def dr_shards(toy_pool, tmp_path):
    """Reinforcement-only shards named like the pool's: every key but the first of each shard, plus one stray."""
    rng = np.random.default_rng(0)
    out = tmp_path / "dr"
    expected = {}
    for path in expand(str(Pool(toy_pool).shards_dir)):
        samples = list(iter_tar(path))
        # DataCompDR's samples carry their own .json ({uid, sha256}); the image shard's has more fields
        extra = [(k, {**_reinforcements(k, rng), "json": json.dumps({"uid": json.loads(m["json"])["uid"],
                                                                     "sha256": json.loads(m["json"])["sha256"],
                                                                     "from": "dr"}).encode()})
                 for k, m in samples[1:]] + [("stray000", _reinforcements("x", rng))]
        write_tar(out / path.rsplit("/", 1)[1], extra)
        expected.update({k: {**m, **dict(extra)[k], "json": json.dumps({**json.loads(m["json"]), "from": "dr"})
                             .encode()} for k, m in samples[1:]})
    return out, expected


def test_join_merges_by_key_and_verifies(toy_pool, tmp_path, dr_shards):
    dr_dir, expected = dr_shards
    out = tmp_path / "joined"
    summary = join.run(str(Pool(toy_pool).shards_dir), str(dr_dir), str(out), workers=2)
    got = {k: m for p in expand(str(out)) for k, m in iter_tar(p)}
    assert got == expected  # every member of both sides, byte for byte
    n_shards = len(expand(str(dr_dir)))
    assert summary["joined"] == len(expected) and summary["only_in_base"] == n_shards
    assert summary["only_in_reinforcements"] == n_shards and summary["shards"] == n_shards
    assert json.loads((out / "dr_join.json").read_text())["joined"] == len(expected)
    first = expand(str(out))[0]
    stats = json.loads((out / (first.rsplit("/", 1)[1][:-4] + "_stats.json")).read_text())
    assert stats["successes"] == len(list(iter_tar(first)))
    for key, members in got.items():  # the merged sample reads as a valid reinforced sample
        assert drs.reinforcement_from_sample(members).n_aug == 2


def test_join_refuses_shards_that_do_not_belong_together(toy_pool, tmp_path):
    path = expand(str(Pool(toy_pool).shards_dir))[0]
    key, members = next(iter_tar(path))
    bad = tmp_path / "dr" / path.rsplit("/", 1)[1]
    write_tar(bad, [(key, {"txt": b"another caption", "syn.json": drs.encode_syn(["x"])})])
    with pytest.raises(UserError, match="different 'txt'"):
        join.run(path, str(bad), str(tmp_path / "out"))
    other_uid = json.dumps({**json.loads(members["json"]), "uid": "f" * 32}).encode()
    write_tar(bad, [(key, {"json": other_uid, "syn.json": drs.encode_syn(["x"])})])
    with pytest.raises(UserError, match="different 'uid' in its .json"):
        join.run(path, str(bad), str(tmp_path / "out1"))
    # another image hash: the URL's image changed since the reinforcements were made; counted and left out
    changed = json.dumps({**json.loads(members["json"]), "sha256": "0" * 64}).encode()
    write_tar(bad, [(key, {"json": changed, **_reinforcements(key, np.random.default_rng(0))})])
    summary = join.run(path, str(bad), str(tmp_path / "out3"))
    assert summary["image_changed"] == 1 and summary.get("joined", 0) == 0
    with pytest.raises(UserError, match="no shard names in common"):
        join.run(path, expand(str(Pool(toy_pool).shards_dir))[1], str(tmp_path / "out2"))


def test_join_counts_samples_without_reinforcements(toy_pool, tmp_path, dr_shards):
    """Reinforcements that hold no DataCompDR members (e.g. the image shards given twice) are refused, not
    reported joined; a sample that lacks one member is counted and left out."""
    shards = str(Pool(toy_pool).shards_dir)
    with pytest.raises(UserError, match="holds DataCompDR members"):
        join.run(shards, shards, str(tmp_path / "twice"))
    dr_dir, expected = dr_shards
    first = expand(str(dr_dir))[0]
    samples = list(iter_tar(first))
    key, members = samples[0]
    write_tar(first, [(key, {k: v for k, v in members.items() if k != "paug.json"}), *samples[1:]])
    summary = join.run(shards, str(dr_dir), str(tmp_path / "joined"))
    assert summary["no_reinforcement"] == 1 and summary["joined"] == len(expected) - 1
    assert key not in {k for p in expand(str(tmp_path / "joined")) for k, _ in iter_tar(p)}


def test_join_resumes_through_the_step_runner(toy_pool, tmp_path, dr_shards):
    """A join killed after some pairs redoes only the unfinished ones; the outputs equal an uninterrupted join."""
    dr_dir, _ = dr_shards
    shards, out = str(Pool(toy_pool).shards_dir), tmp_path / "joined"
    first = join.run(shards, str(dr_dir), str(out))
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    victim = sorted(out.glob("*.tar"))[1]
    victim.write_bytes(victim.read_bytes()[:1000])  # cut, as a kill leaves it (its record no longer matches)
    untouched = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar") if p != victim}
    again = join.run(shards, str(dr_dir), str(out), workers=2)
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before
    assert untouched == {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar") if p != victim}
    assert again["joined"] == first["joined"] and again["complete"]


def test_join_refuses_an_out_that_overlaps_either_input(toy_pool, tmp_path, dr_shards):
    """--out the reinforcements folder (or inside it) once overwrote the reinforcements with the joined shards."""
    dr_dir, _ = dr_shards
    shards = str(Pool(toy_pool).shards_dir)
    before = {p.name: p.read_bytes() for p in dr_dir.glob("*.tar")}
    for out in (dr_dir, dr_dir / "joined", tmp_path):
        with pytest.raises(UserError, match="overlap: write the joined shards elsewhere"):
            join.run(shards, str(dr_dir), str(out))
    with pytest.raises(UserError, match="--shards folder"):
        join.run(shards, str(dr_dir), shards)
    assert {p.name: p.read_bytes() for p in dr_dir.glob("*.tar")} == before
    assert not (dr_dir / "_dr_join").exists()


def test_join_pairs_shards_by_id_where_file_names_repeat(toy_pool, tmp_path, dr_shards):
    """DataCompDR-1B's layout, {00..64}/0000000N.tar: pairing by file name alone joined one pair of the two."""
    dr_dir, expected = dr_shards
    pool = expand(str(Pool(toy_pool).shards_dir))[:2]
    for folder, path in zip(("00", "01"), pool):
        name = path.rsplit("/", 1)[1]
        write_tar(tmp_path / "B" / folder / "00000000.tar", list(iter_tar(path)))
        write_tar(tmp_path / "R" / folder / "00000000.tar", list(iter_tar(dr_dir / name)))
    out = tmp_path / "J"
    summary = join.run(str(tmp_path / "B" / "{00..01}" / "00000000.tar"),
                       str(tmp_path / "R" / "{00..01}" / "00000000.tar"), str(out))
    got = {k: m for p in expand(str(out)) for k, m in iter_tar(p)}
    keys = {k for p in pool for k, _ in iter_tar(p)}
    assert got == {k: m for k, m in expected.items() if k in keys} and summary["shards"] == 2
    assert sorted(p.name for p in out.glob("*.tar")) == ["00-00000000.tar", "01-00000000.tar"]
    # the same folder and file name twice (in different places) cannot pair: refused, not guessed
    write_tar(tmp_path / "other" / "00" / "00000000.tar", list(iter_tar(pool[0])))
    with pytest.raises(UserError, match="two shards are named 00/00000000.tar"):
        join.run(f"{tmp_path}/B/00/00000000.tar::{tmp_path}/other/00/00000000.tar", str(tmp_path / "R" / "00"),
                 str(tmp_path / "J2"))


def test_join_rerun_on_other_inputs_is_refused(toy_pool, tmp_path, dr_shards):
    """A second join into the same --out from other image shards once reported the first join's as complete."""
    dr_dir, _ = dr_shards
    first = expand(str(Pool(toy_pool).shards_dir))[0]
    cut = tmp_path / "cut" / first.rsplit("/", 1)[1]
    write_tar(cut, list(iter_tar(first))[:20])
    out = tmp_path / "joined"
    assert join.run(str(cut), str(dr_dir), str(out))["joined"] == 19
    with pytest.raises(UserError, match="other parameters.*use another --out"):
        join.run(first, str(dr_dir), str(out))
    assert join.run(str(cut), str(dr_dir), str(out))["joined"] == 19  # the same inputs: done, nothing redone


def test_join_drops_unknown_members_and_reports_bad_tars(toy_pool, tmp_path, dr_shards, capsys):
    """A `.pyd` or `.pickle` member (which webdataset's default decoders unpickle) was copied into the joined
    shards; the summary line left out input tars read only up to a cut."""
    import argparse
    import pickle

    dr_dir, expected = dr_shards
    first = expand(str(Pool(toy_pool).shards_dir))[0]
    name = first.rsplit("/", 1)[1]
    base = [(k, {**m, "pickle": pickle.dumps(k)}) for k, m in iter_tar(first)]
    write_tar(tmp_path / "base" / name, base)
    extra = [(k, {**m, "pyd": pickle.dumps(k)}) for k, m in iter_tar(dr_dir / name)]
    write_tar(tmp_path / "dr" / name, extra)
    cut = (tmp_path / "dr" / name).read_bytes()
    (tmp_path / "dr" / name).write_bytes(cut[:len(cut) // 2])
    args = argparse.Namespace(shards=str(tmp_path / "base"), reinforcements=str(tmp_path / "dr"),
                              out=str(tmp_path / "out"), workers=1, rank=None, world_size=None)
    join.main(args)
    got = {k: m for p in expand(str(tmp_path / "out")) for k, m in iter_tar(p)}
    assert got and all(m == expected[k] for k, m in got.items())  # no pickle or pyd member
    summary = json.loads((tmp_path / "out" / "dr_join.json").read_text())
    assert summary["bad_tar_truncated_tar"] == 1
    line = capsys.readouterr().out
    assert f"{summary['dropped_members']} unknown members dropped; 1 input tars cut or unreadable" in line
    assert summary["dropped_members"] == len(got) + len(list(iter_tar(tmp_path / "dr" / name)))
