"""Shard lists, rank splits, sample counts and atomic writes: the plumbing every step shares.

A shard spec is what users type after `--shards`, `--data-dir` or `--train-data`: one or more parts joined
by `::` (DataComp's separator), each part a directory, a brace pattern (`dir/{00000000..00000127}.tar`) or
one `.tar` path.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import braceexpand

from mode.core.errors import UserError

_DIGITS_AT_END = re.compile(r"^(.*?)(\d+)$")
_UMASK = os.umask(0)
os.umask(_UMASK)


def natural_key(text: str) -> list:
    """Sort key that orders `shard2` before `shard10`."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def expand(spec: str) -> list[str]:
    """Expand a shard spec into shard paths, in order, without duplicates.

    Args:
        spec: parts joined by `::`; a part is a directory, a brace pattern or a `.tar` path.

    Returns:
        The shard paths. A directory contributes its tars in natural order (see `tars_in_dir`).

    Raises:
        UserError: a part names nothing, or a brace pattern names files that do not exist.
    """
    paths: list[str] = []
    for part in str(spec).split("::"):
        part = part.strip()
        if not part:
            continue
        if os.path.isdir(part):
            paths.extend(tars_in_dir(part))
            continue
        try:
            expanded = list(braceexpand.braceexpand(part))
        except braceexpand.UnbalancedBracesError:
            raise UserError(f"shard spec part {part!r}: unbalanced braces (a pattern looks like "
                            "dir/{00000000..00000099}.tar)") from None
        if expanded == [part] and not os.path.exists(part):
            raise UserError(f"shard spec part {part!r}: no such directory or file")
        missing = [p for p in expanded if not os.path.isfile(p)]
        if missing:
            raise UserError(f"shard spec part {part!r}: {len(missing)} of {len(expanded)} files missing "
                            f"(first: {missing[0]})")
        paths.extend(expanded)
    if not paths:
        raise UserError(f"no shards found in {spec!r} (expected a directory of .tar files, a brace pattern "
                        "or .tar paths, joined by '::')")
    unique = {}  # one shard named two ways (relative and absolute, with `..`) is one shard; a link stays its own
    for p in paths:
        unique.setdefault(os.path.abspath(p), p)
    return list(unique.values())


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Whether a checkpoint file is whole: torch saves a zip, whose central directory is written last."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def overlaps(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two folders are one, or one lies inside the other (after resolving links and `..`)."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a in b.parents or b in a.parents


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # the image members of a pool sample, in preference order
RESHARD_MARKER = ".mode-reshard"  # `mode reshard` writes it first and meta.json last


def tars_in_dir(directory: str) -> list[str]:
    """The shards of one directory, with DataComp's rules for finding them.

    In order of precedence: a resharder `meta.json` (`output_shard_count`, `output_shard_format`) names them;
    else the directory's own `*.tar` files; else its `shards/` folder (the DataComp pool layout); else every
    subdirectory, recursively, as DataComp's train.py does.
    """
    meta_path = os.path.join(directory, "meta.json")
    if os.path.exists(os.path.join(directory, RESHARD_MARKER)) and not os.path.isfile(meta_path):
        raise UserError(f"{directory} is an unfinished `mode reshard` output (no meta.json: it was stopped "
                        "before the end); run the reshard again")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if "output_shard_count" in meta and "output_shard_format" in meta:
            fmt = meta["output_shard_format"]
            return [os.path.join(directory, fmt.format(i)) for i in range(int(meta["output_shard_count"]))]
    entries = sorted(os.listdir(directory), key=natural_key)
    tars = [os.path.join(directory, e) for e in entries if e.endswith(".tar")]
    if tars:
        return tars
    if os.path.isdir(os.path.join(directory, "shards")):
        return tars_in_dir(os.path.join(directory, "shards"))
    found: list[str] = []
    for e in entries:
        sub = os.path.join(directory, e)
        if os.path.isdir(sub):
            found.extend(tars_in_dir(sub))
    return found


def brace_spec(paths: Iterable[str]) -> str:
    """Compress shard paths into the shortest `::`-joined list of brace ranges that names exactly them.

    Paths that share a directory, prefix, digit width and extension and whose numbers are consecutive
    become one `prefix{first..last}.ext` range; the order of first appearance is kept.
    """
    runs: list[list] = []  # [stem_prefix, width, ext, first, last]
    for p in paths:
        stem, ext = os.path.splitext(p)
        m = _DIGITS_AT_END.match(stem)
        if not m:
            runs.append([stem, 0, ext, None, None])
            continue
        prefix, digits = m.group(1), m.group(2)
        n, width = int(digits), len(digits)
        last = runs[-1] if runs else None
        if last and last[3] is not None and last[:3] == [prefix, width, ext] and n == last[4] + 1:
            last[4] = n
        else:
            runs.append([prefix, width, ext, n, n])
    parts = []
    for prefix, width, ext, first, last in runs:
        if first is None:
            parts.append(prefix + ext)
        elif first == last:
            parts.append(f"{prefix}{first:0{width}d}{ext}")
        else:
            parts.append(f"{prefix}{{{first:0{width}d}..{last:0{width}d}}}{ext}")
    return "::".join(parts)


