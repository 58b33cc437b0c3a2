"""mode dr-generate: reproducible per shard, reruns that see their inputs, flags checked before work."""

import pytest

from dr import generate
from mode.core.errors import UserError
from mode.core.layout import Pool
from mode.core.shards import expand, iter_tar, write_tar

CFG = generate.GenerateConfig(num_augs=2, num_syn=1, seed=5)


@pytest.fixture()
def small_pool(toy_pool, tmp_path):
    """Three shards of four toy samples each."""
    pool = tmp_path / "pool"
    for path in expand(str(Pool(toy_pool).shards_dir))[:3]:
        write_tar(pool / path.rsplit("/", 1)[1], list(iter_tar(path))[:4])
    return pool


def _generate(pool, out, **kw):
    generate._setup.cache_clear()  # as a fresh process starts: the first shard it handles builds the teachers
    generate.run(str(pool), str(out), CFG, **kw)
    return {p.name: p.read_bytes() for p in out.glob("*.tar")}


def test_a_shards_output_does_not_depend_on_ranks_workers_or_order(small_pool, tmp_path):
    """Building the teachers once reseeded torch in the middle of a process's first shard, so that shard's
    augmentations (and embeddings) depended on which shard a process handled first."""
    alone = _generate(small_pool, tmp_path / "rank1", rank=1, world_size=2)  # shard 1 is this rank's first
    together = _generate(small_pool, tmp_path / "all", rank=0, world_size=1)
    spawned = _generate(small_pool, tmp_path / "w2", rank=0, world_size=1, workers=2)
    assert alone.keys() == {"00000001.tar"} and len(together) == len(spawned) == 3
    assert alone["00000001.tar"] == together["00000001.tar"] == spawned["00000001.tar"]
    assert together == spawned
    assert together["00000000.tar"] != together["00000001.tar"]


def test_a_rerun_sees_its_inputs_and_outputs(small_pool, tmp_path):
    """Other shards of the same names into the same --out were reported complete (the params held no inputs),
    and a deleted output tar was never redone (the runner was given no outputs to check)."""
    out = tmp_path / "out"
    first = _generate(small_pool, out)
    other = tmp_path / "other" / "00000000.tar"
    write_tar(other, list(iter_tar(small_pool / "00000001.tar")))
    with pytest.raises(UserError, match="other parameters.*use another --out"):
        generate.run(str(other), str(out), CFG)
    (out / "00000002.tar").unlink()
    assert generate.run(str(small_pool), str(out), CFG)["complete"]
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == first


def test_a_bad_captioner_is_one_line_before_any_work(small_pool, tmp_path):
    """`coca:x` was a TypeError and an unknown CoCa tag a RuntimeError, both in the first shard's work."""
    for spec, match in (("coca:x", "expected toy or coca:MODEL:PRETRAINED"),
                        ("coca:ViT-B-32:openai", "not an open_clip CoCa model"),
                        ("coca:coca_ViT-B-32:nope", "neither a tag of coca_ViT-B-32"),
                        ("blip", "expected toy or coca")):
        with pytest.raises(UserError, match=match):
            generate.run(str(small_pool), str(tmp_path / "out"), generate.GenerateConfig(captioner=spec))
    assert not (tmp_path / "out").exists()


def test_a_teacher_without_weights_is_refused_unless_a_toy(small_pool, tmp_path):
    """`--teacher ViT-B-32` (no :PRETRAINED) silently reinforced the pool with a random model."""
    with pytest.raises(UserError, match="--teacher ViT-B-32: no pretrained weights"):
        generate.run(str(small_pool), str(tmp_path / "out"), generate.GenerateConfig(teachers=("ViT-B-32",)))
    with pytest.raises(UserError, match="no open_clip model 'NoSuchModel'"):
        generate.run(str(small_pool), str(tmp_path / "out"), generate.GenerateConfig(teachers=("NoSuchModel:x",)))
    assert not (tmp_path / "out").exists()


def test_pickled_members_are_not_copied(small_pool, tmp_path):
    """A pool's `.pyd` or `.pth.gz` member (unpickled by webdataset's default decoders) was copied into the
    reinforced shards beside the image and caption."""
    import pickle

    samples = [(k, {**m, "pyd": pickle.dumps(k), "x.pth.gz": b"\x1f\x8b", "cls": b"3"})
               for k, m in iter_tar(small_pool / "00000000.tar")]
    write_tar(tmp_path / "in" / "00000000.tar", samples)
    summary = generate.run(str(tmp_path / "in"), str(tmp_path / "out"), CFG)
    out = list(iter_tar(tmp_path / "out" / "00000000.tar"))
    assert [k for k, _ in out] == [k for k, _ in samples] and summary["dropped_members"] == 2 * len(samples)
    assert all(m.keys() == {"jpg", "txt", "json", "cls", "syn.json", "paug.json", "npz"} for _, m in out)
