"""`mode download`: the hub and img2dataset are replaced by fakes; nothing here reaches the network."""

import json
import socket
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mode.core import hub as core_hub
from mode.core.errors import UserError
from mode.datacomp import download

SMALL = ["README.md", "0a1b.parquet", "0a1b.npz", "ff02.parquet", "ff02.npz"]
XLARGE = ["README.md", "part_0/aa.parquet", "part_0/aa.npz", "part_1/bb.parquet", "part_1/bb.npz"]
DR_12M = [".gitattributes", "README.md"] + [f"{i:08d}.tar" for i in range(12)]
DR_1B = ["README.md"] + [f"{d:02d}/manifest.jsonl" for d in range(2)] + \
    [f"{d:02d}/{i:08d}.tar" for d in range(2) for i in (2, 10, 1)]
REPOS = {"mlfoundations/datacomp_small": SMALL, "mlfoundations/datacomp_xlarge": XLARGE,
         "apple/DataCompDR-12M": DR_12M, "apple/DataCompDR-1B": DR_1B}


class FakeHub:
    """snapshot_download / list_repo_files over in-memory repositories; records every call."""

    def __init__(self, repos):
        self.repos, self.calls = repos, []

    def snapshot_download(self, repo_id, *, repo_type=None, local_dir=None, allow_patterns=None, revision=None,
                          **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        assert repo_type == "dataset" and local_dir
        self.calls.append({"repo_id": repo_id, "allow_patterns": allow_patterns, "revision": revision, **kwargs})
        for name in filter_repo_objects(self.repos[repo_id], allow_patterns=allow_patterns):
            path = Path(local_dir) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if name.endswith(".parquet"):
                uid = f"{abs(hash(name)):032x}"[:32]
                pq.write_table(pa.table({"uid": [uid], "url": ["http://x/1.jpg"], "text": ["a cat"]}), path)
            elif name.endswith(".npz"):
                np.savez(path, b32_img=np.zeros((1, 4), np.float16))
            else:
                path.write_bytes(name.encode())
        return str(local_dir)

    def list_repo_files(self, repo_id, *, repo_type=None, revision=None):
        assert repo_type == "dataset"
        self.calls.append({"list": repo_id})
        return list(self.repos[repo_id])


@pytest.fixture
def hub(monkeypatch):
    """The hub 'online' (HF_HUB_OFFLINE cleared) but served by FakeHub."""
    import huggingface_hub
    from huggingface_hub import constants

    fake = FakeHub(REPOS)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", fake.list_repo_files)
    return fake


@pytest.fixture
def no_img2dataset(monkeypatch):
    monkeypatch.setitem(sys.modules, "img2dataset", None)  # `import img2dataset` now raises ImportError


@pytest.fixture
def fake_img2dataset(monkeypatch):
    """A stand-in img2dataset module: records its download kwargs and writes one shard's stats, as it does."""
    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        out = Path(kwargs["output_folder"])
        (out / "00000.tar").write_bytes(b"")
        (out / "00000_stats.json").write_text(json.dumps({"count": 3, "successes": 2, "failed_to_download": 1,
                                                          "failed_to_resize": 0}))

    module = types.ModuleType("img2dataset")
    module.download = fake_download
    monkeypatch.setitem(sys.modules, "img2dataset", module)
    return calls


def parse(*argv):
    from mode.cli import build_parser

    return build_parser("download").parse_args(["download", *argv])


def test_metadata_layout_and_summary(tmp_path, hub, no_img2dataset):
    s = download.run_pool("small", str(tmp_path), skip_shards=True)
    meta = tmp_path / "metadata"
    assert sorted(p.name for p in meta.glob("*.parquet")) == ["0a1b.parquet", "ff02.parquet"]
    assert not list(meta.glob("*.npz")) and not (tmp_path / "shards").exists()
    assert hub.calls == [{"repo_id": "mlfoundations/datacomp_small", "allow_patterns": "*.parquet", "revision": None,
                          "force_download": False}]
    on_disk = json.loads((tmp_path / "download.json").read_text())
    assert on_disk == s
    assert s["status"] == "complete" and s["scale"] == "small" and s["repo"] == "mlfoundations/datacomp_small"
    assert s["files"] == {"parquet": 2, "npz": 0} and s["npz"] is False and s["shards"] == {"skipped": True}
    assert s["fetched"] == ["parquet"] and pq.read_table(meta / "0a1b.parquet").column_names == ["uid", "url", "text"]


def test_npz_beside_parquets_and_xlarge_flattened(tmp_path, hub, no_img2dataset):
    s = download.run_pool("xlarge", str(tmp_path), download_npz=True, skip_shards=True)
    meta = tmp_path / "metadata"
    assert sorted(p.name for p in meta.iterdir() if p.is_file()) == ["aa.npz", "aa.parquet", "bb.npz", "bb.parquet"]
    assert not list(meta.glob("part_*"))
    assert [c["allow_patterns"] for c in hub.calls] == ["*/*.parquet", "*/*.npz"]
    assert s["npz"] is True and s["files"] == {"parquet": 2, "npz": 2}


def test_metadata_dir_flag_and_npz_added_later(tmp_path, hub, no_img2dataset):
    meta = tmp_path / "elsewhere"
    download.run_pool("small", str(tmp_path / "pool"), metadata_dir=str(meta), skip_shards=True)
    s = download.run_pool("small", str(tmp_path / "pool"), metadata_dir=str(meta), download_npz=True, skip_shards=True)
    assert [c["allow_patterns"] for c in hub.calls] == ["*.parquet", "*.npz"]  # parquets kept, only npz fetched
    assert s["fetched"] == ["npz"] and s["metadata_dir"] == str(meta) and len(list(meta.glob("*.npz"))) == 2


def test_present_metadata_is_used_without_the_hub(tmp_path, monkeypatch, no_img2dataset):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("hub called"))
    meta = tmp_path / "metadata"
    meta.mkdir()
    pq.write_table(pa.table({"uid": ["0" * 32], "url": ["u"], "text": ["t"]}), meta / "mine.parquet")
    s = download.run_pool("medium", str(tmp_path), skip_shards=True)
    assert s["fetched"] == [] and s["files"]["parquet"] == 1 and s["repo"] == "mlfoundations/datacomp_medium"


