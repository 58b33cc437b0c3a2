"""Fixes to open_clip_train's zero-shot evaluation."""

import torch


def accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """Count of samples whose target is among the top-k logits, for each k (as open_clip_train's `accuracy`).

    open_clip_train 3.3.0 converts a one-element 1-D array with float(), which numpy 2 rejects; this
    returns the same numbers through a 0-d tensor.

    Args:
        output: logits [N, C].
        target: class indices [N].
        topk: the k values; each must be <= C.

    Returns:
        The number of hits for each k, as floats.
    """
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum().item()) for k in topk]
