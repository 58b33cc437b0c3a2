"""The plugin's own flags, parsed beside open_clip_train's and resolved into its arguments.

Our flags live in our own small parser; open_clip_train's parser sees only its own flags, so a typo in either
still fails loudly. Flags that set the same open_clip value (`--global-batch-size` and `--batch-size`,
`--samples-seen` and `--train-num-samples`, `--toy-pool`, `--data-dir` and `--train-data`) follow argparse's
rule: the one given last on the command line wins, so a user's flag always overrides a recipe's.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Sequence

from mode.core.errors import UserError
from mode.core.layout import WorkDir
from mode.core.lock import hold_for_process
from mode.core.runner import load_json
from mode.core.shards import natural_key
from mode.prep import ooc
from open_clip_patch import preflight
from open_clip_patch.init_from import resolve_start

log = logging.getLogger(__name__)

# Groups of flags that decide one value; the last one present in argv wins.
_GROUPS = {
    "data": ("--toy-pool", "--data-dir", "--data_dir", "--train-data"),
    "batch": ("--global-batch-size", "--batch-size"),
    "samples": ("--samples-seen", "--train-num-samples"),
}


def plugin_parser() -> argparse.ArgumentParser:
    """The parser of the plugin's flags (open_clip_train's own flags are left to its parser)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    g = p.add_argument_group("mode plugin")
    p.set_defaults(mode_distinct_samples=None)  # set at parse time: the data's distinct samples, when known
    g.add_argument("--toy-pool", default=None, metavar="DIR",
                   help="Train on the toy pool at DIR, making it first (`mode toy` defaults) if DIR holds none.")
    g.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None, metavar="SPEC",
                   help="DataComp's --data_dir: directories, brace patterns or tars joined by '::'; each "
                        "directory's shards are found as DataComp's train.py finds them (resharder meta.json, "
                        "*.tar, shards/), and --train-num-samples defaults to their sizes.json/_stats.json.")
    g.add_argument("--global-batch-size", type=int, default=None, metavar="N",
                   help="Batch size over all processes; --batch-size becomes N // (world size * --accum-freq).")
    g.add_argument("--samples-seen", type=int, default=None, metavar="N",
                   help="Total training samples (DataComp's fixed budget); --train-num-samples becomes "
                        "N // --epochs, so each epoch is one checkpoint of the budget.")
    g.add_argument("--warmup-epochs", type=float, default=None, metavar="E",
                   help="Warm-up length in epochs (clip-rocket's flag): --warmup becomes E x the steps of an epoch.")
    g.add_argument("--mode-work-dir", default=None, metavar="W",
                   help="Train a MoDE expert: the clustering work dir (mode assign / route outputs); '' = none.")
    g.add_argument("--expert", type=int, default=None, metavar="K", help="The expert (coarse cluster) to train.")
    g.add_argument("--expert-data", choices=("filter", "routed"), default="filter",
                   help="filter: read the whole pool (--train-data/--data-dir) and keep expert K's pairs on the fly; "
                        "routed: read W/experts/K/shards written by `mode route`.")
    g.add_argument("--ooc-ratio", type=float, default=None, metavar="R",
                   help="With --expert-data filter: out-of-cluster pairs kept (MoDE: 0.02), see --ooc-mode; routed "
                        "shards hold the mix `mode route` made.")
    g.add_argument("--ooc-mode", choices=("share", "additive"), default="share",
                   help="share: R is the out-of-cluster share of the expert's data; additive (MoDE's loader): "
                        "R of the other clusters' pairs are added.")
    g.add_argument("--init-from", default=None, metavar="CKPT",
                   help="Start from this checkpoint (model, optimizer, epoch) when the run has none of its own; "
                        "a relaunch resumes the run's newest complete checkpoint instead.")
    g.add_argument("--stop-epoch", type=int, default=None, metavar="E",
                   help="Stop after epoch E; the LR schedule still spans --epochs (MoDE's dense seed run, which "
                        "the experts fork from at E; resuming later with no --stop-epoch finishes the schedule).")
    g.add_argument("--init-from-model-only", action="store_true",
                   help="Take only the model weights from --init-from (fresh optimizer, epoch 0).")
    _dr_flags(p.add_argument_group("DataCompDR reinforcements (flags named as ml-mobileclip's patch names them)"))
    _rocket_flags(p.add_argument_group("clip-rocket (flags named as its main.py names them)"))
    return p


