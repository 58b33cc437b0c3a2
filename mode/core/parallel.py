"""Worker processes, made one way everywhere: spawned (a child forked from a parent that already ran torch,
faiss or OpenMP threads can hang in its first parallel region) and each given its share of the cores."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor


def _share_cores(workers: int) -> None:
    """In a fresh worker, before torch/faiss load: its share of the cores for their thread pools.

    Without it each worker starts one OpenMP thread per core: workers x cores threads compete for the cores
    (`mode dr-generate --workers 2` on 2 cores, 800 samples: 27.1 s with 2 threads per worker, 22.5 s with 1).
    """
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, threads)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` spawned processes that share the cores."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_share_cores,
                               initargs=(workers,))


def pool_map(fn, items: list, workers: int = 1) -> Iterator:
    """`map(fn, items)` in order, over `workers` processes when more than one (fn and items must pickle)."""
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    with process_pool(min(workers, len(items))) as ex:
        yield from ex.map(fn, items)
