"""`mode <step> ...`: one subcommand per pipeline step (also `python -m mode`)."""

from __future__ import annotations

import argparse
import sys

from mode.errors import UserError


def _toy(args: argparse.Namespace) -> None:
    from mode.toy import ensure_pool

    record = ensure_pool(args.out, samples=args.samples, shards=args.shards, seed=args.seed,
                         eval_per_class=args.eval_per_class, workers=args.workers, overwrite=args.overwrite)
    noise = ", ".join(f"{k} {v}" for k, v in record["noise"].items())
    print(f"toy pool at {args.out}: {record['samples']} rows, {record['downloaded']} in {record['shards']} shards; "
          f"{noise}; tasks {', '.join(record['eval_tasks'])}")


def _losses(args: argparse.Namespace) -> None:
    from mode.trainlog import epoch_losses

    losses = epoch_losses(args.log)
    if not losses:
        raise UserError(f"no training loss lines in {args.log}")
    for epoch, loss in losses.items():
        print(f"epoch {epoch:3d}  contrastive loss {loss:.4f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mode", description=__doc__)
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    p = sub.add_parser("toy", help="write the embedded toy pool (DataComp layout + eval tasks)")
    p.add_argument("out", help="pool directory to create")
    p.add_argument("--samples", type=int, default=4000, help="metadata rows (about 2%% fail to download)")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-per-class", type=int, default=20, help="evaluation images per class and task")
    p.add_argument("--workers", type=int, default=1, help="processes drawing shards")
    p.add_argument("--overwrite", action="store_true", help="replace a toy pool made with other parameters")
    p.set_defaults(func=_toy)

    p = sub.add_parser("losses", help="per-epoch mean contrastive loss from an open_clip_train out.log")
    p.add_argument("log", help="logs/<name>/out.log")
    p.set_defaults(func=_losses)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e.strerror}: {e.filename}", file=sys.stderr)
        return 2
    return 0
