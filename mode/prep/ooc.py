"""Out-of-cluster mixing: how many pairs of other clusters an expert also trains on (`--ooc-ratio r`).

Two meanings of r, one place for both (`mode route` and the on-the-fly expert loader use these functions):

- `share` (this project's default): out-of-cluster pairs make up a share r of the expert's data, so every
  expert has the same mix whatever its size (r = 0.02: 2 in 100 of its pairs come from other clusters).
- `additive` (MoDE's loader, MetaCLIP `mode_wds.py`): per shard, r times the shard's pairs of the other
  clusters are added, `int(n_out * r)` of them; the share then grows as the expert gets smaller.
"""

from __future__ import annotations

from mode.core.errors import UserError

OOC_MODES = ("share", "additive")


def check(ratio: float, mode: str) -> None:
    if mode not in OOC_MODES:
        raise UserError(f"--ooc-mode {mode!r}: expected one of {', '.join(OOC_MODES)}")
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"--ooc-ratio {ratio}: expected a fraction in [0, 1)")


def count(n_in: int, n_out: int, ratio: float, mode: str) -> int:
    """How many of a shard's `n_out` out-of-cluster pairs join its `n_in` in-cluster pairs."""
    if ratio <= 0 or n_out <= 0:
        return 0
    if mode == "additive":
        return int(n_out * ratio)
    return min(n_out, int(round(n_in * ratio / (1 - ratio))))


def keep_rate(n_in: int, n_out: int, ratio: float, mode: str) -> float:
    """The probability to keep each out-of-cluster pair met while streaming (pool totals n_in, n_out)."""
    if ratio <= 0 or n_out <= 0:
        return 0.0
    if mode == "additive":
        return ratio
    return min(1.0, ratio / (1 - ratio) * n_in / n_out)


def expected_size(n_in: int, n_out: int, ratio: float, mode: str) -> int:
    """The expert's pairs per pass over the pool: its own plus the out-of-cluster ones kept."""
    return n_in + int(round(n_out * keep_rate(n_in, n_out, ratio, mode)))