def _rocket_flags(g) -> None:
    from open_clip_patch.rocket import OBJECTIVES

    g.add_argument("--rocket", choices=OBJECTIVES, default=None,
                   help="Train with clip-rocket's views and objective: cl2l (CLIP:rocket), or CL2L plus siamlip, "
                        "byolip (SiamLIP with a momentum target), barlip or swalip.")
    g.add_argument("--num-augs", type=int, default=2, metavar="A", help="Augmented image and caption views.")
    g.add_argument("--separate-proj", action="store_true",
                   help="The views get their own MLP heads and logit scale (else the CLIP's projections).")
    g.add_argument("--l2l-hidden-dim", type=int, default=4096, metavar="D",
                   help="Width of the views' MLP heads (clip-rocket fixes it at 4096; small models train faster "
                        "with less).")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="Label smoothing of the views' InfoNCE.")
    g.add_argument("--loss-avg-or-sum", choices=("avg", "sum"), default="avg",
                   help="Average the two directions (avg) or add them (sum).")
    g.add_argument("--text-dropout-prob", type=float, default=0.0,
                   help="Dropout on the text tower's residual stream at each block, augmented captions only.")
    g.add_argument("--text-augment", action="store_true", help="One EDA operation per augmented caption.")
    g.add_argument("--clean-before-augment", action="store_true",
                   help="ftfy + whitespace + lower case before the caption augmentations.")
    for name, default, what in (("no-text-augment", 0.0, "no operation"),
                                ("remove-stopwords", 0.8, "stop-word removal (every caption view)"),
                                ("synonym-replacement", 0.4, "synonym replacement"),
                                ("random-swap", 0.4, "a swap of two words"),
                                ("random-deletion", 0.2, "random deletion")):
        g.add_argument(f"--{name}-prob", type=float, default=default,
                       help=f"Chance (EDA: weight) of {what}.")
    g.add_argument("--wordnet-dir", default=None, metavar="DIR",
                   help="WordNet 3.0 dict folder for synonym replacement (default: NLTK's installed WordNet).")
    g.add_argument("--weak-min-scale", type=float, default=0.5, help="Global view's smallest crop scale.")
    g.add_argument("--multicrop-max-scale", type=float, default=1.0, help="Augmented views' largest crop scale.")
    g.add_argument("--blur-prob", type=float, default=0.5, help="Augmented views' Gaussian blur chance.")
    g.add_argument("--grayscale-prob", type=float, default=0.2, help="Augmented views' grayscale chance.")
    g.add_argument("--momentum-tau", type=float, default=0.99, help="BYOLIP's momentum.")
    g.add_argument("--barlip-lamb", type=float, default=5e-3, help="BarLIP's off-diagonal weight.")
    g.add_argument("--barlip-scale-loss", type=float, default=0.025, help="BarLIP's loss scale.")
    g.add_argument("--barlip-proj-dim", type=int, default=8192)
    g.add_argument("--barlip-hidden-dim", type=int, default=3000)
    g.add_argument("--siamlip-proj-dim", type=int, default=128)
    g.add_argument("--siamlip-hidden-dim", type=int, default=2048)
    g.add_argument("--siamlip-no-last-bn", action="store_true", help="No BN after SiamLIP's projectors.")
    g.add_argument("--swalip-weight", type=float, default=0.2, help="SwALIP's weight beside CL2L.")
    g.add_argument("--sk-iters", type=int, default=3, help="SwALIP's Sinkhorn-Knopp iterations.")
    g.add_argument("--target-epsilon", type=float, default=0.05, help="SwALIP's Sinkhorn epsilon.")


