"""`mode <step> ...`: one subcommand per pipeline step (also `python -m mode`).

Each step is a module with `add_arguments(parser)` and `main(args)` (the protocol of mode.core.step); STEPS lists
them in pipeline order with what they read and write. Only the module of the step being run is imported.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from mode.core.errors import UserError, bad_data_errors, first_line
from mode.core.step import Step

STEPS = (
    Step("toy", "mode.toy.pool", "write the embedded toy pool (DataComp layout + eval tasks)",
         "nothing", "POOL/{shards,metadata,eval_tasks}"),
    Step("download", "mode.datacomp.download", "a DataComp pool (metadata, npz, images via img2dataset) or "
         "DataCompDR shards from the Hugging Face hub", "the hub", "DATA_DIR/{metadata,shards}"),
    Step("metadata", "mode.datacomp.metadata", "dataset2metadata's metadata from its yml: CLIP scores and "
         "features, NSFW, dedup, custom models", "the shards", "OUT/<shard>.{parquet,npz}"),
    Step("filter", "mode.datacomp.filters", "DataComp baseline filter over parquet metadata -> sorted u8,u8 uid .npy",
         "POOL/metadata", "SUBSET.npy (+ .json)"),
    Step("reshard", "mode.datacomp.reshard", "write a uid subset of a pool as new shards (DataComp's resharder)",
         "POOL shards, SUBSET.npy", "OUT/*.tar, meta.json"),
    Step("captions", "mode.prep.captions", "step 0: captions/<shard>.parquet (uid, key, caption) from the tars",
         "the shards", "W/captions"),
    Step("embed", "mode.prep.embed", "step 1: caption embeddings features/<shard>.npy", "W/captions",
         "W/features"),
    Step("cluster", "mode.prep.cluster", "step 2: two-level k-means (global; run once)", "W/features",
         "W/clusters"),
    Step("assign", "mode.prep.assign", "step 3: nearest fine centroid and expert of every pair",
         "W/{captions,features,clusters}", "W/assign"),
    Step("route", "mode.prep.route", "write each expert's webdataset shards in one pass over the pool",
         "the shards, W/assign", "W/experts/<k>/shards"),
    Step("prep", "mode.prep.pipeline", "steps 0-4 in one command: locally in order, or on SLURM as job arrays with "
         "dependencies", "the shards", "W/{captions,features,clusters,assign,experts}"),
    Step("train-experts", "mode.train.launch", "train one CLIP per expert (and a dense baseline) via submitit",
         "the shards or W/experts, W/assign", "LOGS/<recipe>_n<K>m<F>/{seed,expert_<k>,dense}"),
    Step("dr-generate", "dr.generate", "reinforce shards DataCompDR-style: stored augmentations, synthetic "
         "captions, teacher embeddings", "the shards", "OUT/*.tar"),
    Step("dr-join", "dr.join", "merge DataComp-12M shards with DataCompDR shards by sample key",
         "two shard folders", "OUT/*.tar"),
    Step("download-tasks", "mode.evaluation.tasks", "fetch DataComp's evaluation tasks from the Hugging Face hub",
         "the hub", "TASKS/<task>"),
    Step("evaluate", "mode.evaluation.evaluate", "zero-shot classification / retrieval of checkpoints on eval tasks",
         "TASKS, checkpoints", "EVAL/<label>/{<task>.npz,eval_results.jsonl}"),
    Step("ensemble", "mode.evaluation.ensemble", "weight experts per task from class names vs cluster centroids; "
         "report", "W/clusters, EVAL", "REPORT/{ensemble.csv,weights.json,...}"),
    Step("inspect", "mode.evaluation.inspect_site", "a static site to browse experts, fine clusters, thumbnails and "
         "task routing", "W, shards [, REPORT]", "SITE/{index.html,expert_<k>.html,thumbs/}"),
    Step("submit", "mode.datacomp.submit", "DataComp submission bundle; uploaded to your HF repo unless --dry-run",
         "SUBSET.npy, eval_results.jsonl", "BUNDLE/"),
    Step("losses", "mode.train.trainlog", "per-epoch mean losses (contrastive, distill, total) from an out.log",
         "LOGS/<name>/out.log", "stdout"),
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `mode` parser; the arguments of step `only` (every step's when None) are added from its module."""
    parser = argparse.ArgumentParser(prog="mode", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="the pipeline:\n" + "\n".join(
                                         f"  {s.name:15s} {s.reads} -> {s.writes}" for s in STEPS))
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for step in STEPS:
        p = sub.add_parser(step.name, help=step.help,
                           description=f"{step.help}. Reads {step.reads}; writes {step.writes}.")
        if only is None or only == step.name:
            module = importlib.import_module(step.module)
            module.add_arguments(p)
            p.set_defaults(func=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # after `--`: flags for the trainer, untouched
    chosen = next((a for a in argv[:cut] if not a.startswith("-")), None)
    args = build_parser(chosen or "").parse_args(argv[:cut])  # no step named: help or argparse's error
    args.train_flags = argv[cut + 1:]
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path: missing, not a folder, a folder, no permission, disk full
        names = " -> ".join(str(n) for n in (e.filename, e.filename2) if n)
        print(f"error: {e.strerror or e}{': ' + names if names else ''}", file=sys.stderr)
        return 2
    except Exception as e:
        if isinstance(e, bad_data_errors()):
            print(f"error: unreadable input ({type(e).__name__}): {first_line(e)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print("error: an unexpected failure, probably a bug: please report it with the traceback above",
              file=sys.stderr)
        return 1
    return 0
