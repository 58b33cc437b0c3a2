"""Resharding: `mode reshard` vs copying the same samples with plain `tarfile`, each run in its own process.

    python benchmarks/reshard_bench.py [--samples 20000] [--shards 16] [--subset basic_filter] [--shard-size 1000]

One toy pool; the subset is DataComp's basic_filter over its metadata (or `--subset half`: a seeded random half
of the uids). Ours is `mode.datacomp.reshard.run` with 1 and 2 worker processes. The baseline is what one would
write by hand: read the input tars in order with `tarfile`, keep a sample's members when the uid in its json is in a
Python set, and append them to output tars of the same shard size. Both must write the same samples (the
script compares the uids of the outputs) before it prints samples/s, the ratio ours/baseline and peak RSS.
Each variant runs `--repeats` times, alternating; the best time counts.
"""

import argparse
import hashlib
import io
import json
import resource
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from common import Timer, in_child, peak_rss_mb, report


def plain_tarfile(inputs: list[str], out: Path, subset: str, shard_size: int) -> int:
    """The baseline: stream each input tar, keep the samples whose json uid is in the subset, repack them."""
    from mode.core.uids import pairs_to_hex

    keep = set(pairs_to_hex(np.load(subset)))
    out.mkdir(parents=True)
    state = {"tar": None, "in_shard": 0, "shards": 0, "written": 0}

    def flush(members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        data = {m.name.rsplit(".", 1)[-1]: b for m, b in members}
        if "json" not in data or json.loads(data["json"]).get("uid") not in keep:
            return
        if state["tar"] is None or state["in_shard"] == shard_size:
            if state["tar"] is not None:
                state["tar"].close()
            state["tar"] = tarfile.open(out / f"{state['shards']:08d}.tar", "w")
            state["shards"], state["in_shard"] = state["shards"] + 1, 0
        for info, blob in members:
            state["tar"].addfile(info, io.BytesIO(blob))
        state["in_shard"] += 1
        state["written"] += 1

    for path in inputs:
        with tarfile.open(path, "r") as tar:
            key, members = None, []
            for info in tar:
                if not info.isfile():
                    continue
                k = info.name.split(".", 1)[0]
                if k != key and members:
                    flush(members)
                    members = []
                key = k
                members.append((info, tar.extractfile(info).read()))
            if members:
                flush(members)
    if state["tar"] is not None:
        state["tar"].close()
    return state["written"]


def own_peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). `ru_maxrss` also counts the parent's RSS at the fork before exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def child(side: str, pool: str, out: str, subset: str, shard_size: int, workers: int) -> None:
    from mode.core.uids import pairs_to_hex  # noqa: F401  (imported before timing, as reshard's own imports are)
    from mode.datacomp import reshard

    with Timer() as t:
        if side == "ours":
            samples = reshard.run(pool, out, subset, shard_size=shard_size, workers=workers)["samples"]
        else:
            inputs = sorted(str(p) for p in (Path(pool) / "shards").glob("*.tar"))
            samples = plain_tarfile(inputs, Path(out), subset, shard_size)
    report(seconds=round(t.seconds, 3), samples=samples, own_peak_rss_mb=round(own_peak_rss_mb(), 1),
           workers_peak_rss_mb=round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1))


def setup(pool: str, subset: str, samples: int, shards: int, kind: str) -> None:
    """Build the toy pool and the subset in a process of its own, so the measuring parent stays small."""
    from mode.toy.pool import ensure_pool

    ensure_pool(pool, samples=samples, shards=shards, workers=2)
    report(listed=make_subset(Path(pool), kind, Path(subset)),
           tar_bytes=sum(p.stat().st_size for p in (Path(pool) / "shards").glob("*.tar")))


def output_uids(out: Path) -> tuple[int, int, str]:
    """Samples, shards and a digest of the sorted uids in an output directory's tars."""
    from mode.core.shards import iter_tar

    tars = sorted(out.glob("*.tar"))
    uids = sorted(json.loads(s["json"])["uid"] for p in tars for _, s in iter_tar(p))
    return len(uids), len(tars), hashlib.sha256("".join(uids).encode()).hexdigest()


def make_subset(pool: Path, kind: str, path: Path) -> int:
    from mode.core.layout import Pool
    from mode.core.uids import load_subset, save_subset
    from mode.datacomp import filters

    meta = Pool(pool).metadata_dir
    if kind == "basic_filter":
        filters.run("basic_filter", str(meta), str(path), filters.FilterParams(fasttext_model="packaged"), workers=2)
    else:
        filters.run("no_filter", str(meta), str(path), filters.FilterParams())
        uids = load_subset(str(path))
        save_subset(str(path), np.random.default_rng(0).permutation(uids)[: len(uids) // 2])
    return len(load_subset(str(path)))


def main() -> None:
    if "--child" in sys.argv and sys.argv[2] == "setup":
        _, _, _, pool, subset, samples, shards, kind = sys.argv
        return setup(pool, subset, int(samples), int(shards), kind)
    if "--child" in sys.argv:
        _, _, side, pool, out, subset, shard_size, workers = sys.argv
        return child(side, pool, out, subset, int(shard_size), int(workers))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--subset", choices=("basic_filter", "half"), default="basic_filter")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    variants = [("ours", 1), ("ours", 2), ("tarfile", 1)]
    with tempfile.TemporaryDirectory() as tmp:
        pool, subset = Path(tmp) / "pool", Path(tmp) / "subset.npy"
        made = in_child(__file__, "setup", str(pool), str(subset), str(a.samples), str(a.shards), a.subset)
        print(f"pool {a.samples} rows in {a.shards} shards ({made['tar_bytes'] / 1e6:.0f} MB); subset {a.subset}: "
              f"{made['listed']} uids; output shards of {a.shard_size}; parent RSS {peak_rss_mb():.0f} MB", flush=True)
        best, checks = {}, {}
        for r in range(a.repeats):
            for side, workers in variants:
                out = Path(tmp) / f"out-{side}-{workers}"
                res = in_child(__file__, side, str(pool), str(out), str(subset), str(a.shard_size), str(workers))
                checks[(side, workers)] = output_uids(out)
                assert checks[(side, workers)][0] == res["samples"], f"{side}: reported and written counts differ"
                shutil.rmtree(out)
                if (side, workers) not in best or res["seconds"] < best[(side, workers)]["seconds"]:
                    best[(side, workers)] = res
        assert len(set(checks.values())) == 1, f"outputs differ: {checks}"
    report_table(best, checks[("tarfile", 1)])


def report_table(best: dict, check: tuple[int, int, str]) -> None:
    samples, shards, _ = check
    base = best[("tarfile", 1)]
    print(f"every variant wrote the same {samples} samples (same uids) in {shards} shards")
    for (side, workers), res in best.items():
        name = f"mode reshard, {workers} worker{'s' if workers > 1 else ''}" if side == "ours" else "plain tarfile"
        workers_rss = f", each worker <= {res['workers_peak_rss_mb']:.0f} MB" if workers > 1 else ""
        print(f"{name:24s} {res['seconds']:7.2f} s  {samples / res['seconds']:9.0f} samples/s  "
              f"ratio ours/baseline {base['seconds'] / res['seconds']:5.2f}  peak RSS {res['own_peak_rss_mb']:.0f} MB"
              f"{workers_rss} (ru_maxrss {res['peak_rss_mb']:.0f} MB)", flush=True)


if __name__ == "__main__":
    main()
