"""Read open_clip_train's text log (`logs/<name>/out.log`) back into numbers."""

from __future__ import annotations

import re


def epoch_losses(log_path: str, term: str = "contrastive_loss") -> dict[int, float]:
    """Mean loss `term` of each epoch, 1-based, as open_clip_train last logged it for that epoch.

    `term` is a loss name as open_clip_train logs it: contrastive_loss, distill_loss, or loss (the total).

    open_clip_train logs `Contrastive_loss: current (running mean)`; the running mean is reset every epoch,
    so the last line of an epoch holds the mean over that epoch's logged steps. A resumed run appends to
    the same log; its lines replace the earlier ones for the same epoch.
    """
    line_re = re.compile(rf"Train Epoch: (\d+) \[.*?\].*? {term.capitalize()}: [-\d.e+]+ \(([-\d.e+]+)\)")
    losses: dict[int, float] = {}
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = line_re.search(line)
            if m:
                losses[int(m.group(1)) + 1] = float(m.group(2))
    return dict(sorted(losses.items()))
