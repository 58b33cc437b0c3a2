"""Where each artifact lives: the one place that knows the on-disk layout (see DESIGN.md, On-disk contracts).

Steps ask these classes for paths and never build path strings themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
        return self.shards_dir / f"{shard_name(index)}_stats.json"

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
