import io
import json
import tarfile

import pytest

from mode.core import shards
from mode.core.errors import UserError


def _touch_shards(d, names):
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        (d / n).write_bytes(b"")
    return [str(d / n) for n in names]


def test_expand_dir_natural_order(tmp_path):
    _touch_shards(tmp_path, ["shard10.tar", "shard2.tar", "shard1.tar", "notes.txt"])
    assert [p.rsplit("/", 1)[1] for p in shards.expand(str(tmp_path))] == ["shard1.tar", "shard2.tar",
                                                                           "shard10.tar"]


def test_expand_brace_and_double_colon(tmp_path):
    a = _touch_shards(tmp_path / "a", [f"{i:08d}.tar" for i in range(3)])
    b = _touch_shards(tmp_path / "b", [f"{i:08d}.tar" for i in range(2)])
    spec = f"{tmp_path}/a/{{00000000..00000002}}.tar::{tmp_path}/b"
    assert shards.expand(spec) == a + b


def test_expand_missing_is_user_error(tmp_path):
    _touch_shards(tmp_path, ["00000000.tar"])
    with pytest.raises(UserError, match="1 of 2 files missing"):
        shards.expand(f"{tmp_path}/{{00000000..00000001}}.tar")
    with pytest.raises(UserError, match="no such directory"):
        shards.expand(str(tmp_path / "missing_dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no shards"):
        shards.expand(str(tmp_path / "empty"))


def test_dir_rules_meta_json_and_shards_subdir(tmp_path):
    # DataComp pool layout: the tars live in <pool>/shards
    pool = tmp_path / "pool"
    got = _touch_shards(pool / "shards", ["00000000.tar", "00000001.tar"])
    (pool / "metadata").mkdir()
    assert shards.expand(str(pool)) == got
    # resharder output: meta.json names the shards, extra tars are ignored
    out = tmp_path / "resharded"
    _touch_shards(out, ["00000000.tar", "00000001.tar", "00000002.tar"])
    (out / "meta.json").write_text(json.dumps({"output_shard_count": 2, "output_shard_format": "{:08d}.tar"}))
    assert [p.rsplit("/", 1)[1] for p in shards.expand(str(out))] == ["00000000.tar", "00000001.tar"]


@pytest.mark.parametrize("names,expected", [
    (["d/00000000.tar", "d/00000001.tar", "d/00000002.tar"], "d/{00000000..00000002}.tar"),
    (["d/00000000.tar", "d/00000002.tar", "d/00000003.tar"], "d/00000000.tar::d/{00000002..00000003}.tar"),
    (["a/0.tar", "a/1.tar", "b/2.tar"], "a/{0..1}.tar::b/2.tar"),
    (["a/x.tar", "a/9.tar", "a/10.tar"], "a/x.tar::a/9.tar::a/10.tar"),
])
def test_brace_spec(names, expected):
    assert shards.brace_spec(names) == expected


def test_brace_spec_round_trips(tmp_path):
    names = [f"{i:05d}.tar" for i in (0, 1, 2, 5, 7, 8, 11)]
    paths = _touch_shards(tmp_path, names)
    assert shards.expand(shards.brace_spec(paths)) == paths


@pytest.mark.parametrize("n", [1, 5, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_for_rank_covers_every_shard_once(n, world):
    paths = [f"s/{i:08d}.tar" for i in range(n)]
    got = [p for r in range(world) for p in shards.for_rank(paths, r, world)]
    assert sorted(got) == sorted(paths)
    assert len(got) == n


def test_for_rank_rejects_bad_rank():
    with pytest.raises(UserError):
        shards.for_rank(["a.tar"], 2, 2)
    with pytest.raises(UserError):
        shards.for_rank([], 0, 1)


def test_sizes_from_sizes_json_then_stats(tmp_path):
    a = _touch_shards(tmp_path / "a", ["0.tar", "1.tar"])
    (tmp_path / "a" / "sizes.json").write_text(json.dumps({"0.tar": 10, "1.tar": 7}))
    b = _touch_shards(tmp_path / "b", ["0.tar"])
    (tmp_path / "b" / "0_stats.json").write_text(json.dumps({"successes": 5, "count": 9}))
    assert shards.total_samples(a + b) == 22
    c = _touch_shards(tmp_path / "c", ["0.tar"])
    assert shards.total_samples(a + c) is None


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with shards.atomic_write(target) as f:
            f.write(b"partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with shards.atomic_write(target) as f:
        f.write(b"whole")
    assert target.read_bytes() == b"whole"
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)


def test_write_tar_is_reproducible_and_readable(tmp_path):
    samples = [(f"k{i}", {"txt": f"caption {i}".encode(), "cls": str(i).encode()}) for i in range(3)]
    assert shards.write_tar(tmp_path / "a.tar", samples) == 3
    shards.write_tar(tmp_path / "b.tar", samples)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert tar.getnames() == ["k0.txt", "k0.cls", "k1.txt", "k1.cls", "k2.txt", "k2.cls"]
        assert tar.extractfile("k1.txt").read() == b"caption 1"
    assert io.BytesIO((tmp_path / "a.tar").read_bytes()).getbuffer().nbytes % 512 == 0


def test_tar_cut_between_members_counts_as_truncated(tmp_path):
    """A shard cut exactly at a member boundary reads without error in tarfile; it is still counted and its last
    (possibly incomplete) sample dropped."""
    import tarfile
    from collections import Counter

    samples = [(f"k{i}", {"txt": f"caption {i}".encode(), "json": b"{}"}) for i in range(4)]
    whole = tmp_path / "whole.tar"
    shards.write_tar(whole, iter(samples))
    errors = Counter()
    assert [k for k, _ in shards.iter_tar(whole, errors)] == ["k0", "k1", "k2", "k3"] and not errors
    with tarfile.open(whole) as t:
        cut_at = t.getmembers()[5].offset  # the header of k2.json: k2 has lost a member
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[:cut_at])
    errors = Counter()
    assert [k for k, _ in shards.iter_tar(cut, errors)] == ["k0", "k1"] and errors == {"truncated_tar": 1}


def test_total_samples_reads_each_sizes_json_once(tmp_path, monkeypatch):
    """A pool's sizes.json is read once per folder, not once per shard (parse time at DataComp scale)."""
    from mode.core import shards

    names = [f"{i:08d}.tar" for i in range(50)]
    (tmp_path / "sizes.json").write_text(json.dumps({n: i for i, n in enumerate(names)}))
    calls = []
    read = shards._dir_sizes
    monkeypatch.setattr(shards, "_dir_sizes", lambda d: calls.append(d) or read(d))
    assert shards.total_samples([str(tmp_path / n) for n in names]) == sum(range(50))
    assert len(calls) == 1
    assert shards.shard_size(str(tmp_path / names[3])) == 3


def test_concat_tar_equals_writing_the_samples_again(tmp_path):
    """Byte ranges of whole samples from two tars, closed as tarfile closes one, are the tar `write_tar` makes
    of those samples."""
    from mode.core.shards import concat_tar, iter_tar, tar_writer, write_tar

    samples = [(f"k{i}", {"txt": b"x" * (i * 300), "json": b"{}"}) for i in range(7)]
    ends = []
    for name, part in (("a", samples[:4]), ("b", samples[4:])):
        with tar_writer(tmp_path / f"{name}.tar") as sink:
            for key, members in part:
                sink.write(key, members)
        ends.append(sink.ends)
    concat_tar(tmp_path / "joined.tar", [(tmp_path / "a.tar", ends[0][0], ends[0][3]),
                                         (tmp_path / "b.tar", 0, ends[1][2])])
    write_tar(tmp_path / "direct.tar", samples[1:])
    assert (tmp_path / "joined.tar").read_bytes() == (tmp_path / "direct.tar").read_bytes()
    assert [k for k, _ in iter_tar(tmp_path / "joined.tar")] == [f"k{i}" for i in range(1, 7)]
    concat_tar(tmp_path / "empty.tar", [])
    write_tar(tmp_path / "empty_direct.tar", [])
    assert (tmp_path / "empty.tar").read_bytes() == (tmp_path / "empty_direct.tar").read_bytes()


def test_tar_sink_writes_what_tarfile_addfile_writes(tmp_path):
    """TarSink writes headers and data itself (no BytesIO copy, no TarInfo list): the bytes tarfile.addfile
    would write, so shards stay byte-identical to earlier versions'."""
    import io
    import os
    import tarfile

    from mode.core.shards import write_tar

    samples = [(f"k{i}", {"jpg": os.urandom(i * 97), "txt": b"hi", "json": b'{"uid": "x"}'}) for i in range(40)]
    write_tar(tmp_path / "ours.tar", samples)
    with open(tmp_path / "stock.tar", "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uname = info.gname = ""
                t.addfile(info, io.BytesIO(data))
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "stock.tar").read_bytes()
