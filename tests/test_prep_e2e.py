"""The issue's acceptance run: `run_mode.sh prep-steps` on a 20k-pair toy pool; clusters must be the domains."""

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from mode.layout import Pool, WorkDir
from mode.toy import ensure_pool

from .conftest import REPO, run


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
