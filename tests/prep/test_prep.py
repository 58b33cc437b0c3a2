"""MoDE prep steps: contracts, resumability, rank splits and bad input, on small toy pools."""

import filecmp
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mode.core.errors import UserError
from mode.core.layout import WorkDir
from mode.core.shards import expand, iter_tar
from mode.prep import assign, captions, cluster, embed, route

from ..conftest import TOY_CLUSTER as CFG  # noqa: E402


def data_files(work: Path) -> list[Path]:
    """Every artifact except stats/summaries (which hold timings) and temp files."""
    return sorted(p.relative_to(work) for p in work.rglob("*") if p.is_file()
                  and not p.name.startswith((".tmp", ".lock-"))
                  and not p.name.endswith("stats.json") and p.name != "summary.json")


def assert_same_outputs(a: Path, b: Path) -> None:
    files = data_files(a)
    assert files == data_files(b)
    match, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors, mismatch


@pytest.fixture
def reference(toy_work):
    return toy_work


def test_step_contracts(toy_pool, reference):
    wd = WorkDir(reference)
    shard_ids = [Path(p).stem for p in expand(str(toy_pool))]
    meta = json.loads(wd.features_meta.read_text())
    assert meta["encoder"] == embed.DEFAULT_ENCODER and meta["dim"] == 384 and meta["dtype"] == "float16"
    total = 0
    for sid in shard_ids:
        caps = pq.read_table(wd.captions(sid))
        assert caps.schema.names == ["uid", "key", "caption"]
        keys_in_tar = [k for k, _ in iter_tar(toy_pool / "shards" / f"{sid}.tar")]
        assert caps.column("key").to_pylist() == keys_in_tar  # tar order
        feats = np.load(wd.features(sid))
        assert feats.dtype == np.float16 and feats.shape == (caps.num_rows, 384)
        np.testing.assert_allclose(np.linalg.norm(feats.astype(np.float32), axis=1), 1, atol=2e-3)
        asg = pq.read_table(wd.assignment(sid))
        assert asg.column("uid").to_pylist() == caps.column("uid").to_pylist()
        fine_to_coarse = np.load(wd.fine_to_coarse)
        np.testing.assert_array_equal(fine_to_coarse[asg.column("fine").to_numpy()], asg.column("coarse").to_numpy())
        total += caps.num_rows
    fine, coarse = np.load(wd.fine_centroids), np.load(wd.coarse_centroids)
    assert fine.shape == (8, 384) and coarse.shape == (3, 384) and fine.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fine, axis=1), 1, atol=1e-5)
    summary = json.loads((wd.assign_dir / "summary.json").read_text())
    assert summary["complete"] and summary["processed"] == total
    assert sum(summary["counts"]["coarse"]) == sum(summary["counts"]["fine"]) == total
    cl = json.loads((wd.clusters_dir / "summary.json").read_text())
    assert cl["config"]["fine"] == 8 and sum(cl["fine_sizes"]) == cl["sampled"] == total


def test_route_writes_each_experts_pairs_and_sizes(toy_pool, reference):
    wd = WorkDir(reference)
    coarse_of, in_cluster = {}, np.zeros(3, int)
    for p in sorted(wd.assign_dir.glob("*.parquet")):
        t = pq.read_table(p).to_pydict()
        coarse_of.update(zip(t["key"], t["coarse"]))
        in_cluster += np.bincount(t["coarse"], minlength=3)
    originals = {k: m for p in expand(str(toy_pool)) for k, m in iter_tar(p)}
    for k in range(3):
        sizes = json.loads((wd.expert_shards_dir(k) / "sizes.json").read_text())
        got = {key: members for p in expand(str(wd.expert_shards_dir(k))) for key, members in iter_tar(p)}
        assert sum(sizes.values()) == len(got)
        own = {key for key in got if coarse_of[key] == k}
        assert own == {key for key, c in coarse_of.items() if c == k}  # every in-cluster pair, once
        ooc = len(got) - len(own)
        assert abs(ooc - in_cluster[k] * 0.1 / 0.9) <= 4  # a 0.1 share of the expert; rounded per shard
        key = next(iter(got))
        assert got[key] == originals[key]  # same members, same bytes, original key


