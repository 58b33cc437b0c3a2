"""`mode submit`: DataComp's `evaluate.py --submit`, as a bundle uploaded to the user's Hugging Face repo.

The upload is what DataComp's push_files_to_hub commits, to a *model* repo by default as DataComp's does
(`--repo-type dataset` for a dataset repo): `<scale>_scale/results.jsonl`, `<scale>_scale/samples/<file>` and,
with a checkpoint, `<scale>_scale/checkpoint.pt`. DataComp's leaderboard record (scale, model, dataset size
- by default the scale's `train_num_samples`, as DataComp fills it -, checkpoint, batch size, learning rate,
method name, author, email, writeup, Hugging Face user and repo, timestamp, track, each task's main metric) is
written beside the bundle as `submission.json`, never uploaded nor sent anywhere (DataComp's own `--submit`
sends it to its leaderboard's database; this command does not): the email stays out of every public file.
Before an upload the command prints exactly which files go public, and which record fields DataComp says its
leaderboard shows. The token comes from the standard Hugging Face login (`huggingface-cli login` or HF_TOKEN) and is
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
from mode.core.lock import holding
from mode.core.runner import load_json
from mode.core.shards import is_complete_checkpoint, overlaps, write_json
from mode.core.step import positive_int
from mode.core.uids import load_subset
from mode.datacomp.tasklist import DATACOMP_TASKS, SCORED

TRACKS = ("filtering", "byod")
REPO_TYPES = ("model", "dataset")
SHOWN = ("method_name", "author", "writeup")  # DataComp's --submit help: "This *will* be shared publicly"
SCALES = ("small", "medium", "large", "xlarge")
MARKER = ".mode-submit"  # in the bundle (never uploaded): {scale: the files of <scale>_scale/ that submit wrote}


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
    repo_type: str = "model"


def _check(sub: Submission) -> tuple[list[Path], list[dict]]:
    if sub.scale not in SCALES:
        raise UserError(f"--scale {sub.scale!r}: expected one of {', '.join(SCALES)}")
    if sub.track not in TRACKS:
        raise UserError(f"--track {sub.track!r}: expected one of {', '.join(TRACKS)}")
    if sub.hf_repo.count("/") != 1 or not all(sub.hf_repo.split("/")):
        raise UserError(f"--hf-repo {sub.hf_repo!r}: expected USER/NAME (or --hf_username and --hf_repo_name)")
    if sub.repo_type not in REPO_TYPES:
        raise UserError(f"--repo-type {sub.repo_type!r}: expected one of {', '.join(REPO_TYPES)}")
    samples = [Path(p) for p in sub.samples.split("::") if p]
    if not samples:  # DataComp's push_files_to_hub raises on none
        raise UserError(f"--samples {sub.samples!r}: expected one or more files containing the sample ids")
    for p in samples:
        if not p.is_file():
            raise UserError(f"--samples: {p} does not exist")
        if (sub.track == "filtering" or p.suffix == ".npy") and not len(load_subset(str(p))):  # u8,u8, sorted
            raise UserError(f"--samples: {p} holds no uids: a submission names the samples it trained on")
        # byod: DataComp also takes the data from outside the pool as it is (e.g. a .parquet of it), uploaded as is
    names = [p.name for p in samples]
    if len(set(names)) != len(names):
        raise UserError(f"--samples: two files named {next(n for n in names if names.count(n) > 1)}; "
                        "they would overwrite each other in samples/")
    if not Path(sub.results).exists():
        raise UserError(f"--results: {sub.results} does not exist (run `mode evaluate` or DataComp's evaluate.py)")
    _check_complete(Path(sub.results))
    results = _read_results(Path(sub.results))
    if sub.checkpoint and not Path(sub.checkpoint).is_file():
        raise UserError(f"--checkpoint: {sub.checkpoint} does not exist")
    if sub.checkpoint and not is_complete_checkpoint(sub.checkpoint):
        raise UserError(f"--checkpoint: {sub.checkpoint} is not a complete torch checkpoint (truncated, or another "
                        "kind of file)")
    return samples, results


def _check_complete(path: Path) -> None:
    """`mode evaluate` writes summary.json beside eval_results.jsonl: results it does not call complete (a run
    killed or still going) are not submitted."""
    summary = path.parent / "summary.json"
    if summary.is_file():
        state = load_json(summary, "`mode evaluate` summary", ("complete",))
        if state["complete"] is not True:
            raise UserError(f"--results: {summary} says the evaluation beside it is incomplete "
                            f"({state.get('shards_done', '?')} of {state.get('shards_total', '?')} tasks): finish "
                            "`mode evaluate` first")


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
    return _datacomp_rows(path, results)


def _datacomp_rows(path: Path, rows: list[dict]) -> list[dict]:
    """The rows of DataComp's tasks, which must give each of its 38 scored tasks a main metric: DataComp's
    --submit evaluates every task of its tasklist and keeps only those."""
    kept = [r for r in rows if r.get("key") in DATACOMP_TASKS]
    keys = [r["key"] for r in kept]
    for r in kept:
        if keys.count(r["key"]) > 1:
            raise UserError(f"--results: {path} lists {r['key']} twice: keep one row per task")
        if r["dataset"] != DATACOMP_TASKS[r["key"]].name:
            raise UserError(f"--results: {path} names {r['key']} {r['dataset']!r}; DataComp's name is "
                            f"{DATACOMP_TASKS[r['key']].name!r}")
    scored = {r["key"] for r in kept if isinstance(r["metrics"]["main_metric"], (int, float))
              and not isinstance(r["metrics"]["main_metric"], bool)}
    missing = [DATACOMP_TASKS[k].name for k in SCORED if k not in scored]
    if missing:
        raise UserError(f"--results: {path} lacks the main metric of {len(missing)} of DataComp's {len(SCORED)} "
                        f"scored tasks ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): DataComp "
                        "submits all of them; evaluate every task (`mode download-tasks --keys all`)")
    return kept


def record(sub: Submission, results: list[dict], samples: list[Path]) -> dict:
    """DataComp's leaderboard record for this submission."""
    import run_configs

    recipe = run_configs.get_recipe(f"datacomp_{sub.scale}")
    size = sub.dataset_size if sub.dataset_size is not None else recipe.samples_seen  # DataComp: train_num_samples
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
    """Write the bundle directory: `<scale>_scale/` (what is uploaded) and `submission.json` (kept local)."""
    samples, results = _check(sub)
    root = Path(bundle)
    prefix = root / f"{sub.scale}_scale"
    for given in [*samples, Path(sub.results), *([Path(sub.checkpoint)] if sub.checkpoint else [])]:
        if overlaps(given, prefix) or overlaps(given, root / "submission.json"):
            raise UserError(f"{given} lies inside the bundle {root}, which is rewritten whole: copy it out first "
                            "or pass another --bundle")
    root.mkdir(parents=True, exist_ok=True)
    with holding(root, "submit", "`mode submit` into this bundle"):
        marker = root / MARKER
        written = load_json(marker, "`mode submit` bundle record") if marker.is_file() else {}
        if prefix.exists():  # rewritten whole, so that no file of an earlier run is uploaded by mistake ...
            theirs = sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*")
                            if not p.is_dir() and str(p.relative_to(prefix)) not in written.get(sub.scale, []))
            if theirs:  # ... but never a file it did not write (which would be uploaded too)
                raise UserError(f"{prefix} holds {len(theirs)} file(s) `mode submit` did not write (e.g. {theirs[0]}),"
                                " which would be uploaded: move them out or pass another --bundle")
            shutil.rmtree(prefix)
        mine = ["results.jsonl", *(f"samples/{p.name}" for p in samples), *(["checkpoint.pt"] * bool(sub.checkpoint))]
        write_json(marker, {**written, sub.scale: mine})  # first: a killed run leaves only files it lists
        (prefix / "samples").mkdir(parents=True)
        with open(prefix / "results.jsonl", "w") as f:  # DataComp's tasks only, as its --submit keeps
            f.writelines(json.dumps(r) + "\n" for r in results)
        for p in samples:
            shutil.copyfile(p, prefix / "samples" / p.name)
        if sub.checkpoint:
            shutil.copyfile(sub.checkpoint, prefix / "checkpoint.pt")
        write_json(root / "submission.json", record(sub, results, samples))
    return root


