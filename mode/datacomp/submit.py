"""`mode submit`: a DataComp submission bundle, uploaded to the user's Hugging Face repo unless `--dry-run`.

The bundle is laid out as DataComp's evaluate.py uploads it (`<scale>_scale/results.jsonl`,
`<scale>_scale/samples/<file>`, optionally `<scale>_scale/checkpoint.pt`), plus `submission.json` holding
every field of DataComp's leaderboard record (scale, model, dataset size, checkpoint, batch size, learning rate,
method name, author, email, writeup, Hugging Face user and repo, timestamp, track, and each task's main
metric). The token comes from the standard Hugging Face login (`huggingface-cli login` or HF_TOKEN) and is
never printed or written.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mode.core.errors import UserError
from mode.core.shards import write_json
from mode.core.step import positive_int
from mode.core.uids import load_subset

TRACKS = ("filtering", "byod")
SCALES = ("small", "medium", "large", "xlarge")


@dataclass
class Submission:
    scale: str
    track: str
    method_name: str
    author: str
    email: str
    samples: str  # one or more uid .npy files, '::'-joined
    results: str  # eval_results.jsonl
    hf_repo: str  # user/name
    dataset_size: int | None = None
    checkpoint: str | None = None
    writeup: str | None = None


def _check(sub: Submission) -> tuple[list[Path], list[dict]]:
    if sub.scale not in SCALES:
        raise UserError(f"--scale {sub.scale!r}: expected one of {', '.join(SCALES)}")
    if sub.track not in TRACKS:
        raise UserError(f"--track {sub.track!r}: expected one of {', '.join(TRACKS)}")
    if "/" not in sub.hf_repo:
        raise UserError(f"--hf-repo {sub.hf_repo!r}: expected USER/NAME")
    samples = [Path(p) for p in sub.samples.split("::") if p]
    for p in samples:
        if not p.exists():
            raise UserError(f"--samples: {p} does not exist")
        load_subset(str(p))  # u8,u8 and sorted, or a one-line error
    if not Path(sub.results).exists():
        raise UserError(f"--results: {sub.results} does not exist (run `mode evaluate` or DataComp's evaluate.py)")
    results = _read_results(Path(sub.results))
    if sub.checkpoint and not Path(sub.checkpoint).exists():
        raise UserError(f"--checkpoint: {sub.checkpoint} does not exist")
    return samples, results


def _read_results(path: Path) -> list[dict]:
    """DataComp's eval_results.jsonl: one JSON object per line, each with a dataset and its main metric."""
    results = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and "dataset" in row and "main_metric" in row.get("metrics", {})
        except (ValueError, AttributeError, TypeError):
            ok = False
        if not ok:
            raise UserError(f"--results: line {n} of {path} is not an eval_results.jsonl row "
                            '({"key", "dataset", "metrics": {..., "main_metric"}})')
        results.append(row)
    if not results:
        raise UserError(f"--results: {path} holds no results (run `mode evaluate` first)")
    return results


def record(sub: Submission, results: list[dict], samples: list[Path]) -> dict:
    """DataComp's leaderboard record for this submission."""
    import numpy as np

    import run_configs

    recipe = run_configs.get_recipe(f"datacomp_{sub.scale}")
    size = sub.dataset_size if sub.dataset_size is not None else int(sum(len(np.load(p)) for p in samples))
    user, repo = sub.hf_repo.split("/", 1)
    data = {"scale": sub.scale, "model": recipe.model, "dataset_size": size, "checkpoint": sub.checkpoint,
            "batch_size": recipe.global_batch_size, "learning_rate": recipe.lr, "method_name": sub.method_name,
            "author": sub.author, "email": sub.email, "hf_username": user, "hf_repo_name": repo,
            "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%d_%H:%M:%S"), "track": sub.track,
            "writeup": sub.writeup}
    for r in results:
        metric = r.get("metrics", {}).get("main_metric")
        if metric is not None:
            data[r["dataset"]] = metric
    return data


def build_bundle(sub: Submission, bundle: str) -> Path:
    """Write the bundle directory; returns it."""
    samples, results = _check(sub)
    root = Path(bundle)
    prefix = root / f"{sub.scale}_scale"
    (prefix / "samples").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sub.results, prefix / "results.jsonl")
    for p in samples:
        shutil.copyfile(p, prefix / "samples" / p.name)
    if sub.checkpoint:
        shutil.copyfile(sub.checkpoint, prefix / "checkpoint.pt")
    write_json(root / "submission.json", record(sub, results, samples))
    return root


def upload(bundle: Path, hf_repo: str, scale: str) -> str:
    """Upload the bundle to the user's dataset repo with their saved Hugging Face token."""
    from huggingface_hub import HfApi, get_token

    if not get_token():
        raise UserError("no Hugging Face login found: run `huggingface-cli login` (or set HF_TOKEN), or use --dry-run")
    api = HfApi()
    try:
        api.create_repo(hf_repo, repo_type="dataset", exist_ok=True)
        api.upload_folder(folder_path=str(bundle), repo_id=hf_repo, repo_type="dataset",
                          commit_message=f"DataComp submission ({scale} scale)")
    except Exception as e:  # network and hub errors: one line, never the token
        raise UserError(f"upload to {hf_repo} failed: {type(e).__name__}")
    return f"https://huggingface.co/datasets/{hf_repo}"


def run(sub: Submission, bundle: str, dry_run: bool | None = None) -> str:
    """Build the bundle; upload it unless dry-run (the default when no login is found)."""
    from huggingface_hub import get_token

    root = build_bundle(sub, bundle)
    if dry_run is None:
        dry_run = not get_token()
    if dry_run:
        return f"dry run: bundle in {root} (submission.json, {sub.scale}_scale/); nothing uploaded"
    return f"uploaded {root} to {upload(root, sub.hf_repo, sub.scale)}"


# -------------------------------------------------------------------------------------------- `mode submit`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", required=True, choices=("small", "medium", "large", "xlarge"))
    p.add_argument("--track", required=True, choices=("filtering", "byod"))
    p.add_argument("--method-name", required=True, help="shown on the leaderboard")
    p.add_argument("--author", required=True, help="shown on the leaderboard")
    p.add_argument("--email", required=True, help="for contact; not shown")
    p.add_argument("--samples", required=True, help="uid subset .npy file(s) (u8,u8, sorted), '::'-joined")
    p.add_argument("--results", required=True, help="eval_results.jsonl")
    p.add_argument("--hf-repo", required=True, help="your Hugging Face dataset repo, USER/NAME")
    p.add_argument("--dataset-size", type=positive_int, default=None, help="default: the number of uids in --samples")
    p.add_argument("--checkpoint", default=None, help="also upload this checkpoint")
    p.add_argument("--writeup", default=None, help="link to a paper or blog post")
    p.add_argument("--bundle", default="submission", help="where to write the bundle")
    p.add_argument("--dry-run", action="store_true", help="write the bundle only (the default without a HF login)")


def main(args: argparse.Namespace) -> None:
    sub = Submission(scale=args.scale, track=args.track, method_name=args.method_name, author=args.author,
                     email=args.email, samples=args.samples, results=args.results, hf_repo=args.hf_repo,
                     dataset_size=args.dataset_size, checkpoint=args.checkpoint, writeup=args.writeup)
    print(run(sub, args.bundle, dry_run=True if args.dry_run else None))
