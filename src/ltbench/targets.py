"""TSC targets: generation, quality checks, and their assignment to classes.

Targets are C points on the unit sphere in R^dim spread out by minimising the uniformity
loss (LTH14/targeted-supcon@c4f15eb:target_generation.py). Classes are matched to targets
by the Hungarian algorithm on class centroids, once or online with EMA centroids as the
official ImageNet code does (LTH14/targeted-supcon@c4f15eb:moco/builder.py, `KCL.forward`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

# Measured after the default 10k Adam steps: every off-diagonal cosine within 5e-8 of -1/(C-1)
# for C = 10 and 100 at dim 128 (seeds 0-2), 4e-6 at C = dim + 1 = 129. In low dimension the
# same budget stalls far off (C = 10, dim = 10: 0.26; C = 3, dim = 2: 0.15), and the check says so.
SIMPLEX_TOL = 1e-5


def _uniformity_excess(x, tau):
    """Uniformity loss of U = normalize(x) minus its constant self term, and its gradient in x.

    L_u = (1/C) sum_i log sum_j exp(u_i.u_j / tau) = 1/tau + (1/C) sum_i log1p(s_i),
    s_i = sum_{j != i} exp((u_i.u_j - 1) / tau). The self term e^{1/tau} swamps the rest
    (L_u moves in its 5th-7th digit), so the excess is what separates iterates. The gradient
    is written out because autograd doubles the cost of these tiny steps:
    dL/dU = (P + P^T) U / (C tau) with P_ij = exp((u_i.u_j - 1)/tau) / (1 + s_i) off the
    diagonal, then projected through the row normalisation.
    """
    C = x.shape[0]
    norm = x.norm(dim=1, keepdim=True)
    u = x / norm
    e = ((u @ u.T - 1.0) / tau).fill_diagonal_(float("-inf")).exp_()
    s = e.sum(1, keepdim=True)
    p = e / (1.0 + s)
    grad_u = (p + p.T) @ u / (C * tau)
    grad_x = (grad_u - u * (grad_u * u).sum(1, keepdim=True)) / norm
    return torch.log1p(s).mean(), u, grad_x


def generate_targets(num_classes, dim, tau=0.07, iters=10000, lr=1e-3, seed=0, device="cpu"):
    """Optimise C unit targets in R^dim for uniformity (LTH14/targeted-supcon@c4f15eb:target_generation.py).

    X ~ N(0, 1) from torch.Generator(seed), U = row-normalise(X) at every step, loss
    L_u = (1/C) sum_i log sum_j exp(u_i.u_j / tau) (j = i included), full-batch Adam(lr) on X
    for `iters` steps, keeping the U with the lowest loss seen (not the last one). Runs in
    float64: in float32 the loss cannot tell near-optimal iterates apart. Returns
    (U as float32 numpy C x dim, info) where info holds the run settings, the best and final
    loss and `check_targets(U)`.
    """
    if num_classes < 2 or dim < 2:
        raise ValueError(f"generate_targets: need num_classes >= 2 and dim >= 2, got {num_classes} and {dim}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_classes, dim, generator=g, dtype=torch.float64).to(device)
    opt = torch.optim.Adam([x], lr=lr)
    best, best_u, best_iter = math.inf, None, -1
    for it in range(iters + 1):
        excess, u, x.grad = _uniformity_excess(x, tau)
        excess = excess.item()
        if excess < best:
            best, best_u, best_iter = excess, u, it
        if it < iters:  # the last pass only scores the final iterate
            opt.step()
    U = best_u.float().cpu().numpy()
    info = dict(num_classes=num_classes, dim=dim, tau=tau, iters=iters, lr=lr, seed=seed,
                best_loss=1.0 / tau + best, best_iter=best_iter, final_loss=1.0 / tau + excess)
    info.update(check_targets(U, tau))
    return U, info


def _off_diagonal_cosines(U, block=2048):
    """Yield row blocks of U U^T with the self entries set to NaN, so C x C is never held at once."""
    for start in range(0, U.shape[0], block):
        cos = U[start:start + block] @ U.T
        rows = np.arange(start, min(start + block, U.shape[0]))
        cos[rows - start, rows] = np.nan
        yield cos


def check_targets(U, tau=0.07, tol=SIMPLEX_TOL):
    """Quality of a target set U (C x dim unit rows), as a JSON-ready dict.

    loss: L_u at tau; max_cos / min_cos: extreme off-diagonal cosines; min_dist: the smallest
    pairwise Euclidean distance. When C <= dim + 1 the optimum is the regular simplex with
    every off-diagonal cosine -1/(C-1): simplex_max_dev is the largest |cos + 1/(C-1)| and
    simplex_ok says whether it is within tol. Otherwise the simplex fields are None.
    """
    U = np.asarray(U, dtype=np.float64)
    if U.ndim != 2 or U.shape[0] < 2:
        raise ValueError(f"check_targets: U must be C x dim with C >= 2, got shape {U.shape}")
    C, dim = U.shape
    norm_dev = float(np.abs(np.linalg.norm(U, axis=1) - 1.0).max())
    if norm_dev > 1e-5:
        raise ValueError(f"check_targets: rows of U must be unit vectors (max | |u| - 1 | = {norm_dev:.2e}); "
                         "normalise the targets first")
    U = U / np.linalg.norm(U, axis=1, keepdims=True)
    max_cos, min_cos, excess = -np.inf, np.inf, 0.0
    for cos in _off_diagonal_cosines(U):
        max_cos = max(max_cos, float(np.nanmax(cos)))
        min_cos = min(min_cos, float(np.nanmin(cos)))
        excess += float(np.log1p(np.nansum(np.exp((cos - 1.0) / tau), axis=1)).sum())
    applicable = C <= dim + 1
    simplex_cos = -1.0 / (C - 1)
    dev = max(max_cos - simplex_cos, simplex_cos - min_cos) if applicable else None
    return dict(num_classes=C, dim=dim, loss=1.0 / tau + excess / C, max_cos=max_cos, min_cos=min_cos,
                min_dist=math.sqrt(max(0.0, 2.0 - 2.0 * max_cos)), unit_norm_max_dev=norm_dev,
                simplex_applicable=applicable, simplex_cos=simplex_cos if applicable else None,
                simplex_max_dev=dev, simplex_tol=tol if applicable else None,
                simplex_ok=bool(dev <= tol) if applicable else None)


def save_targets(U, info, npy_path, json_path):
    """Write U as a float32 .npy (exactly at npy_path) and info as indented JSON."""
    npy_path, json_path = Path(npy_path), Path(json_path)
    for p in (npy_path, json_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    with open(npy_path, "wb") as f:  # a file object stops np.save from appending ".npy"
        np.save(f, np.asarray(U, dtype=np.float32))
    json_path.write_text(json.dumps(info, indent=2) + "\n")


def _as_float64(a):
    if torch.is_tensor(a):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def hungarian_assign(centroids, targets):
    """Assign one target to each class maximising the total cosine
    (LTH14/targeted-supcon@c4f15eb:moco/builder.py: linear_sum_assignment on -cosine).

    centroids: C x d (row = class), targets: C x d; both are normalised here. Returns an int64
    array perm with perm[class] = index of its target.
    """
    c, t = _as_float64(centroids), _as_float64(targets)
    if c.ndim != 2 or c.shape != t.shape:
        raise ValueError(f"hungarian_assign: centroids and targets must both be C x d, got {c.shape} and {t.shape}")
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    rows, cols = linear_sum_assignment(-(c @ t.T))
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return perm


def class_centroids(features, labels, num_classes):
    """Normalised per-class mean of `features` (N x d; pass the L2-normalised projections, as
    the official code averages them). Every class needs at least one sample."""
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"class_centroids: features must be N x d with labels (N,), got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    labels = labels.long()
    count = torch.bincount(labels, minlength=num_classes)
    if count.numel() != num_classes:
        raise ValueError(f"class_centroids: labels go up to {count.numel() - 1} but num_classes is {num_classes}")
    missing = (count == 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"class_centroids: classes {missing[:10]}{' ...' if len(missing) > 10 else ''} have no "
                         "samples; compute centroids on a set holding every class (e.g. the whole training set)")
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    return F.normalize(sums.index_add_(0, labels, features), dim=1)


@torch.no_grad()
def ema_update(centroids, feats, labels, momentum=0.9):
    """One online-centroid step of TSC (LTH14/targeted-supcon@c4f15eb:moco/builder.py):
    for each class k present in `labels`, c_k <- normalize(m c_k + (1 - m) normalize(mean_k)),
    mean_k the batch mean of its rows of `feats` (the normalised queries in the official
    code). Absent classes keep their centroid. Returns a new C x d tensor.
    """
    C, d = centroids.shape
    if feats.dim() != 2 or feats.shape[1] != d or labels.shape != feats.shape[:1]:
        raise ValueError(f"ema_update: feats must be N x {d} with labels (N,), got "
                         f"{tuple(feats.shape)} and {tuple(labels.shape)}")
    labels = labels.long()
    sums = torch.zeros_like(centroids).index_add_(0, labels, feats.to(centroids.dtype))
    present = torch.zeros(C, dtype=torch.bool, device=centroids.device).index_fill_(0, labels, True)
    # normalising the sum is normalising the mean
    moved = F.normalize(momentum * centroids + (1.0 - momentum) * F.normalize(sums, dim=1), dim=1)
    return torch.where(present[:, None], moved, centroids)