def test_overwrite_and_interrupted_fetch_go_back_to_the_hub(tmp_path, hub, no_img2dataset):
    download.run_pool("small", str(tmp_path), skip_shards=True)
    stale = tmp_path / "metadata" / "stale.parquet"
    stale.write_bytes(b"x")
    download.run_pool("small", str(tmp_path), skip_shards=True, overwrite_metadata=True)
    assert not stale.exists() and hub.calls[-1]["force_download"] is True
    summary = tmp_path / "download.json"  # a run killed while fetching leaves this mark
    summary.write_text(json.dumps({"metadata_status": "in progress", "repo": "mlfoundations/datacomp_small"}))
    n = len(hub.calls)
    assert download.run_pool("small", str(tmp_path), skip_shards=True)["fetched"] == ["parquet"]
    assert len(hub.calls) == n + 1


def test_offline_is_one_clear_user_error(tmp_path, monkeypatch, no_img2dataset):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("hub called"))
    with pytest.raises(UserError) as e:
        download.run_pool("small", str(tmp_path), skip_shards=True)
    msg = str(e.value)
    assert "\n" not in msg and "unreachable" in msg and "HF_HUB_OFFLINE" in msg
    assert str(tmp_path / "metadata") in msg and "where the hub is reachable" in msg
    assert not (tmp_path / "download.json").exists()  # no stale "in progress" mark
    assert not (tmp_path / "metadata").exists()
    with pytest.raises(UserError, match="unreachable"):
        download.run_dr("apple/DataCompDR-12M", str(tmp_path / "dr"))