def public_preview(root: Path, sub: Submission) -> str:
    """What goes public (the files of the repo), and that the leaderboard record stays here."""
    url = repo_url(sub.hf_repo, sub.repo_type)
    prefix = root / f"{sub.scale}_scale"
    files = [f"  {p.relative_to(root)} ({p.stat().st_size} bytes)" for p in sorted(prefix.rglob("*")) if p.is_file()]
    return "\n".join([f"public: {url} receives", *files,
                      f"sent nowhere: {root / 'submission.json'}, DataComp's leaderboard record (with your email); "
                      "nothing goes to DataComp's leaderboard. DataComp says an entry there shows "
                      f"{', '.join(SHOWN)} and the scores publicly, not email, hf_username or hf_repo_name"])


def repo_url(hf_repo: str, repo_type: str) -> str:
    return f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{hf_repo}"


def upload(bundle: Path, sub: Submission) -> str:
    """Upload `<scale>_scale/` to the user's repo with their saved Hugging Face token (submission.json stays)."""
    from huggingface_hub import HfApi, get_token

    if not get_token():
        raise UserError("no Hugging Face login found: run `huggingface-cli login` (or set HF_TOKEN), or use --dry-run")
    api = HfApi()
    try:
        api.create_repo(sub.hf_repo, repo_type=sub.repo_type, exist_ok=True)
        api.upload_folder(folder_path=str(bundle), repo_id=sub.hf_repo, repo_type=sub.repo_type,
                          allow_patterns=[f"{sub.scale}_scale/**"],
                          commit_message=f"Upload artifacts ({sub.scale} scale)")
    except Exception as e:  # network and hub errors: one line, never the token
        raise UserError(f"upload to {sub.hf_repo} failed: {type(e).__name__}")
    return repo_url(sub.hf_repo, sub.repo_type)