def _dr_flags(g) -> None:
    g.add_argument("--dataset-reinforcement", action="store_true",
                   help="Read reinforcements from the shards (<key>.paug.json, .syn.json, .npz or .pth.gz): each "
                        "image gets a stored augmentation replayed, plus a synthetic caption and teacher embeddings.")
    g.add_argument("--dataset-reinforcement-config", default=None, metavar="JSON",
                   help="The augmentation config the reinforcements were made with (a path, or a name in configs/, "
                        "e.g. dr_augment_12m); its crop size, interpolation and normalisation follow the model's.")
    g.add_argument("--dataset-reinforcement-mix-synthetic", action="store_true",
                   help="Replace the caption by the synthetic one with probability --...-mix-synthetic-ratio, "
                        "instead of adding a loss term on the synthetic caption.")
    g.add_argument("--dataset-reinforcement-mix-synthetic-ratio", type=float, default=0.0, metavar="P",
                   help="With --dataset-reinforcement-mix-synthetic: chance of the synthetic caption.")
    g.add_argument("--dataset-reinforcement-sample-sequential", action="store_true",
                   help="Take augmentation and caption number (epoch mod count) instead of random ones.")
    g.add_argument("--distill-loss-weights", type=float, nargs=2, default=None, metavar=("W_CLIP", "W_KD"),
                   help="Weights of the CLIP loss and the distillation loss (default 1 1).")
    g.add_argument("--distill-logit-scale", type=float, nargs="+", default=None, metavar="S",
                   help="Each teacher's logit scale (one value: all teachers).")
    g.add_argument("--distill-teacher-dimension", type=int, nargs="+", default=None, metavar="D",
                   help="Each teacher's width in the stored embeddings, e.g. 768 768 (default -1: one teacher).")
    g.add_argument("--distill-average-after-softmax", action="store_true",
                   help="Average the teachers' similarity distributions after softmax (else one softmax of the "
                        "summed scaled similarities).")


def last_of(argv: Sequence[str], flags: Sequence[str]) -> str | None:
    """The flag among `flags` that appears last in `argv` (as `--flag` or `--flag=value`), or None."""
    found = None
    for token in argv:
        name = token.split("=", 1)[0]
        if name in flags:
            found = name
    return found


