"""The classic long-tailed losses, as pure functions of tensors.

Every function takes `logits` (B x C, any float dtype, any device), `target` (B, int64) and,
where the loss needs them, the per-class training `counts` (length C; a tensor or a sequence).
Quantities derived from counts (log-priors, margins, class weights) are computed in float64
and cast to the logits' dtype and device at the point of use, so the same call works for a
float16 batch on a GPU and a float64 gradcheck on the CPU.

Reductions follow PyTorch's `F.cross_entropy`: with a class `weight` the batch mean divides
by sum_i w_{y_i}, not by B, which is what the LDAM/DRW code trains with.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------
# Checks and class statistics

def _check_batch(logits, target, where):
    if logits.dim() != 2:
        raise ValueError(f"{where}: logits must be B x C, got shape {tuple(logits.shape)}; flatten extra dims first")
    if target.shape != logits.shape[:1]:
        raise ValueError(f"{where}: target must have shape ({logits.shape[0]},) to match logits "
                         f"{tuple(logits.shape)}, got {tuple(target.shape)}")


def _counts64(counts, num_classes=None, device=None, where="counts"):
    """Counts as a float64 tensor, checked: 1-D, length C, every class present."""
    if device is None:
        device = counts.device if torch.is_tensor(counts) else "cpu"
    n = torch.as_tensor(counts, dtype=torch.float64).to(device)
    if n.dim() != 1:
        raise ValueError(f"{where}: counts must be 1-D (one training count per class), got shape {tuple(n.shape)}")
    if num_classes is not None and n.numel() != num_classes:
        raise ValueError(f"{where}: counts has {n.numel()} classes but logits have {num_classes}; "
                         "pass the training counts of the same class set")
    if not bool((n > 0).all()):
        k = int((n <= 0).nonzero()[0])
        raise ValueError(f"{where}: class {k} has count {n[k].item():g}; every class needs at least one "
                         "training image (log-prior and margin are undefined otherwise)")
    return n


def _log_prior(counts, logits, where):
    """log pi_k = log(n_k / sum_j n_j), computed in float64, returned in the logits' dtype."""
    n = _counts64(counts, logits.shape[1], logits.device, where)
    return (n / n.sum()).log().to(logits.dtype)


def _weight_like(weight, logits, where):
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=logits.dtype, device=logits.device)
    if w.shape != logits.shape[1:]:
        raise ValueError(f"{where}: weight must have one entry per class ({logits.shape[1]}), "
                         f"got shape {tuple(w.shape)}")
    return w


def class_balanced_weights(counts, beta):
    """Class-Balanced weights from the effective number of samples (Cui et al., CVPR 2019).

    E_k = (1 - beta^n_k) / (1 - beta), w_k = 1 / E_k, rescaled so that sum_k w_k = C
    (richardaecn/class-balanced-loss@1d78572:src/cifar_main.py; reused by DRW in
    kaidic/LDAM-DRW@2536330:cifar_train.py). beta = 0 gives all ones; beta -> 1 approaches
    inverse frequency. Returns float64 on the counts' device (CPU for a sequence).
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"class_balanced_weights: beta must be in [0, 1), got {beta}; the paper uses 0.9999")
    n = _counts64(counts, where="class_balanced_weights")
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64, device=n.device), n))
    return w * (n.numel() / w.sum())


def ldam_margins(counts, max_m=0.5):
    """LDAM per-class margins Delta_k = c / n_k^(1/4), with c chosen so that max_k Delta_k = max_m
    (kaidic/LDAM-DRW@2536330:losses.py). Returns float64 on the counts' device."""
    n = _counts64(counts, where="ldam_margins")
    m = n.pow(-0.25)
    return m * (max_m / m.max())


# ----------------------------------------------------------------------------------------
# Losses

def cross_entropy(logits, target, weight=None):
    """Softmax cross-entropy, mean over the batch; weighted mean divides by sum_i w_{y_i}."""
    _check_batch(logits, target, "cross_entropy")
    return F.cross_entropy(logits, target, weight=_weight_like(weight, logits, "cross_entropy"))


