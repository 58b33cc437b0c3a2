"""DataComp uids: 32 hex characters <-> a `u8,u8` pair, sorted subset files, and vectorised lookup.

DataComp stores a subset as a `.npy` of dtype `u8,u8` (field f0 = the first 16 hex digits as an unsigned
64-bit integer, f1 = the last 16), sorted; its resharder and leaderboard read exactly that.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from mode.core.errors import UserError, reading

UID_DTYPE = np.dtype("u8,u8")
_UID = re.compile(r"[0-9a-f]{32}")  # used with fullmatch: `$` would let a trailing newline through


class NoUid(ValueError):
    """A sample without a usable uid; `reason` is `bad_json` (undecodable json member) or `no_uid`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def sample_uid(members: Mapping) -> str:
    """The uid in a sample's json member (DataComp's 32 hex characters, lower case), or raise NoUid."""
    raw = members.get("json")
    if raw is None:
        raise NoUid("no_uid")
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise NoUid("bad_json") from None
    uid = str(meta.get("uid", "")).lower() if isinstance(meta, dict) else ""
    if not _UID.fullmatch(uid):
        raise NoUid("no_uid")
    return uid


def hex_to_pairs(uids: Sequence[str]) -> np.ndarray:
    """`u8,u8` array of the uids, in the given order; a uid that is not 32 hex characters is a ValueError."""
    if len(uids) == 0:
        return np.zeros(0, UID_DTYPE)
    joined = "".join(uids)
    if len(joined) != 32 * len(uids):
        raise ValueError("every uid must have 32 hex characters")
    words = np.frombuffer(bytes.fromhex(joined), dtype=">u8").reshape(-1, 2)
    out = np.empty(len(uids), UID_DTYPE)
    out["f0"], out["f1"] = words[:, 0], words[:, 1]
    return out


def pairs_to_hex(pairs: np.ndarray) -> list[str]:
    """The 32-hex-character uids of a `u8,u8` array."""
    words = np.stack([pairs["f0"], pairs["f1"]], axis=1).astype(">u8")
    raw = words.tobytes().hex()
    return [raw[i:i + 32] for i in range(0, len(raw), 32)]


def sort_pairs(pairs: np.ndarray) -> np.ndarray:
    """Sorted as DataComp sorts a subset: by f0, then f1."""
    return pairs[np.lexsort((pairs["f1"], pairs["f0"]))]


def save_subset(path: str, pairs: np.ndarray) -> None:
    """Write a sorted `u8,u8` subset `.npy` (duplicates kept: the resharder writes a uid n times if listed n times)."""
    from mode.core.shards import atomic_write

    with atomic_write(path) as f:
        np.save(f, sort_pairs(np.asarray(pairs, dtype=UID_DTYPE)))


def load_subset(path: str) -> np.ndarray:
    """Read a subset: a `.npy`, or a raw memmap of uids as DataComp's resharder also takes; `u8,u8` and sorted."""
    with reading(path, "uid subset .npy"):
        with open(path, "rb") as f:
            npy = f.read(6) == b"\x93NUMPY"
        if not npy and os.path.getsize(path) % UID_DTYPE.itemsize:
            raise UserError(f"{path}: neither a .npy nor a raw array of 16-byte uids")
        arr = np.load(path, mmap_mode="r") if npy else np.memmap(path, UID_DTYPE, mode="r")
    if arr.dtype != UID_DTYPE:
        raise UserError(f"{path}: dtype {arr.dtype}, expected u8,u8 (DataComp's uid format)")
    if not is_sorted(arr):
        raise UserError(f"{path}: uids are not sorted (DataComp subsets are sorted by f0, then f1)")
    return arr


def is_sorted(pairs: np.ndarray) -> bool:
    a, b = pairs["f0"], pairs["f1"]
    return bool(np.all((a[1:] > a[:-1]) | ((a[1:] == a[:-1]) & (b[1:] >= b[:-1]))))


class UidSet:
    """Membership of uids in a sorted `u8,u8` array, by binary search (no Python set of strings)."""

    def __init__(self, pairs: np.ndarray):
        pairs = sort_pairs(np.asarray(pairs, dtype=UID_DTYPE))
        self.hi = np.ascontiguousarray(pairs["f0"])
        self.lo = np.ascontiguousarray(pairs["f1"])

    def __len__(self) -> int:
        return len(self.hi)

    def contains(self, queries: np.ndarray) -> np.ndarray:
        """Boolean mask: which of the `u8,u8` queries are in the set."""
        queries = np.asarray(queries, dtype=UID_DTYPE)
        left = np.searchsorted(self.hi, queries["f0"], side="left")
        right = np.searchsorted(self.hi, queries["f0"], side="right")
        found = np.zeros(len(queries), bool)
        single = right - left == 1  # the common case: f0 alone identifies the candidate
        idx = left[single]
        found[single] = self.lo[idx] == queries["f1"][single]
        for i in np.flatnonzero(right - left > 1):  # f0 shared by several uids: search their f1 range
            j = left[i] + np.searchsorted(self.lo[left[i]:right[i]], queries["f1"][i])
            found[i] = j < right[i] and self.lo[j] == queries["f1"][i]
        return found

    def positions(self, queries: np.ndarray) -> np.ndarray:
        """Index of each query in the sorted set (the first, for repeated uids), or -1 when absent."""
        queries = np.asarray(queries, dtype=UID_DTYPE)
        left = np.searchsorted(self.hi, queries["f0"], side="left")
        out = np.full(len(queries), -1, np.int64)
        for i in np.flatnonzero(self.contains(queries)):
            right = np.searchsorted(self.hi, queries["f0"][i], side="right")
            out[i] = left[i] + np.searchsorted(self.lo[left[i]:right], queries["f1"][i])
        return out

    def position(self, uid: str) -> int:
        """`positions` for one hex uid, without building arrays (per-sample loops); ValueError if malformed."""
        if len(uid) != 32:
            raise ValueError("a uid must have 32 hex characters")
        hi, lo = np.uint64(int(uid[:16], 16)), np.uint64(int(uid[16:], 16))
        left, right = self.hi.searchsorted(hi, "left"), self.hi.searchsorted(hi, "right")
        if right - left == 1:  # the common case: f0 alone identifies the candidate
            return int(left) if self.lo[left] == lo else -1
        j = left + self.lo[left:right].searchsorted(lo)
        return int(j) if j < right and self.lo[j] == lo else -1

    def __contains__(self, uid: str) -> bool:
        return bool(self.contains(hex_to_pairs([uid]))[0])