def split_argv(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Separate the plugin's flags from the rest; returns (plugin namespace, argv for open_clip_train)."""
    plugin_args, rest = plugin_parser().parse_known_args(list(argv))
    return plugin_args, rest


def resolve(args: argparse.Namespace, plugin_args: argparse.Namespace, argv: Sequence[str]) -> argparse.Namespace:
    """Merge the plugin's flags into open_clip_train's parsed arguments, in place, and return them."""
    for key, value in vars(plugin_args).items():
        setattr(args, key, value)
    argv = _resolve_expert(args, list(argv))
    _resolve_data(args, argv)
    _resolve_samples(args, argv)
    _resolve_batch(args, argv)
    _resolve_warmup_epochs(args, argv)
    from open_clip_train.distributed import world_info_from_env

    preflight.check(args, world_info_from_env()[2])
    _lock_run(args)  # before resolve_start, which may move the run's log aside: never under a running run
    resolve_start(args)
    if args.stop_epoch is not None and not 1 <= args.stop_epoch <= args.epochs:
        raise UserError(f"--stop-epoch {args.stop_epoch}: expected an epoch in 1..--epochs ({args.epochs})")
    _check_loader(args)
    _resolve_dr(args)
    _resolve_rocket(args, argv)
    return args


def _check_loader(args: argparse.Namespace) -> None:
    """The expert filter, DataCompDR's and clip-rocket's views live in open_clip's webdataset loader: with another
    loader (`--dataset-type csv`, or `auto` on a .csv) they would be skipped silently or fail mid-step."""
    needs = [flag for flag, on in (("--mode-work-dir/--expert", args.mode_work_dir),
                                   ("--dataset-reinforcement", args.dataset_reinforcement),
                                   ("--rocket", args.rocket)) if on]
    if not needs or not args.train_data:
        return
    kind = args.dataset_type
    if kind == "auto":  # as open_clip_train's get_dataset_fn picks the loader
        kind = "webdataset" if args.train_data.split(".")[-1] == "tar" else "not webdataset"
    if kind != "webdataset":
        raise UserError(f"{needs[0]} works in open_clip's webdataset loader: train on webdataset .tar shards "
                        f"(--dataset-type {args.dataset_type}, --train-data {args.train_data})")


_ROCKET_ONLY = ("num_augs", "separate_proj", "l2l_hidden_dim", "label_smoothing", "loss_avg_or_sum",
                "text_dropout_prob", "text_augment", "clean_before_augment", "no_text_augment_prob",
                "remove_stopwords_prob", "synonym_replacement_prob", "random_swap_prob", "random_deletion_prob",
                "wordnet_dir", "weak_min_scale", "multicrop_max_scale", "blur_prob", "grayscale_prob", "momentum_tau",
                "barlip_lamb", "barlip_scale_loss", "barlip_proj_dim", "barlip_hidden_dim", "siamlip_proj_dim",
                "siamlip_hidden_dim", "siamlip_no_last_bn", "swalip_weight", "sk_iters", "target_epsilon")


def _resolve_rocket(args: argparse.Namespace, argv: Sequence[str]) -> None:
    if not args.rocket:
        given = [f for f in ("--" + k.replace("_", "-") for k in _ROCKET_ONLY) if last_of(argv, (f,))]
        if given:
            raise UserError(f"{given[0]} needs --rocket OBJECTIVE")
        return
    if args.dataset_reinforcement:
        raise UserError("--rocket and --dataset-reinforcement are separate recipes; pick one")
    if getattr(args, "distill_model", None):
        raise UserError("--rocket does not distill: drop --distill-model")
    if args.accum_freq != 1:
        raise UserError("--rocket supports --accum-freq 1 only")
    if getattr(args, "siglip", False):  # open_clip would build SigLIP's logit scale and bias for clip-rocket's loss
        raise UserError("--rocket trains clip-rocket's softmax losses: drop --siglip")
    if args.num_augs < 0 or (args.num_augs == 0 and args.rocket != "cl2l"):
        raise UserError(f"--num-augs {args.num_augs}: expected >= 1 (0 only with --rocket cl2l)")
    if args.num_augs == 0 and args.separate_proj:
        raise UserError("--num-augs 0 makes no views for --separate-proj's heads to train: drop one of them")
    if args.rocket == "swalip":
        if args.num_augs != 2:
            raise UserError("--rocket swalip swaps the two augmented views' targets: needs --num-augs 2")
        if args.label_smoothing != 0:
            raise UserError("--rocket swalip needs --label-smoothing 0 (clip-rocket's SwALIP has none)")
    probs = ("label_smoothing", "text_dropout_prob", "remove_stopwords_prob", "weak_min_scale",
             "multicrop_max_scale", "blur_prob", "grayscale_prob", "momentum_tau")
    for k in probs:
        if not 0 <= getattr(args, k) <= 1:
            raise UserError(f"--{k.replace('_', '-')} {getattr(args, k)}: expected a value in [0, 1]")
    weights = (args.no_text_augment_prob, args.synonym_replacement_prob, args.random_swap_prob,
               args.random_deletion_prob)
    if args.text_augment and (min(weights) < 0 or sum(weights) <= 0):
        raise UserError("--text-augment: the four operation weights must be >= 0 with a positive sum")
    if not args.weak_min_scale < 1 or not 0.08 < args.multicrop_max_scale:
        raise UserError("--weak-min-scale must be below 1 and --multicrop-max-scale above 0.08")
    if args.text_augment and args.synonym_replacement_prob > 0:
        from mode.datacomp.filters import wordnet

        wordnet(args.wordnet_dir, needed_by="--text-augment's synonym replacement")  # at parse time, not in a worker


def _lock_run(args: argparse.Namespace) -> None:
    """One training per run name at a time: rank 0 holds `<logs>/<name>/.lock-train` until its process ends."""
    if not args.name:
        return  # open_clip names the run after the date and time: a new run
    from open_clip_train.distributed import world_info_from_env

    if world_info_from_env()[1] == 0:
        hold_for_process(os.path.join(args.logs, args.name), "train", f"training run named {args.name!r}")


def _resolve_dr(args: argparse.Namespace) -> None:
    dr_only = ("dataset_reinforcement_config", "dataset_reinforcement_mix_synthetic", "distill_loss_weights",
               "distill_logit_scale", "distill_teacher_dimension", "distill_average_after_softmax",
               "dataset_reinforcement_sample_sequential")
    if not args.dataset_reinforcement:
        given = [k for k in dr_only if getattr(args, k)]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} needs --dataset-reinforcement")
        return
    if getattr(args, "distill_model", None):
        raise UserError("--dataset-reinforcement distills from the stored teacher embeddings; drop --distill-model")
    if getattr(args, "siglip", False):  # ml-mobileclip's loss is the softmax CLIP loss: never a silent swap
        raise UserError("--dataset-reinforcement trains with the CLIP loss plus distillation; drop --siglip")
    if args.accum_freq != 1:
        raise UserError("--dataset-reinforcement supports --accum-freq 1 only")
    if not 0 <= args.dataset_reinforcement_mix_synthetic_ratio <= 1:
        raise UserError("--dataset-reinforcement-mix-synthetic-ratio: expected a probability in [0, 1]")
    if "coca" in args.model.lower():  # ml-mobileclip's create_loss trains a CoCa student with CoCa's loss, no KD
        raise UserError(f"--dataset-reinforcement distills into a CLIP student; --model {args.model} is a CoCa model")
    weights = args.distill_loss_weights or (1.0, 1.0)
    if len(weights) != 2 or not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) == 0:
        raise UserError(f"--distill-loss-weights {' '.join(map(str, weights))}: expected two finite weights >= 0 "
                        "(W_CLIP W_KD), not both 0")
    dims = args.distill_teacher_dimension or [-1]
    if dims != [-1] and min(dims) <= 0:
        raise UserError(f"--distill-teacher-dimension {' '.join(map(str, dims))}: expected each teacher's width "
                        "(> 0), or -1 alone for one teacher using every column")
    scales = args.distill_logit_scale or []
    if not all(math.isfinite(c) and c > 0 for c in scales):
        raise UserError(f"--distill-logit-scale {' '.join(map(str, scales))}: expected finite scales > 0")
    if weights[1] > 0 and not args.distill_logit_scale:
        raise UserError("--distill-loss-weights gives the distillation a weight: pass --distill-logit-scale "
                        "(the teachers' logit scale, e.g. 100)")
    teachers = len(args.distill_teacher_dimension or [-1])
    if args.distill_logit_scale and len(args.distill_logit_scale) not in (1, teachers):
        raise UserError(f"--distill-logit-scale: {len(args.distill_logit_scale)} values for {teachers} teachers")
    if args.dataset_reinforcement_config is None:
        raise UserError("--dataset-reinforcement needs --dataset-reinforcement-config (e.g. dr_augment_12m)")
    from dr.transforms import load_config

    # loaded (and checked) once, at parse time; the flag keeps the name or path the user gave, for the logs
    args.dr_augment_config = load_config(args.dataset_reinforcement_config)