def run(sub: Submission, bundle: str, dry_run: bool | None = None) -> str:
    """Build the bundle, print what will be public, upload it unless dry-run (the default without a login)."""
    from huggingface_hub import get_token

    root = build_bundle(sub, bundle)
    print(public_preview(root, sub))
    if dry_run is None:
        dry_run = not get_token()
    if dry_run:
        return f"dry run: bundle in {root} ({sub.scale}_scale/ to upload, submission.json kept); nothing uploaded"
    return f"uploaded {root / f'{sub.scale}_scale'} to {upload(root, sub)}"


# -------------------------------------------------------------------------------------------- `mode submit`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", required=True, choices=("small", "medium", "large", "xlarge"))
    p.add_argument("--track", required=True, choices=("filtering", "byod"))
    p.add_argument("--method-name", "--method_name", required=True, help="DataComp shows it on its leaderboard")
    p.add_argument("--author", required=True, help="DataComp shows it on its leaderboard")
    p.add_argument("--email", required=True, help="for contact; never uploaded, not shown")
    p.add_argument("--samples", required=True, help="uid subset .npy file(s) (u8,u8, sorted), '::'-joined; byod "
                                                    "may add its other data files (e.g. a .parquet), uploaded as is")
    p.add_argument("--results", required=True, help="eval_results.jsonl")
    p.add_argument("--hf-repo", default=None, help="your Hugging Face repo, USER/NAME")
    p.add_argument("--hf_username", "--hf-username", default=None, help="or DataComp's way: user ...")
    p.add_argument("--hf_repo_name", "--hf-repo-name", default=None, help="... and repo name")
    p.add_argument("--repo-type", choices=REPO_TYPES, default="model", help="DataComp pushes to a model repo")
    p.add_argument("--dataset-size", "--dataset_size", type=positive_int, default=None,
                   help="default: the scale's train_num_samples, as DataComp fills it")
    p.add_argument("--checkpoint", default=None, help="also upload this checkpoint (DataComp's --upload_checkpoint)")
    p.add_argument("--writeup", default=None, help="link to a paper or blog post")
    p.add_argument("--bundle", default="submission", help="where to write the bundle")
    p.add_argument("--dry-run", action="store_true", help="write the bundle only (the default without a HF login)")


def main(args: argparse.Namespace) -> None:
    repo = args.hf_repo
    if repo is None:
        if not (args.hf_username and args.hf_repo_name):
            raise UserError("give --hf-repo USER/NAME (or DataComp's --hf_username and --hf_repo_name)")
        repo = f"{args.hf_username}/{args.hf_repo_name}"
    sub = Submission(scale=args.scale, track=args.track, method_name=args.method_name, author=args.author,
                     email=args.email, samples=args.samples, results=args.results, hf_repo=repo,
                     dataset_size=args.dataset_size, checkpoint=args.checkpoint, writeup=args.writeup,
                     repo_type=args.repo_type)
    print(run(sub, args.bundle, dry_run=True if args.dry_run else None))
