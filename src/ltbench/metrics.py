"""Evaluation metrics: top-1, per-class accuracy, many/medium/few, ECE, NLL, confusion matrix.

Groups follow the OLTR protocol as classifier-balancing/BCL/ProCo code it (spec §1.2): many has
more than `many` training images, few fewer than `few`, medium the rest; a group's accuracy is the
mean of its per-class accuracies, so it is NaN when the group is empty (CIFAR-10-LT has no few).
"""
import numpy as np
import torch
import torch.nn.functional as F

from ltbench.data.lt import GROUP_NAMES as GROUPS
from ltbench.data.lt import groups as group_of


def group_sizes(counts, many=100, few=20):
    g = group_of(counts, many, few)
    return {name: int((g == i).sum()) for i, name in enumerate(GROUPS)}


def ece(probs, target, bins=15):
    """Expected calibration error with equal-width confidence bins (Guo et al. 2017), in [0, 1]."""
    conf, pred = probs.max(1)
    correct = (pred == target).float()
    edges = torch.linspace(0, 1, bins + 1, device=probs.device)
    total = torch.zeros((), device=probs.device)
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.float().mean() * (conf[m].mean() - correct[m].mean()).abs()
    return float(total)


def evaluate(logits, target, counts, many=100, few=20):
    """All metrics of one evaluation; accuracies in percent."""
    logits, target = logits.float(), target.long()
    C = logits.shape[1]
    pred = logits.argmax(1)
    confusion = torch.zeros(C, C, dtype=torch.long, device=logits.device)
    confusion.index_put_((target, pred), torch.ones_like(target), accumulate=True)
    confusion = confusion.cpu().numpy()
    support = confusion.sum(1)
    per_class = np.where(support > 0, 100.0 * np.diag(confusion) / np.maximum(support, 1), np.nan)
    g = group_of(counts, many, few)
    out = {
        "top1": float(100.0 * (pred == target).float().mean()),
        "per_class": per_class,
        "confusion": confusion,
        "nll": float(F.cross_entropy(logits, target)),
        "ece": ece(logits.softmax(1), target),
    }
    for i, name in enumerate(GROUPS):
        sel = per_class[g == i]
        out[name] = float(np.nanmean(sel)) if len(sel) else float("nan")
    return out