def _resolve_expert(args: argparse.Namespace, argv: list[str]) -> list[str]:
    """Expert flags; returns argv, extended when the routed shards become the data."""
    if args.mode_work_dir is None:  # not given ("" trains dense on the whole pool with an expert recipe)
        given = last_of(argv, ("--ooc-ratio", "--ooc-mode", "--expert-data"))
        if given:
            raise UserError(f"{given} needs --mode-work-dir W --expert K")
    if not args.mode_work_dir:
        args.mode_work_dir = None
        if args.expert is not None:
            raise UserError("--expert needs --mode-work-dir W (the clustering work dir)")
        return argv
    if args.expert is None:
        raise UserError("--mode-work-dir needs --expert K (which coarse cluster to train)")
    ooc.check(args.ooc_ratio or 0.0, args.ooc_mode)
    if args.expert_data == "routed":
        _check_routed_mix(args)
        args.data_dir = _routed_shards(WorkDir(args.mode_work_dir).expert_shards_dir(args.expert))
        args.mode_work_dir = None  # the stock loader reads the routed shards; nothing to filter
        return [*argv, "--data-dir"]  # so that _resolve_data takes it as the last data flag
    if last_of(argv, _GROUPS["data"]) is None and not args.train_data:
        raise UserError(f"--expert {args.expert} filters the pool on the fly: pass the pool's shards (--data-dir "
                        "POOL/shards, --train-data SPEC or --toy-pool DIR), or --expert-data routed")
    from open_clip_patch.data import expert_counts

    n_expert, n_total = expert_counts(args.mode_work_dir, args.expert)
    args.mode_distinct_samples = ooc.expected_size(n_expert, n_total - n_expert, args.ooc_ratio or 0.0,
                                                   args.ooc_mode)
    if args.train_num_samples is None and last_of(argv, _GROUPS["samples"]) is None:
        args.train_num_samples = args.mode_distinct_samples
    return argv


def _routed_shards(folder) -> str:
    """The shards `mode route` wrote for an expert (its sizes.json names them), not whatever else lies there."""
    sizes = folder / "sizes.json"
    if not sizes.is_file():
        return str(folder)
    names = sorted(load_json(sizes, "route's sizes.json"), key=natural_key)
    others = sorted(p.name for p in folder.glob("*.tar") if p.name not in names)
    if others:
        log.warning(f"--expert-data routed: {folder} also holds {len(others)} tar(s) `mode route` did not write "
                    f"(e.g. {others[0]}); training reads only the routed ones")
    return "::".join(str(folder / n) for n in names)