def _dir_sizes(directory: str) -> dict:
    """A shard folder's `sizes.json` ({"<shard>.tar": samples}), {} if it has none."""
    path = os.path.join(directory, "sizes.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def shard_size(path: str, sizes: dict | None = None) -> int | None:
    """Samples in one shard, from its directory's `sizes.json` (or `sizes`, that file already read) or its own
    `<stem>_stats.json`; None if unknown."""
    directory, name = os.path.split(path)
    sizes = _dir_sizes(directory) if sizes is None else sizes
    if name in sizes:
        return int(sizes[name])
    stats_path = tar_stats(path)
    if os.path.isfile(stats_path):
        with open(stats_path) as f:
            stats = json.load(f)
        if "successes" in stats:
            return int(stats["successes"])
    return None


def shard_sizes(paths: Iterable[str]) -> list[int] | None:
    """`shard_size` of each shard, or None as soon as one is unknown. Each folder's `sizes.json` is read once (a
    DataComp pool has up to a million shards in one folder)."""
    sizes, per_dir = [], {}
    for p in paths:
        directory = os.path.dirname(p)
        if directory not in per_dir:
            per_dir[directory] = _dir_sizes(directory)
        n = shard_size(p, per_dir[directory])
        if n is None:
            return None
        sizes.append(n)
    return sizes


def total_samples(paths: Iterable[str]) -> int | None:
    """Sum of `shard_size` over the shards, or None if one shard's size is unknown."""
    sizes = shard_sizes(paths)
    return None if sizes is None else sum(sizes)


def for_rank(shards: list[str], rank: int, world_size: int) -> list[str]:
    """The shards of one rank: sorted naturally, then every `world_size`-th starting at `rank`.

    Every shard goes to exactly one rank whatever the world size; outputs are named by shard, so a rerun
    with another world size reuses them.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is not in a world of size {world_size}")
    if not shards:
        raise UserError("no shards to split over ranks")
    return sorted(shards, key=natural_key)[rank::world_size]


def tar_stats(tar: str | os.PathLike) -> Path:
    """img2dataset's per-shard stats file beside a tar: `<dir>/<stem>_stats.json` (its `successes` is the
    shard's sample count; every tool here that writes shards writes one)."""
    tar = Path(tar)
    return tar.with_name(f"{tar.name.removesuffix('.tar')}_stats.json")


def write_tar_stats(tar: str | os.PathLike, count: int) -> None:
    """The stats file of a tar this tool wrote: `count` samples, all successes."""
    write_json(tar_stats(tar), {"count": count, "successes": count})


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temp file beside `path`; on success rename it onto `path`, on error remove it.

    A reader never sees a partial file and a killed writer leaves only a `.tmp-*` file, never `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:  # not the locale's
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically, keys sorted, so equal content gives equal bytes."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


class TarSink:
    """Appends samples to an open tar; members get a fixed mtime, owner and mode, so output is reproducible."""

    def __init__(self, tar: tarfile.TarFile):
        self._tar = tar
        self.count = 0
        self.ends: list[int] = []  # the byte offset where each sample's members end (its start: the previous end)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        tar = self._tar
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uname = info.gname = ""
            # what TarFile.addfile writes (header, data, zero padding to a block), without its copy through a
            # BytesIO and without keeping every TarInfo in memory; TarFile.close pads from `offset` as usual
            header, pad = info.tobuf(tar.format, tar.encoding, tar.errors), -len(data) % tarfile.BLOCKSIZE
            tar.fileobj.write(header)
            tar.fileobj.write(data)
            tar.fileobj.write(b"\0" * pad)
            tar.offset += len(header) + len(data) + pad
        self.count += 1
        self.ends.append(tar.offset)


@contextmanager
def tar_writer(path: str | os.PathLike) -> Iterator[TarSink]:
    """Write a webdataset shard atomically: the tar appears at `path` only once complete."""
    with atomic_write(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        yield TarSink(tar)


def concat_tar(path: str | os.PathLike, ranges: Iterable[tuple[str | os.PathLike, int, int]]) -> None:
    """Write a tar made of byte ranges of tars `TarSink` wrote (whole samples: from one sample's start to another's
    end), closed as tarfile closes one; the result equals writing those samples with `write_tar`, byte for byte,
    without decoding them (the kernel copies the bytes where it can)."""
    with atomic_write(path, "wb") as out:
        size = 0
        for src, start, end in ranges:
            with open(src, "rb") as f:
                left, pos = end - start, start
                while left > 0:
                    try:
                        out.flush()
                        n = os.copy_file_range(f.fileno(), out.fileno(), left, pos)
                    except (AttributeError, OSError):  # no copy_file_range here: copy through user space
                        f.seek(pos)
                        data = f.read(left)
                        out.write(data)
                        n = len(data)
                    if n == 0:
                        raise OSError(f"{src} ends before byte {end}")
                    out.seek(0, os.SEEK_END)
                    left, pos, size = left - n, pos + n, size + n
        tail = 2 * tarfile.BLOCKSIZE  # end of archive, then padding to a whole record, as TarFile.close writes
        tail += -(size + tail) % tarfile.RECORDSIZE
        out.write(b"\0" * tail)


def write_tar(path: str | os.PathLike, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    """Write `(key, {extension: bytes})` samples as a webdataset shard (see `tar_writer`); returns the count."""
    with tar_writer(path) as sink:
        for key, members in samples:
            sink.write(key, members)
    return sink.count


def split_member_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name, the rest is the extension."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower() if dot else ""


def iter_tar(path: str | os.PathLike, errors: Counter | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream the samples of a webdataset shard as `(key, {extension: bytes})`, in tar order.

    Members of one sample are consecutive (webdataset's convention). A truncated or corrupt tar ends the
    stream after the last complete sample and counts one `truncated_tar` (or `unreadable_tar` when nothing
    could be read) in `errors`; it never raises. An uncompressed tar cut exactly between two members reads
    without error, so it must end with tar's end-of-archive marker (two zero blocks) or it counts as truncated.
    """
    errors = errors if errors is not None else Counter()
    key, members = None, {}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                k, ext = split_member_name(info.name)
                data = tar.extractfile(info).read()
                if k != key and members:
                    yield key, members
                    members = {}
                key = k
                members[ext] = data
            whole = getattr(tar.fileobj, "comptype", "tar") != "tar" or _ends_with_marker(path, tar.offset)
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        errors["unreadable_tar" if key is None else "truncated_tar"] += 1
        return  # the sample being read when the tar broke is incomplete: drop it
    if not whole:
        errors["truncated_tar"] += 1
        return  # the last sample may miss members that were cut off
    if members:
        yield key, members


def _ends_with_marker(path: str | os.PathLike, offset: int) -> bool:
    """Whether the two zero blocks that end a tar archive follow its last member at `offset`."""
    with open(path, "rb") as f:
        f.seek(offset)
        tail = f.read(2 * tarfile.BLOCKSIZE)
    return len(tail) == 2 * tarfile.BLOCKSIZE and not tail.strip(b"\0")


def shard_ids(paths: list[str]) -> dict[str, str]:
    """A distinct name for each shard's outputs: its stem; `<parent>-<stem>` where stems repeat across folders;
    `<parent>-<hash of the parent's path>-<stem>` where that repeats too (two DataComp pools joined by `::`
    both have `shards/00000000.tar`)."""
    stems = Counter(Path(p).stem for p in paths)
    named = {p: (Path(p).stem if stems[Path(p).stem] == 1 else f"{Path(p).parent.name}-{Path(p).stem}")
             for p in paths}
    again = Counter(named.values())
    for p, name in named.items():
        if again[name] > 1:
            parent = Path(p).resolve().parent
            named[p] = f"{parent.name}-{hashlib.sha1(str(parent).encode()).hexdigest()[:8]}-{Path(p).stem}"
    return named


# The variables open_clip_train.distributed.world_info_from_env reads, in its order. Read here rather than through
# it: that module imports torch (a second and 600 MB per process), which the data steps never need.
_RANK_VARS = ("RANK", "PMI_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")
_WORLD_VARS = ("WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's rank and the world size: the flags if given, else torchrun's, MPI's or SLURM's environment
    (the first variable set of each list, as open_clip_train reads them)."""
    if rank is None:
        rank = next((_env_int(v) for v in _RANK_VARS if v in os.environ), 0)
    if world_size is None:
        world_size = next((_env_int(v) for v in _WORLD_VARS if v in os.environ), 1)
    return rank, world_size


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise UserError(f"{name}={os.environ[name]!r} in the environment: expected an integer (a rank or world "
                        "size from torchrun/SLURM)") from None
