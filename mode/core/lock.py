"""Advisory locks: one run at a time per work dir step, output folder or training run.

`holding(folder, name)` takes an exclusive `flock` on `<folder>/.lock-<name>` and writes the holder's pid, host
and start time into it; a second run that asks for the same lock while the first holds it gets a UserError
naming the holder. The kernel drops the lock when its process ends, however it ends (kill -9 included), so a
stale lock file never blocks anyone. Locks over NFS depend on the file system's flock support.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mode.core.errors import UserError

_held: dict[str, int] = {}  # locks taken for the life of this process (training runs)


def acquire(folder: str | os.PathLike, name: str, what: str, wait: bool = False) -> int:
    """Take the lock, or raise UserError naming the run that holds it (`wait`: block until it is free); returns
    the lock's file descriptor."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / f".lock-{name}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as e:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise UserError(f"another {what} is running on {folder} ({holder}); wait for it or stop it")
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
              .encode(), 0)
    return fd


def release(fd: int) -> None:
    os.close(fd)  # closing the descriptor drops the flock


@contextmanager
def holding(folder: str | os.PathLike, name: str, what: str, wait: bool = False) -> Iterator[None]:
    """`with holding(dir, "cluster", "`mode cluster`"):` the body runs while no other run holds that lock."""
    fd = acquire(folder, name, what, wait)
    try:
        yield
    finally:
        release(fd)


def hold_for_process(folder: str | os.PathLike, name: str, what: str) -> None:
    """Take a lock until this process ends (a training run: open_clip_train's main runs to the end)."""
    key = str(Path(folder).resolve() / name)
    if key not in _held:
        _held[key] = acquire(folder, name, what)


@contextmanager
def params_claim(folder: str | os.PathLike, digest: str, what: str,
                 on_change: Callable[[], None] | None = None) -> Iterator[None]:
    """Run the body while no run with other parameters uses `folder` (a step's outputs), however the runs split
    it into ranks. Each run holds a shared flock on `<folder>/.lock-users` for its whole life; the parameters
    (`digest`) go in `<folder>/.params`. Setting other parameters needs that lock exclusively, so it fails while a
    run of the old ones is alive (a UserError), and `on_change` (e.g. refuse, or drop outputs of the old ones)
    runs only then. A brief exclusive flock on `<folder>/.lock-params` makes each check-and-set whole, so ranks
    of one run starting together all find the parameters the first one wrote."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    params = Path(folder) / ".params"
    users = os.open(Path(folder) / ".lock-users", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with holding(folder, "params", what, wait=True):
            if params.exists() and params.read_text() == digest:
                fcntl.flock(users, fcntl.LOCK_SH)
            else:
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                        raise
                    raise UserError(f"another {what} with other parameters is running on {folder}; wait for it "
                                    "or stop it") from None
                if on_change:
                    on_change()
                tmp = params.with_name(f".params.{os.getpid()}")
                tmp.write_text(digest)
                os.replace(tmp, params)
                fcntl.flock(users, fcntl.LOCK_SH)
        yield
    finally:
        os.close(users)