def _check_routed_mix(args: argparse.Namespace) -> None:
    """Routed shards already hold `mode route`'s out-of-cluster pairs: say so where --ooc-* asks another mix."""
    wd = WorkDir(args.mode_work_dir)
    try:
        with open(WorkDir.summary(wd.route_dir)) as f:
            params = json.load(f)["params"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"--expert-data routed: no routed shards in {wd.root}: run `mode route` first")
    made = (params.get("ooc_ratio", 0.0), params.get("ooc_mode", "share"))
    asked = (args.ooc_ratio or 0.0, args.ooc_mode)
    if asked != made and asked[0] > 0:
        log.warning(f"--expert-data routed: the routed shards hold out-of-cluster pairs mixed by `mode route` "
                    f"(--ooc-ratio {made[0]} --ooc-mode {made[1]}); --ooc-ratio {asked[0]} --ooc-mode {asked[1]} "
                    "is not applied again")


def _resolve_data(args: argparse.Namespace, argv: Sequence[str]) -> None:
    from mode.core import shards

    winner = last_of(argv, _GROUPS["data"])
    spec = None
    if winner == "--toy-pool":
        from mode.core.layout import Pool
        from mode.toy.pool import ensure_pool

        pool = Pool(args.toy_pool)
        if not pool.toy_record.exists():
            log.info(f"No toy pool at {pool.root}: making one.")
            ensure_pool(str(pool.root))
        spec = str(pool.shards_dir)
    elif winner in ("--data-dir", "--data_dir"):
        spec = args.data_dir
    if spec is None:
        return
    paths = shards.expand(spec)
    args.train_data = shards.brace_spec(paths)
    if args.train_num_samples is None and last_of(argv, _GROUPS["samples"]) is None:  # (set for experts)
        args.train_num_samples = shards.total_samples(paths)
        if args.train_num_samples is None:
            raise UserError(f"no sizes.json or _stats.json gives the size of the shards in {spec!r}; "
                            "pass --train-num-samples N")


def _resolve_samples(args: argparse.Namespace, argv: Sequence[str]) -> None:
    if last_of(argv, _GROUPS["samples"]) != "--samples-seen":
        return
    if args.samples_seen < args.epochs:
        raise UserError(f"--samples-seen {args.samples_seen} is fewer than --epochs {args.epochs}")
    args.train_num_samples = args.samples_seen // args.epochs


def _resolve_warmup_epochs(args: argparse.Namespace, argv: Sequence[str]) -> None:
    if args.warmup_epochs is None or last_of(argv, ("--warmup", "--warmup-epochs")) == "--warmup":
        return  # a --warmup given after a recipe's --warmup-epochs wins, as the last flag does everywhere
    if args.warmup_epochs < 0:
        raise UserError(f"--warmup-epochs {args.warmup_epochs}: expected >= 0")
    if not args.train_num_samples:
        raise UserError("--warmup-epochs needs the epoch's size: pass --train-num-samples (or data with sizes)")
    from open_clip_train.distributed import world_info_from_env

    global_batch = args.batch_size * world_info_from_env()[2] * args.accum_freq
    args.warmup = math.ceil(args.warmup_epochs * math.ceil(args.train_num_samples / global_batch))


def _resolve_batch(args: argparse.Namespace, argv: Sequence[str]) -> None:
    if last_of(argv, _GROUPS["batch"]) != "--global-batch-size":
        return
    from open_clip_train.distributed import world_info_from_env

    world_size = world_info_from_env()[2]
    per_process = args.global_batch_size // (world_size * args.accum_freq)
    if per_process < 1:
        raise UserError(f"--global-batch-size {args.global_batch_size} is smaller than world size {world_size} "
                        f"x --accum-freq {args.accum_freq}")
    if per_process * world_size * args.accum_freq != args.global_batch_size:
        log.warning(f"Global batch {args.global_batch_size} is not divisible by world size {world_size} x "
                        f"accum freq {args.accum_freq}; using {per_process} per process (as DataComp does).")
    args.batch_size = per_process