def focal(logits, target, gamma, weight=None):
    """Focal loss as the LDAM code computes it (kaidic/LDAM-DRW@2536330:losses.py).

    ce_i = w_{y_i} * (-log softmax(o_i)_{y_i}), p_i = exp(-ce_i) from that *weighted* ce,
    loss = mean_i (1 - p_i)^gamma * ce_i. The plain mean over B (not sum of weights) and the
    weighted p are both what the official code trains with.
    """
    _check_batch(logits, target, "focal")
    ce = F.cross_entropy(logits, target, weight=_weight_like(weight, logits, "focal"), reduction="none")
    p = torch.exp(-ce)
    return ((1.0 - p) ** gamma * ce).mean()


def ldam(logits, target, counts, max_m=0.5, s=30.0, weight=None):
    """LDAM loss (Cao et al., NeurIPS 2019; kaidic/LDAM-DRW@2536330:losses.py).

    `logits` are the raw cosines u of a normed linear head. The true-class cosine loses its
    margin Delta_y before the scale: CE(s * (u - Delta_y * onehot(y)), y), weighted as in
    `cross_entropy` (DRW passes class-balanced weights here).
    """
    _check_batch(logits, target, "ldam")
    n = _counts64(counts, logits.shape[1], logits.device, "ldam")
    m = ldam_margins(n, max_m).to(logits.dtype)
    margin = F.one_hot(target, logits.shape[1]).to(logits.dtype) * m[target].unsqueeze(1)
    return cross_entropy(s * (logits - margin), target, weight)


def logit_adjusted(logits, target, counts, tau=1.0, weight=None):
    """Logit-adjusted loss CE(o + tau * log pi, y), pi = counts / sum(counts)
    (Menon et al., ICLR 2021; google-research/google-research:logit_adjustment/utils.py, the
    "LogitAdjust" loss of BCL and ProCo). The official code adds log(pi^tau + 1e-12); the
    1e-12 only guards empty classes, which counts here may not have. Test-time logits stay raw.
    """
    _check_batch(logits, target, "logit_adjusted")
    return cross_entropy(logits + tau * _log_prior(counts, logits, "logit_adjusted"), target, weight)


def balanced_softmax(logits, target, counts):
    """Balanced Softmax CE(o + log n, y) (Ren et al., NeurIPS 2020;
    jiawei-ren/BalancedMetaSoftmax-Classification@34a61e4:loss/BalancedSoftmaxLoss.py).
    Equal to `logit_adjusted` with tau = 1: log n and log pi differ by a per-row constant."""
    _check_batch(logits, target, "balanced_softmax")
    n = _counts64(counts, logits.shape[1], logits.device, "balanced_softmax")
    return cross_entropy(logits + n.log().to(logits.dtype), target)


def posthoc_adjust(logits, counts, tau):
    """Post-hoc logit adjustment for evaluation: o - tau * log pi
    (google-research/google-research:logit_adjustment/main.py)."""
    if logits.dim() != 2:
        raise ValueError(f"posthoc_adjust: logits must be B x C, got shape {tuple(logits.shape)}")
    return logits - tau * _log_prior(counts, logits, "posthoc_adjust")


def soft_cross_entropy(logits, soft_target):
    """-mean_i sum_k t_ik log softmax(o_i)_k. Rows of t need not sum to 1 (mixup, GLMC)."""
    if logits.dim() != 2 or soft_target.shape != logits.shape:
        raise ValueError(f"soft_cross_entropy: logits and soft_target must both be B x C, got "
                         f"{tuple(logits.shape)} and {tuple(soft_target.shape)}")
    return -(soft_target.to(logits.dtype) * F.log_softmax(logits, dim=1)).sum(1).mean()


def mixup_cross_entropy(logits, y_a, y_b, lam):
    """Mixup loss lam * CE(o, y_a) + (1 - lam) * CE(o, y_b) (Zhang et al., ICLR 2018; the mixup
    baseline of kaidic/LDAM-DRW@2536330)."""
    return lam * cross_entropy(logits, y_a) + (1.0 - lam) * cross_entropy(logits, y_b)
