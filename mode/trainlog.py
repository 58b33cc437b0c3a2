"""Read open_clip_train's text log (`logs/<name>/out.log`) back into numbers."""

from __future__ import annotations

import re

_LINE = re.compile(r"Train Epoch: (\d+) \[.*?\].*?Contrastive_loss: [-\d.e+]+ \(([-\d.e+]+)\)")


def epoch_losses(log_path: str) -> dict[int, float]:
    """Mean contrastive loss of each epoch, 1-based, as open_clip_train last logged it for that epoch.

    open_clip_train logs `Contrastive_loss: current (running mean)`; the running mean is reset every epoch,
    so the last line of an epoch holds the mean over that epoch's logged steps. A resumed run appends to
    the same log; its lines replace the earlier ones for the same epoch.
    """
    losses: dict[int, float] = {}
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _LINE.search(line)
            if m:
                losses[int(m.group(1)) + 1] = float(m.group(2))
    return dict(sorted(losses.items()))