def test_failed_fetch_keeps_the_previous_summary(tmp_path, hub, no_img2dataset, monkeypatch):
    download.run_pool("small", str(tmp_path), skip_shards=True)
    before = (tmp_path / "download.json").read_bytes()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"copy its \*\.npz files into"):
        download.run_pool("small", str(tmp_path), skip_shards=True, download_npz=True)
    assert (tmp_path / "download.json").read_bytes() == before


def test_real_hub_in_offline_mode_becomes_user_error(tmp_path, monkeypatch, no_img2dataset):
    """The real snapshot_download, told to stay offline: its own error is caught and reworded."""
    from huggingface_hub import constants

    def no_network(*args, **kwargs):
        raise AssertionError("a test opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(core_hub, "hub_offline", lambda: False)  # skip our early check: let the hub itself fail
    with pytest.raises(UserError, match=r"unreachable \(LocalEntryNotFoundError\)"):
        download.run_pool("small", str(tmp_path), skip_shards=True)
    with pytest.raises(UserError, match=r"unreachable \(OfflineModeIsEnabled\)"):
        download.run_dr("apple/DataCompDR-12M", str(tmp_path / "dr"), max_shards=2)
    (tmp_path / "dr_all").mkdir()  # an existing folder: snapshot_download alone would return it, offline or not
    with pytest.raises(UserError, match=r"unreachable \(OfflineModeIsEnabled\)"):
        download.run_dr("apple/DataCompDR-12M", str(tmp_path / "dr_all"))
    assert not (tmp_path / "download.json").exists()


def test_connection_lost_mid_way_is_user_error(tmp_path, hub, no_img2dataset, monkeypatch):
    import huggingface_hub

    def drop(*args, **kwargs):
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", drop)
    with pytest.raises(UserError, match=r"unreachable \(ConnectionResetError\)"):
        download.run_pool("large", str(tmp_path), skip_shards=True)


def test_bad_scale_lists_the_valid_ones(tmp_path):
    with pytest.raises(UserError, match="small, medium, large, xlarge, datacomp_1b"):
        download.run_pool("tiny", str(tmp_path), skip_shards=True)


def test_skip_shards_never_imports_img2dataset(tmp_path, hub, no_img2dataset):
    args = parse("--scale", "small", "--data_dir", str(tmp_path), "--skip_shards")
    args.func(args)  # would raise ImportError -> UserError if img2dataset were imported
    with pytest.raises(UserError, match=r"pip install 'mode-clip\[download\]'"):
        download.run_pool("small", str(tmp_path / "other"))
    assert not (tmp_path / "other").exists() and len(hub.calls) == 1  # checked before fetching anything


def test_img2dataset_gets_datacomps_parameters(tmp_path, hub, fake_img2dataset, capsys):
    args = parse("--scale", "small", "--data_dir", str(tmp_path))
    args.func(args)
    assert fake_img2dataset == [{
        "url_list": str(tmp_path / "metadata"), "input_format": "parquet", "url_col": "url", "caption_col": "text",
        "save_additional_columns": ["uid"], "bbox_col": "face_bboxes", "output_folder": str(tmp_path / "shards"),
        "output_format": "webdataset", "number_sample_per_shard": 10000, "oom_shard_count": 8, "image_size": 512,
        "resize_mode": "keep_ratio_largest", "resize_only_if_bigger": True, "encode_format": "jpg",
        "processes_count": 16, "thread_count": 128, "retries": 2, "enable_wandb": False, "wandb_project": "datacomp",
        "disallowed_header_directives": ["noai", "noimageai", "noindex", "noimageindex"]}]
    s = json.loads((tmp_path / "download.json").read_text())
    assert s["shards"] == {"skipped": False, "shards": 1, "count": 3, "successes": 2, "failed_to_download": 1,
                           "failed_to_resize": 0}
    assert "2 of 3 images in 1 shards" in capsys.readouterr().out
    args = parse("--scale", "small", "--data-dir", str(tmp_path), "--skip_bbox_blurring", "--image_size", "256",
                 "--resize_mode", "center_crop", "--no_resize_only_if_bigger", "--encode_format", "webp",
                 "--processes_count", "2", "--thread_count", "8", "--retries", "0")
    with pytest.raises(UserError, match="downloaded with other image settings \\(image_size 512, now 256\\)"):
        args.func(args)  # img2dataset would keep the 512 px shards beside new 256 px ones
    for p in (tmp_path / "shards").iterdir():
        p.unlink()
    args.func(args)
    got = fake_img2dataset[-1]
    assert (got["bbox_col"], got["image_size"], got["resize_mode"], got["resize_only_if_bigger"]) == \
        (None, 256, "center_crop", False)
    assert (got["encode_format"], got["processes_count"], got["thread_count"], got["retries"]) == ("webp", 2, 8, 0)
    assert len(hub.calls) == 1  # the second run reused the metadata


def test_dr_allow_patterns(tmp_path, hub):
    s = download.run_dr("apple/DataCompDR-12M", str(tmp_path), allow_patterns=["0000000[0-4].tar"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock-download", *(f"{i:08d}.tar" for i in range(5)),
                                                          "download.json"]  # the lock inside data_dir
    assert hub.calls == [{"list": "apple/DataCompDR-12M"},  # listed first: offline fails there, with its reason
                         {"repo_id": "apple/DataCompDR-12M", "allow_patterns": ["0000000[0-4].tar"],
                          "revision": None}]
    assert s["files"] == 5 and s["shards"] == 5 and s["status"] == "complete"
    assert json.loads((tmp_path / "download.json").read_text()) == s


def test_dr_max_shards_takes_the_first_in_natural_order(tmp_path, hub):
    args = parse("--dr", "apple/DataCompDR-1B", "--data_dir", str(tmp_path), "--max-shards", "4",
                 "--revision", "v1")
    args.func(args)
    got = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.tar"))
    assert got == ["00/00000001.tar", "00/00000002.tar", "00/00000010.tar", "01/00000001.tar"]
    assert (tmp_path / "00" / "manifest.jsonl").exists() and (tmp_path / "README.md").exists()
    assert hub.calls[0] == {"list": "apple/DataCompDR-1B"} and hub.calls[1]["revision"] == "v1"
    s = json.loads((tmp_path / "download.json").read_text())
    assert s["shards"] == 4 and s["files"] == 7 and s["max_shards"] == 4

    out = tmp_path / "only_tars"
    s = download.run_dr("apple/DataCompDR-12M", str(out), allow_patterns=["*.tar"], max_shards=2)
    assert sorted(p.name for p in out.iterdir()) == [".lock-download", "00000000.tar", "00000001.tar", "download.json"]


def test_dr_bad_input(tmp_path, hub):
    with pytest.raises(UserError, match="OWNER/NAME"):
        download.run_dr("DataCompDR-12M", str(tmp_path))
    with pytest.raises(UserError, match="no .tar shards match"):
        download.run_dr("apple/DataCompDR-12M", str(tmp_path), allow_patterns=["*.parquet"], max_shards=1)
    with pytest.raises(UserError, match="nothing of apple/DataCompDR-12M matches"):
        download.run_dr("apple/DataCompDR-12M", str(tmp_path), allow_patterns=["*.parquet"])
    assert not (tmp_path / "download.json").exists()  # refused before anything was written
    with pytest.raises(UserError, match="with --dr REPO"):
        args = parse("--data_dir", str(tmp_path), "--max-shards", "3")
        args.func(args)
    with pytest.raises(SystemExit):
        parse("--scale", "small", "--dr", "apple/DataCompDR-12M", "--data_dir", str(tmp_path))


def test_complete_download_is_a_done_global_step(tmp_path, hub, no_img2dataset):
    """The record lists every metadata file with its size: a rerun with the same flags asks the hub nothing, a
    removed file is fetched again."""
    first = download.run_pool("small", str(tmp_path), skip_shards=True)
    assert first["step"] == "download" and set(first["outputs"]) == {"metadata/0a1b.parquet", "metadata/ff02.parquet"}
    n = len(hub.calls)
    assert download.run_pool("small", str(tmp_path), skip_shards=True)["seconds"] == first["seconds"]
    assert len(hub.calls) == n
    (tmp_path / "metadata" / "ff02.parquet").unlink()
    assert download.run_pool("small", str(tmp_path), skip_shards=True)["files"]["parquet"] == 2
    assert len(hub.calls) == n + 1


def test_cloud_paths_and_pool_flags_with_dr_are_refused(tmp_path, hub):
    with pytest.raises(UserError, match="s3://bucket/pool: cloud paths are not supported here"):
        download.run_pool("small", "s3://bucket/pool", skip_shards=True)
    with pytest.raises(UserError, match="cloud paths"):
        download.run_dr("apple/DataCompDR-12M", "gs://bucket/dr")
    for extra in (["--download_npz"], ["--image_size", "256"], ["--skip_shards"]):
        args = parse("--dr", "apple/DataCompDR-12M", "--data_dir", str(tmp_path), *extra)
        with pytest.raises(UserError, match=f"{extra[0]} is for a DataComp pool"):
            args.func(args)
    assert not list(tmp_path.iterdir()) and hub.calls == []


def test_overwrite_deletes_nothing_when_the_hub_cannot_be_reached(tmp_path, hub, no_img2dataset, monkeypatch):
    download.run_pool("small", str(tmp_path), skip_shards=True)
    before = sorted(p.name for p in (tmp_path / "metadata").iterdir())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="unreachable"):
        download.run_pool("small", str(tmp_path), skip_shards=True, overwrite_metadata=True)
    assert sorted(p.name for p in (tmp_path / "metadata").iterdir()) == before
    assert json.loads((tmp_path / "download.json").read_text())["status"] == "complete"


def test_another_scale_in_the_same_data_dir_needs_overwrite(tmp_path, hub, no_img2dataset):
    download.run_pool("small", str(tmp_path), skip_shards=True)
    with pytest.raises(UserError, match="holds mlfoundations/datacomp_small's metadata: pass --overwrite_metadata"):
        download.run_pool("xlarge", str(tmp_path), skip_shards=True)
    s = download.run_pool("xlarge", str(tmp_path), skip_shards=True, overwrite_metadata=True)
    assert s["repo"] == "mlfoundations/datacomp_xlarge"
    assert sorted(p.name for p in (tmp_path / "metadata").iterdir()) == ["aa.parquet", "bb.parquet"]


def test_a_lost_shard_or_file_is_fetched_by_name(tmp_path, hub, fake_img2dataset, monkeypatch, caplog):
    download.run_pool("xlarge", str(tmp_path))
    n = len(hub.calls)
    (tmp_path / "shards" / "00000.tar").unlink()  # its _stats.json stays: img2dataset takes the shard as done
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the metadata is whole: no hub needed
    download.run_pool("xlarge", str(tmp_path))
    assert len(hub.calls) == n and "00000_stats.json is there" in caplog.text
    monkeypatch.delenv("HF_HUB_OFFLINE")
    (tmp_path / "metadata" / "bb.parquet").unlink()
    download.run_pool("xlarge", str(tmp_path))
    assert hub.calls[-1]["allow_patterns"] == ["*/bb.parquet"] and len(hub.calls) == n + 1
    assert sorted(p.name for p in (tmp_path / "metadata").iterdir()) == ["aa.parquet", "bb.parquet"]


def test_dr_counts_only_the_repositorys_files(tmp_path, hub):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "00000000.tar").write_bytes(b"a pool's shard")
    s = download.run_dr("apple/DataCompDR-12M", str(tmp_path), allow_patterns=["*.tar"])
    assert s["files"] == 12 and s["shards"] == 12 and "notes.txt" not in s["outputs"]
    assert not any(k.startswith("old/") for k in s["outputs"])
