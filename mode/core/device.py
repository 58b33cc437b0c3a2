"""Which torch device a step runs on: `auto`, `cpu`, `cuda` or `cuda:N`, checked before any model is built."""

from __future__ import annotations

import os

from mode.core.errors import UserError


def pick_device(device: str = "auto") -> str:
    """`auto`: this rank's GPU (LOCAL_RANK) when CUDA is there, else the CPU; any other name is checked.

    Raises:
        UserError: a name torch does not know, or a CUDA device this machine does not have.
    """
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
        return "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {device!r}: no CUDA GPU is visible here; use --device cpu (or auto)")
        if parsed.index is not None and parsed.index >= count:
            raise UserError(f"--device {device!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif parsed.type != "cpu" and parsed.type != "mps":
        raise UserError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    return device
