"""Where each artifact lives: the one place that knows the on-disk layout (docs/ARCHITECTURE.md, On-disk contracts).

Steps ask these classes for paths and never build path strings themselves.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from mode.core.errors import reading
from mode.core.shards import tar_stats


def shard_name(index: int) -> str:
    """DataComp's shard stem: eight zero-padded digits."""
    return f"{index:08d}"


@dataclass(frozen=True)
class Pool:
    """A pool in the DataComp layout (what download_upstream makes and the toy pool mimics)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def metadata_dir(self) -> Path:
        return self.root / "metadata"

    @property
    def eval_tasks_dir(self) -> Path:
        return self.root / "eval_tasks"

    def shard(self, index: int) -> Path:
        return self.shards_dir / f"{shard_name(index)}.tar"

    def shard_stats(self, index: int) -> Path:
        return tar_stats(self.shard(index))

    def metadata(self, stem: str, ext: str = "parquet") -> Path:
        return self.metadata_dir / f"{stem}.{ext}"

    @property
    def toy_record(self) -> Path:
        """The toy generator's record of what it made (parameters, counts per domain and noise kind)."""
        return self.root / "toy.json"


@dataclass(frozen=True)
class EvalTask:
    """One evaluation task in the clip_benchmark webdataset format that DataComp uses."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def classnames(self) -> Path:
        return self.root / "classnames.txt"

    @property
    def templates(self) -> Path:
        return self.root / "zeroshot_classification_templates.txt"

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    @property
    def nshards(self) -> Path:
        return self.test_dir / "nshards.txt"

    def shard(self, index: int) -> Path:
        return self.test_dir / f"{index}.tar"


@dataclass(frozen=True)
class WorkDir:
    """One clustering run's work dir: every step reads the previous step's artifact here and writes its own.

    Per-shard steps write `<step>/<shard id>.<ext>` and then `<step>/<shard id>.stats.json` (the completion
    marker, written last), and end with `<step>/summary.json`.
    """

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # step 0: captions
    @property
    def captions_dir(self) -> Path:
        return self.root / "captions"

    def captions(self, shard_id: str) -> Path:
        return self.captions_dir / f"{shard_id}.parquet"

    # step 1: caption embeddings
    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    def features(self, shard_id: str) -> Path:
        return self.features_dir / f"{shard_id}.npy"

    @property
    def features_meta(self) -> Path:
        return self.features_dir / "meta.json"

    # step 2: clusters
    @property
    def clusters_dir(self) -> Path:
        return self.root / "clusters"

    @property
    def fine_centroids(self) -> Path:
        return self.clusters_dir / "fine.npy"

    @property
    def coarse_centroids(self) -> Path:
        return self.clusters_dir / "coarse.npy"

    @property
    def fine_to_coarse(self) -> Path:
        return self.clusters_dir / "fine_to_coarse.npy"

    def clustering_id(self) -> str:
        """Which clustering a report or a training protocol used: sha256 of the fine centroids and their map."""
        digest = hashlib.sha256()
        for path in (self.fine_centroids, self.fine_to_coarse):
            with reading(path, "clustering (.npy)"):
                digest.update(path.read_bytes())
        return digest.hexdigest()

    # step 3: assignment
    @property
    def assign_dir(self) -> Path:
        return self.root / "assign"

    def assignment(self, shard_id: str) -> Path:
        return self.assign_dir / f"{shard_id}.parquet"

    # route: per-expert shards
    @property
    def experts_dir(self) -> Path:
        return self.root / "experts"

    def expert_shards_dir(self, expert: int) -> Path:
        return self.experts_dir / str(expert) / "shards"

    def expert_shard(self, expert: int, shard_id: str) -> Path:
        return self.expert_shards_dir(expert) / f"{shard_id}.tar"

    @property
    def route_dir(self) -> Path:
        """Route's per-shard stats and summary (the tars live under experts/<k>/shards)."""
        return self.experts_dir / "route"

    # shared by every step
    @staticmethod
    def stats(step_dir: Path, shard_id: str) -> Path:
        return step_dir / f"{shard_id}.stats.json"

    @staticmethod
    def summary(step_dir: Path) -> Path:
        return step_dir / "summary.json"
