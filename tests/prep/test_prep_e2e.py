"""The issue's acceptance run: `run_mode.sh prep-steps` on a 20k-pair toy pool; clusters must be the domains."""

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mode.core.layout import Pool, WorkDir
from mode.toy.pool import ensure_pool

from ..conftest import REPO, run


def purity(pairs: list[tuple[int, str]]) -> float:
    """Share of pairs whose cluster's majority label is their own label."""
    by_cluster: dict[int, Counter] = {}
    for cluster, label in pairs:
        by_cluster.setdefault(cluster, Counter())[label] += 1
    return sum(c.most_common(1)[0][1] for c in by_cluster.values()) / len(pairs)


def test_purity_helper():
    assert purity([(0, "a"), (0, "a"), (0, "b"), (1, "b")]) == 0.75


def test_prep_steps_cluster_the_toy_domains(tmp_path):
    pool = tmp_path / "pool"
    ensure_pool(str(pool), samples=20000, shards=16, workers=2)
    work = tmp_path / "work"
    res = run(["bash", str(REPO / "run_mode.sh"), "prep-steps", str(pool), str(work)],
              env={"FINE": "64", "COARSE": "3", "WORKERS": "2", "OOC_RATIO": "0.02"})
    assert res.returncode == 0, res.stderr[-3000:]
    wd = WorkDir(work)
    meta = pa.concat_tables([pq.read_table(p) for p in sorted(Pool(pool).metadata_dir.glob("*.parquet"))])
    truth = dict(zip(meta.column("uid").to_pylist(), zip(meta.column("toy_domain").to_pylist(),
                                                          meta.column("toy_noise").to_pylist())))
    pairs = []
    for p in sorted(wd.assign_dir.glob("*.parquet")):
        t = pq.read_table(p, columns=["uid", "coarse"]).to_pydict()
        pairs += [(c, truth[u]) for u, c in zip(t["uid"], t["coarse"])]
    assert len(pairs) == sum(meta.column("toy_downloaded").to_pylist()) >= 19000
    assert purity([(c, dom) for c, (dom, _) in pairs]) >= 0.9
    assert purity([(c, dom) for c, (dom, noise) in pairs if noise == "clean"]) >= 0.99
    routed = 0
    for k in range(3):
        sizes = json.loads((wd.expert_shards_dir(k) / "sizes.json").read_text())
        assert len(sizes) == 16
        routed += sum(sizes.values())
    # out-of-cluster pairs are 2% of each expert's data (rounded per shard)
    assert abs(routed - len(pairs) / 0.98) <= 3 * 16


def test_mode_preset_runs_modes_choices(toy_pool, tmp_path):
    """PRESET=mode: pooler-output embeddings, balanced Euclidean k-means at both levels on a share of the shards,
    out-of-cluster pairs added as r x the others (offline with the packaged encoder in SimCSE's place)."""
    work = tmp_path / "work"
    res = run(["bash", str(REPO / "run_mode.sh"), "prep-steps", str(toy_pool), str(work)],
              env={"PRESET": "mode", "ENCODER": "all-MiniLM-L6-v2", "FINE": "8", "COARSE": "3",
                   "SAMPLE_SHARDS": "0.5", "OOC_RATIO": "0.1", "WORKERS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    wd = WorkDir(work)
    assert json.loads(wd.features_meta.read_text())["pooling"] == "pooler"
    summary = json.loads((wd.clusters_dir / "summary.json").read_text())
    config = summary["config"]
    assert (config["balance"], config["metric"], config["sample_shards"]) == (True, "euclidean", 0.5)
    n = summary["sampled"]
    assert summary["features"] > n and sorted(set(summary["fine_sizes"])) in ([n // 8], [n // 8, n // 8 + 1])
    assert sorted(Counter(np.load(wd.fine_to_coarse).tolist()).values()) == [2, 3, 3]
    route = json.loads((wd.route_dir / "summary.json").read_text())
    assert route["params"]["ooc_mode"] == "additive"
    coarse = np.concatenate([pq.read_table(p, columns=["coarse"]).column("coarse").to_numpy()
                             for p in sorted(wd.assign_dir.glob("*.parquet"))])
    for k in range(3):  # about r x the other clusters' pairs, per shard (int() rounds down)
        assert 0 <= 0.1 * np.sum(coarse != k) - route["out_of_cluster"][k] <= 4
    bad = run(["bash", str(REPO / "run_mode.sh"), "prep-steps", str(toy_pool), str(tmp_path / "w2")],
              env={"PRESET": "metaclip"})
    assert bad.returncode == 2 and "--preset: invalid choice: 'metaclip'" in bad.stderr
