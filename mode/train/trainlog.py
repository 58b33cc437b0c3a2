"""Read open_clip_train's text log (`logs/<name>/out.log`) back into numbers."""

from __future__ import annotations

import argparse
import re

from mode.core.errors import UserError


def epoch_losses(log_path: str, term: str = "contrastive_loss") -> dict[int, float]:
    """Mean loss `term` of each epoch, 1-based, as open_clip_train last logged it for that epoch.

    `term` is a loss name as open_clip_train logs it: contrastive_loss, distill_loss, or loss (the total).

    open_clip_train logs `Contrastive_loss: current (running mean)`; the running mean is reset every epoch,
    so the last line of an epoch holds the mean over that epoch's logged steps. A resumed run appends to
    the same log; its lines replace the earlier ones for the same epoch.
    """
    number = r"[-+]?(?:[\d.]+(?:e[-+]?\d+)?|nan|inf)"  # a diverged run logs nan or inf
    line_re = re.compile(rf"Train Epoch: (\d+) \[.*?\].*? {term.capitalize()}: {number} \(({number})\)")
    losses: dict[int, float] = {}
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = line_re.search(line)
            if m:
                losses[int(m.group(1)) + 1] = float(m.group(2))
    return dict(sorted(losses.items()))


# --------------------------------------------------------------------------------------------- `mode losses`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", help="logs/<name>/out.log")


def main(args: argparse.Namespace) -> None:
    terms = {name: epoch_losses(args.log, term) for name, term in
             (("contrastive", "contrastive_loss"), ("distill", "distill_loss"), ("total", "loss"))}
    terms = {name: losses for name, losses in terms.items() if losses}
    if not terms:
        raise UserError(f"no training loss lines in {args.log}")
    print("epoch  " + "  ".join(f"{name:>11s}" for name in terms))
    for epoch in sorted(set().union(*terms.values())):
        print(f"{epoch:5d}  " + "  ".join(f"{losses[epoch]:11.4f}" if epoch in losses else f"{'-':>11s}"
                                         for losses in terms.values()))