def test_route_additive_adds_r_times_the_others(toy_pool, reference, tmp_path):
    """--ooc-mode additive (MoDE's): per shard, int(r x the shard's out-of-cluster pairs) join each expert."""
    work = tmp_path / "work"
    shutil.copytree(reference, work, ignore=shutil.ignore_patterns("experts"))
    route.run(str(toy_pool), str(work), 0.1, 0, 0, 1, ooc_mode="additive")
    wd = WorkDir(work)
    for k in range(3):
        expected = 0
        for p in sorted(wd.assign_dir.glob("*.parquet")):
            c = np.asarray(pq.read_table(p).column("coarse"))
            expected += int(np.sum(c != k) * 0.1)
        stats = json.loads((wd.route_dir / "summary.json").read_text())
        assert stats["out_of_cluster"][k] == expected
    with pytest.raises(UserError, match="--ooc-mode"):
        route.run(str(toy_pool), str(work), 0.1, 0, 0, 1, ooc_mode="half")


@pytest.mark.parametrize("step", ["captions", "embed", "assign", "route"])
def test_crash_midway_then_rerun_is_byte_identical(toy_pool, reference, tmp_path, monkeypatch, step):
    """A step that dies after two shards (a stale temp file left behind) and is run again."""
    work = tmp_path / "work"
    module = {"captions": captions, "embed": embed, "assign": assign, "route": route}[step]
    order = ["captions", "embed", "cluster", "assign", "route"]
    for earlier in order[:order.index(step)]:
        _run_step(earlier, toy_pool, work)
    real_work, calls = module._work, []

    def dying(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(args)
        return real_work(*args)

    monkeypatch.setattr(module, "_work", dying)
    with pytest.raises(KeyboardInterrupt):
        _run_step(step, toy_pool, work)
    monkeypatch.setattr(module, "_work", real_work)
    step_dir = {"captions": WorkDir(work).captions_dir, "embed": WorkDir(work).features_dir,
                "assign": WorkDir(work).assign_dir, "route": WorkDir(work).route_dir}[step]
    assert len(list(step_dir.glob("*.stats.json"))) == 2
    (step_dir / ".tmp-00000003.parquet.dead").write_bytes(b"partial")
    for later in order[order.index(step):]:
        _run_step(later, toy_pool, work)
    for f in work.rglob(".tmp-*"):
        f.unlink()
    assert_same_outputs(reference, work)


def _run_step(step, toy_pool, work, rank=0, world=1):
    shards = str(toy_pool)
    if step == "captions":
        captions.run(shards, str(work), rank, world)
    elif step == "cluster":
        cluster.run(shards, str(work), CFG, world_size=1)
    elif step == "embed":
        embed.run(shards, str(work), rank=rank, world_size=world)
    elif step == "assign":
        assign.run(shards, str(work), rank, world)
    elif step == "route":
        route.run(shards, str(work), 0.1, 0, rank, world)


def test_cluster_rerun_after_crash_is_identical(toy_pool, reference, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(reference, work)
    wd = WorkDir(work)
    (wd.clusters_dir / "summary.json").unlink()  # died before its completion marker
    wd.coarse_centroids.write_bytes(b"half written")
    cluster.run(str(toy_pool), str(work), CFG, world_size=1)
    assert_same_outputs(reference, work)
    with pytest.raises(UserError, match="another config"):
        cluster.run(str(toy_pool), str(work), cluster.ClusterConfig(fine=9, coarse=3), world_size=1)
    with pytest.raises(UserError, match="global step"):
        cluster.run(str(toy_pool), str(work), CFG, world_size=2)
    summary = json.loads((wd.clusters_dir / "summary.json").read_text())
    assert summary["step"] == "cluster" and set(summary["outputs"]) == {"fine.npy", "coarse.npy", "fine_to_coarse.npy"}
    wd.fine_to_coarse.write_bytes(wd.fine_to_coarse.read_bytes()[:-4])  # an output changed after its record
    cluster.run(str(toy_pool), str(work), CFG, world_size=1)
    assert_same_outputs(reference, work)
    first = sorted(wd.features_dir.glob("*.npy"))[0]
    np.save(first, np.load(first).astype(np.float32))  # the features changed since they were clustered
    with pytest.raises(UserError, match="other inputs"):
        cluster.run(str(toy_pool), str(work), CFG, world_size=1)


def test_two_ranks_give_the_same_union(toy_pool, reference, tmp_path):
    work = tmp_path / "work"
    for step in ("captions", "embed", "cluster", "assign", "route"):
        for rank in ((0,) if step == "cluster" else (1, 0)):
            _run_step(step, toy_pool, work, rank, 2)
    assert_same_outputs(reference, work)


def test_tarfile_mode_matches_caption_mode(toy_pool, reference, tmp_path):
    work = tmp_path / "work"
    embed.run(str(toy_pool), str(work), file_mode="tarfile", rank=0, world_size=1)
    for p in WorkDir(reference).features_dir.glob("*.npy"):
        np.testing.assert_array_equal(np.load(p), np.load(WorkDir(work).features(p.stem)))
        assert (WorkDir(work).captions(p.stem)).read_bytes() == WorkDir(reference).captions(p.stem).read_bytes()


def test_other_parameters_are_refused(toy_pool, reference, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(reference, work)
    with pytest.raises(UserError, match="other parameters"):
        route.run(str(toy_pool), str(work), 0.5, 0, 0, 1)
    with pytest.raises(UserError, match="run `mode captions` first"):
        embed.run(str(toy_pool), str(tmp_path / "empty"), rank=0, world_size=1)


def _member_edit(src: Path, dst: Path, edit) -> None:
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            data = edit(m.name, tin.extractfile(m).read())
            if data is None:
                continue
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))


def test_bad_input_is_counted_and_skipped(toy_pool, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    src = sorted((toy_pool / "shards").glob("*.tar"))
    keys = [k for k, _ in iter_tar(src[0])]
    no_caption, bad_json = keys[0], keys[1]

    def edit(name, data):
        if name == f"{no_caption}.txt":
            return None
        if name == f"{bad_json}.json":
            return b"{not json"
        return data

    _member_edit(src[0], bad / "00000000.tar", edit)
    whole = src[1].read_bytes()
    (bad / "00000001.tar").write_bytes(whole[: len(whole) // 2])  # truncated mid-member
    _member_edit(src[2], bad / "00000002.tar", lambda n, d: None)  # empty shard
    shutil.copy(src[3], bad / "00000003.tar")
    work = tmp_path / "work"
    s = captions.run(str(bad), str(work), 0, 1)
    assert s["complete"] and s["skipped"]["no_caption"] == 1 and s["skipped"]["bad_json"] == 1
    assert s["skipped"]["truncated_tar"] == 1
    wd = WorkDir(work)
    assert pq.read_table(wd.captions("00000002")).num_rows == 0
    n_partial = pq.read_table(wd.captions("00000001")).num_rows
    assert 0 < n_partial < len([k for k, _ in iter_tar(src[1])])
    embed.run(str(bad), str(work), rank=0, world_size=1)
    cluster.run(str(bad), str(work), CFG, world_size=1)
    assert assign.run(str(bad), str(work), 0, 1)["complete"]
    r = route.run(str(bad), str(work), 0.0, 0, 0, 1)
    assert r["complete"] and r["skipped"]["unassigned"] == 2 and r["skipped"]["truncated_tar"] == 1
    assert sum(r["sizes"]) == s["kept"]
    direct = embed.run(str(bad), str(tmp_path / "w2"), file_mode="tarfile", rank=0, world_size=1)
    assert direct["skipped"] == s["skipped"] and direct["kept"] == s["kept"]  # once an empty {} in tarfile mode
    assert direct["processed"] == s["processed"]


def test_balanced_assignment_is_exact_stable_and_auction_optimal():
    from scipy.optimize import linear_sum_assignment

    from mode.prep.bkmeans import capacities, deferred_acceptance, price_assign

    rng = np.random.default_rng(0)
    n, k = 62, 6
    cost = rng.random((n, k))
    cost[:, 0] -= 0.5  # every point prefers cluster 0
    cand = np.argsort(cost, axis=1)
    caps = capacities(n, k)
    labels, _ = deferred_acceptance(np.take_along_axis(cost, cand, 1), cand, caps)
    assert (labels >= 0).all() and np.bincount(labels, minlength=k).tolist() == caps.tolist()
    for i in range(n):  # stable: no point and cluster that both prefer each other to what they have
        for j in range(k):
            if cost[i, j] < cost[i, labels[i]]:
                assert cost[labels == j, j].max() <= cost[i, j]
    slots = np.repeat(np.arange(k), caps)  # the optimal balanced assignment, for comparison
    rows, cols = linear_sum_assignment(cost[:, slots])
    optimum = cost[rows, slots[cols]].sum()
    assert cost[np.arange(n), labels].sum() > 1.2 * optimum  # stable is not optimal when all want one cluster
    auction, _, rounds = price_assign(np.take_along_axis(cost, cand, 1), cand, caps, max_rounds=10_000)
    assert rounds < 10_000 and np.bincount(auction, minlength=k).tolist() == caps.tolist()
    assert cost[np.arange(n), auction].sum() <= optimum + n * 1e-5  # the auction reaches the optimum


def test_balanced_kmeans_balances_skewed_data():
    from mode.prep.bkmeans import balanced_kmeans

    rng = np.random.default_rng(1)
    centres = rng.standard_normal((10, 32)).astype(np.float32)
    sizes = [1200, 600, 300, 300, 200, 150, 100, 80, 40, 30]  # a long tail, as caption topics have
    x = np.concatenate([c + 0.4 * rng.standard_normal((m, 32)).astype(np.float32) for c, m in zip(centres, sizes)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for metric in ("cosine", "euclidean"):
        r = balanced_kmeans(x, 16, metric=metric, niter=30, seed=0, candidates=8)
        counts = np.bincount(r.labels, minlength=16)
        assert counts.min() == len(x) // 16 and counts.max() <= len(x) // 16 + 1
        again = balanced_kmeans(x, 16, metric=metric, niter=30, seed=0, candidates=8)
        assert np.array_equal(r.labels, again.labels) and np.array_equal(r.centroids, again.centroids)
    free = cluster._kmeans(x, 16, cluster.ClusterConfig(fine=16), 30)
    c = free.centroids / np.linalg.norm(free.centroids, axis=1, keepdims=True)
    unbalanced = float(np.mean(np.max(x @ c.T, axis=1)))
    assert r.objective(x, "euclidean") < 0 and balanced_kmeans(x, 16, niter=30).objective(x, "cosine") > \
        0.9 * unbalanced


def test_balance_flag_evens_out_experts(toy_pool, reference, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(WorkDir(reference).features_dir, WorkDir(work).features_dir)
    shutil.copytree(WorkDir(reference).captions_dir, WorkDir(work).captions_dir)
    plain = json.loads((WorkDir(reference).clusters_dir / "summary.json").read_text())
    bal = cluster.run(str(toy_pool), str(work), cluster.ClusterConfig(fine=8, coarse=3, balance=True), world_size=1)
    n = sum(plain["coarse_sizes_sampled"])
    assert sorted(set(bal["fine_sizes"])) in ([n // 8], [n // 8, n // 8 + 1])  # balanced fine k-means
    f2c = np.load(WorkDir(work).fine_to_coarse)
    assert sorted(np.bincount(f2c, minlength=3).tolist()) == [2, 3, 3]  # balanced coarse: 8 fine over 3
    assert bal["expert_size_max_over_min"] <= 1.5 + 0.01
    assert sum(bal["coarse_sizes_sampled"]) == n
    again = tmp_path / "again"  # one seed, one clustering: byte-identical files
    shutil.copytree(WorkDir(reference).features_dir, WorkDir(again).features_dir)
    shutil.copytree(WorkDir(reference).captions_dir, WorkDir(again).captions_dir)
    cluster.run(str(toy_pool), str(again), cluster.ClusterConfig(fine=8, coarse=3, balance=True), world_size=1)
    for name in ("fine.npy", "coarse.npy", "fine_to_coarse.npy"):
        assert (WorkDir(work).clusters_dir / name).read_bytes() == (WorkDir(again).clusters_dir / name).read_bytes()


def test_embed_under_torchrun_splits_shards_across_ranks(toy_pool, reference, tmp_path):
    from ..conftest import PYTHON, run

    work = tmp_path / "work"
    shutil.copytree(WorkDir(reference).captions_dir, WorkDir(work).captions_dir)
    res = run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mode",
               "embed", "--shards", str(toy_pool), "--work-dir", str(work)])
    assert res.returncode == 0, res.stderr[-2000:]
    for p in WorkDir(reference).features_dir.glob("*.npy"):
        np.testing.assert_array_equal(np.load(p), np.load(WorkDir(work).features(p.stem)))
    assert json.loads((WorkDir(work).features_dir / "summary.json").read_text())["complete"]


def test_cli_errors_are_one_line(tmp_path):
    from ..conftest import PYTHON, run

    res = run([PYTHON, "-m", "mode", "captions", "--shards", str(tmp_path / "nope"), "--work-dir", str(tmp_path)])
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"error: shard spec part '{tmp_path / 'nope'}': no such directory or file"]
    res = run([PYTHON, "-m", "mode", "cluster", "--shards", str(tmp_path), "--work-dir", str(tmp_path),
               "--world-size", "2"])
    assert res.returncode == 2 and "global step" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "0.parquet").write_bytes(b"this is not parquet at all, just some bytes")
    res = run([PYTHON, "-m", "mode", "filter", "--name", "no_filter", "--metadata-dir", str(meta), "--save-path",
               str(tmp_path / "s.npy")])  # once a pyarrow traceback
    last = res.stderr.strip().splitlines()[-1]  # after the runner's progress bar
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert last.startswith(f"error: {meta / '0.parquet'}: not a readable metadata parquet") and "Arrow" in last
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    res = run([PYTHON, "-m", "mode", "toy", str(a_file / "pool"), "--samples", "20", "--shards", "1"])
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and str(a_file) in res.stderr


def test_pooler_embedding_is_cls_through_the_trained_pooler():
    """--pooling pooler (MoDE's SimCSE embedding): tanh(W [CLS] + b) of the last layer, L2-normalised."""
    import torch

    from mode.prep import embed

    texts = ["a red circle drawn on a white background", "stripes", "the digit 7 in a blue box"]
    got = embed.encode(texts, pooling="pooler")
    enc = embed.load_encoder(None, pooling="pooler")
    batch = enc.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        cls = enc.model(**batch).last_hidden_state[:, 0]
        want = torch.tanh(enc.model.pooler.dense(cls)).numpy()
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    mean = embed.encode(texts)  # the sentence-transformers model's own (mean) pooling differs
    assert np.abs(mean - got).max() > 0.1
    with pytest.raises(UserError, match="--pooling"):
        embed.encode(texts, pooling="cls")


@pytest.mark.parametrize("step", ["captions", "embed", "assign", "route"])
def test_missing_or_changed_outputs_are_redone(toy_pool, reference, tmp_path, step):
    """A completion marker counts only while the outputs it recorded are there with their sizes."""
    work = tmp_path / "work"
    shutil.copytree(reference, work)
    wd = WorkDir(work)
    ids = sorted(p.stem for p in wd.captions_dir.glob("*.parquet"))
    out = {"captions": wd.captions, "embed": wd.features, "assign": wd.assignment,
           "route": lambda i: wd.expert_shard(1, i)}[step]
    assert "outputs" in json.loads(WorkDir.stats({"captions": wd.captions_dir, "embed": wd.features_dir,
                                                  "assign": wd.assign_dir, "route": wd.route_dir}[step],
                                                 ids[0]).read_text())
    out(ids[0]).unlink()  # deleted
    out(ids[1]).write_bytes(out(ids[1]).read_bytes()[:-7])  # cut short
    _run_step(step, toy_pool, work)
    assert_same_outputs(reference, work)


def test_two_pools_joined_keep_every_shard(toy_pool, tmp_path):
    """Two DataComp pools joined by '::' both hold shards/00000000.tar: each gets its own outputs, and the summary
    counts what is on disk (once 1572 were reported and 786 kept)."""
    from mode.core.shards import shard_ids

    for name in ("a", "b"):
        shutil.copytree(toy_pool, tmp_path / name / "pool")
    spec = f"{tmp_path / 'a' / 'pool'}::{tmp_path / 'b' / 'pool'}"
    ids = shard_ids(expand(spec))
    assert len(set(ids.values())) == len(ids) == 8
    summary = captions.run(spec, str(tmp_path / "work"), 0, 1)
    on_disk = sum(pq.read_table(p).num_rows for p in WorkDir(tmp_path / "work").captions_dir.glob("*.parquet"))
    assert len(list(WorkDir(tmp_path / "work").captions_dir.glob("*.parquet"))) == 8
    assert summary["kept"] == on_disk == 2 * sum(1 for p in expand(str(toy_pool)) for _ in iter_tar(p))


def test_features_that_do_not_match_their_captions_are_refused(toy_pool, reference, tmp_path):
    """A features file with fewer rows than its captions (once clustered silently) is a one-line error."""
    work = tmp_path / "work"
    shutil.copytree(reference, work, ignore=shutil.ignore_patterns("clusters", "assign", "experts"))
    wd = WorkDir(work)
    first = sorted(wd.features_dir.glob("*.npy"))[0]
    np.save(first, np.load(first)[:-5])
    with pytest.raises(UserError, match="rows for .* captions"):
        cluster.run(str(toy_pool), str(work), CFG, world_size=1)


def test_work_dir_and_input_shards_must_not_overlap(toy_pool, reference, tmp_path):
    pool = tmp_path / "pool"
    shutil.copytree(toy_pool, pool)
    with pytest.raises(UserError, match="overlap"):
        captions.run(str(pool / "shards"), str(pool / "shards" / "work"), 0, 1)
    routed = str(WorkDir(reference).expert_shards_dir(0))  # an expert's routed shards as the input of its own work dir
    with pytest.raises(UserError, match="overlap"):
        captions.run(routed, str(reference), 0, 1)


def test_captions_are_cleaned_as_open_clips_tokenizer_cleans():
    """clean_caption is open_clip's basic_clean + whitespace_clean, written out so that caption workers never
    import torch; the two must agree on mojibake, nested HTML entities and every kind of whitespace."""
    import subprocess
    import sys

    from open_clip.tokenizer import basic_clean, whitespace_clean

    texts = ["  A photo\tof a\n\ncat  ", "caf\u00c3\u00a9 &amp;amp; cr\u00c3\u00a8me", "&lt;b&gt;bold&lt;/b&gt;",
             "non\u00a0breaking\u2003em\u3000ideographic", "", "   ", "\u201cquoted\u201d \u2014 dash", "x&amp;y"]
    for text in texts:
        assert captions.clean_caption(text) == whitespace_clean(basic_clean(text)), text
    res = subprocess.run([sys.executable, "-c", "import sys, mode.prep.captions; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_cleaning_none_keeps_the_caption_as_mode_embeds_it(tmp_path):
    """MoDE embeds the raw caption string (PRESET=mode: --cleaning none); blank ones are still skipped."""
    from collections import Counter

    from mode.core.shards import write_tar
    from mode.prep.pipeline import PRESETS

    raw = "Salt &amp; Pepper Shakers &#8211; Set of 2 "
    write_tar(tmp_path / "0.tar", [(f"{i}", {"txt": t.encode(), "json": json.dumps({"uid": f"{i:032x}"}).encode()})
                                   for i, t in enumerate([raw, "  \n", "caf\u00c3\u00a9"])])
    skipped = Counter()
    got = [c for _, _, c in captions.shard_captions(str(tmp_path / "0.tar"), skipped, "none")]
    assert got == [raw, "caf\u00c3\u00a9"] and skipped == {"no_caption": 1}
    assert [c for _, _, c in captions.shard_captions(str(tmp_path / "0.tar"), Counter())] == \
        ["Salt & Pepper Shakers \u2013 Set of 2", "caf\u00e9"]
    assert PRESETS["mode"]["cleaning"] == "none" and PRESETS["fast"]["cleaning"] == "open_clip"
    with pytest.raises(UserError, match="--cleaning 'ftfy'"):
        captions.run(str(tmp_path / "0.tar"), str(tmp_path / "w"), 0, 1, cleaning="ftfy")


def test_shards_done_with_other_parameters_on_other_shards_are_refused(toy_pool, tmp_path):
    """Captions with --cleaning none on two shards, then open_clip's on the other two: the second run found no
    record of its own shards and counted the first run's as complete beside its own."""
    pool = tmp_path / "pool"
    (pool / "a").mkdir(parents=True)
    (pool / "b").mkdir()
    src = sorted((toy_pool / "shards").glob("*.tar"))
    for i, p in enumerate(src):
        shutil.copy(p, pool / ("a" if i < 2 else "b") / p.name)
    work = tmp_path / "work"
    captions.run(str(pool / "a"), str(work), 0, 1, cleaning="none")
    with pytest.raises(UserError, match="holds outputs made with other parameters"):
        captions.run(str(pool / "b"), str(work), 0, 1)


def test_duplicate_keys_in_a_shard_are_one_sample(toy_pool, tmp_path):
    """Two samples of one key in a shard: the later is a counted skip in captions and route (route finds samples
    by key, and webdataset would read two of one key written side by side as one)."""
    src = sorted((toy_pool / "shards").glob("*.tar"))
    pool = tmp_path / "pool"
    pool.mkdir()
    for p in src[1:]:
        shutil.copy(p, pool / p.name)
    with tarfile.open(src[0]) as tin, tarfile.open(pool / src[0].name, "w") as tout:
        members = tin.getmembers()
        first = members[0].name.split(".")[0]
        for m in members + [m for m in members if m.name.split(".")[0] == first]:  # `first` again at the end
            tout.addfile(m, io.BytesIO(tin.extractfile(m).read()))
    work = tmp_path / "work"
    s = captions.run(str(pool), str(work), 0, 1)
    assert s["skipped"]["duplicate_key"] == 1
    embed.run(str(pool), str(work), rank=0, world_size=1)
    cluster.run(str(pool), str(work), CFG, world_size=1)
    assign.run(str(pool), str(work), 0, 1)
    r = route.run(str(pool), str(work), 0.0, 0, 0, 1)
    assert r["skipped"]["duplicate_key"] == 1 and sum(r["sizes"]) == s["kept"]
    routed = [k for k in range(CFG.coarse) for k, _ in iter_tar(WorkDir(work).expert_shard(k, src[0].stem))]
    assert routed.count(first) == 1


def test_bad_work_dir_files_and_environment_are_one_line(toy_pool, reference, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(reference, work)
    wd = WorkDir(work)
    feats = np.load(wd.features("00000003"))
    feats[0] = np.nan
    np.save(wd.features("00000003"), feats)
    (wd.assign_dir / "00000003.stats.json").unlink()
    with pytest.raises(UserError, match="00000003.npy has non-finite values"):
        assign.run(str(toy_pool), str(work), 0, 1)
    for path, value, message in ((WorkDir.summary(wd.captions_dir), "{}", "no 'shards_total'"),
                                 (WorkDir.summary(wd.clusters_dir), '{"step": "cluster"}', "no 'config'"),
                                 (wd.features_meta, "[1]", "not a features meta"),
                                 (WorkDir.summary(wd.captions_dir), '{"shards_total": 1', "summary")):
        saved = path.read_bytes()
        path.write_text(value)
        with pytest.raises(UserError, match=message):
            embed.run(str(toy_pool), str(work), rank=0, world_size=1) if path != WorkDir.summary(wd.clusters_dir) \
                else assign.run(str(toy_pool), str(work), 0, 1)
        path.write_bytes(saved)
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UserError, match="RANK='x' in the environment: expected an integer"):
        captions.run(str(toy_pool), str(tmp_path / "w2"))
    empty = tmp_path / "encoder"
    empty.mkdir()
    (empty / "README.md").write_text("not a model")
    with pytest.raises(UserError, match="cannot load encoder"):
        embed.load_encoder(str(empty), "cpu", "model")


def test_prep_checks_cluster_flags_paths_and_world_before_any_step(toy_pool, tmp_path):
    from ..conftest import PYTHON, run

    base = [PYTHON, "-m", "mode", "prep", "--shards", str(toy_pool / "shards"), "--work-dir", str(tmp_path / "w")]
    res = run([*base, "--fine", "2", "--coarse", "4"])
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr[-2000:]
    assert not (tmp_path / "w" / "captions").exists()  # refused before captions ran
    res = run([PYTHON, "-m", "mode", "prep", "--shards", str(toy_pool / "shards"), "--work-dir",
               str(toy_pool / "shards" / "w")])
    assert res.returncode == 2 and "overlap" in res.stderr and not (toy_pool / "shards" / "w").exists()
    res = run(base, env={**__import__("os").environ, "SLURM_PROCID": "0", "SLURM_NTASKS": "4"})
    assert res.returncode == 2 and "one process, but the environment says 4" in res.stderr, res.stderr[-2000:]


def test_embed_says_which_setting_differs(toy_pool, reference, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(reference, work)
    three = "::".join(str(p) for p in sorted((toy_pool / "shards").glob("*.tar"))[:3])
    with pytest.raises(UserError, match=r"features made with other --shards \(shards 4, now 3\)"):
        embed.run(three, str(work), rank=0, world_size=1)
