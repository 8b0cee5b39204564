"""Contrastive losses of the long-tailed methods, as pure functions of tensors.

Every embedding passed in must already be L2-normalised (the caller owns `F.normalize`; a
check here would cost a device sync every step). Labels are int tensors of class indices.
Log-sum-exps run with the self term masked to -inf, which equals the max-shifted
exp/sum/log of the official code in exact arithmetic and does not overflow.

- `supcon`: SupCon (Khosla et al., 2020), optionally with extra labelled rows (the TSC
  targets of the CIFAR code) and KCL's K sampled positives (Kang et al., 2021).
- `balanced_supcon`: BCL's class-averaged, class-complemented SupCon (Zhu et al., 2022).
- `psc`: Hybrid-PSC's prototype loss (Wang et al., 2021).
"""
from __future__ import annotations

import torch


def _check_labels(labels, n, where, name="labels"):
    if labels.shape != (n,):
        raise ValueError(f"{where}: {name} must have shape ({n},) to match the embeddings, got {tuple(labels.shape)}")
    return labels.long()


def kcl_positive_mask(same_class, same_sample, k, generator=None):
    """KCL positives: every other view of the anchor's own sample, plus k items drawn
    uniformly without replacement from the remaining same-class items (all of them when
    fewer than k exist). `same_class` must already exclude the anchor itself; `same_sample`
    marks the anchor's other views. Keeping the k smallest of iid uniforms over the
    candidates draws a uniform k-subset, as the official k sequential draws do
    (LTH14/targeted-supcon@c4f15eb:tsc_cifar_loss.py, `k > 0` branch).
    """
    candidates = same_class & ~same_sample
    score = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    score = score.masked_fill(~candidates, 2.0)  # non-candidates sort last
    pick = score.topk(min(k, candidates.shape[1]), dim=1, largest=False).indices
    picked = torch.zeros_like(candidates).scatter_(1, pick, True) & candidates
    return same_sample | picked


def supcon(features, labels, temperature=0.07, base_temperature=None, extra=None, extra_labels=None,
           extra_weight=1.0, k=0, generator=None):
    """Supervised contrastive loss, 'all' contrast mode
    (HobbitLong/SupContrast:losses.py; the TSC copy LTH14/targeted-supcon@c4f15eb:tsc_cifar_loss.py).

    features: B x V x d, one row per sample and view. Items are the B*V views; every item is
    an anchor and every other item is a contrast. For anchor i with positive set P_i
    (same label, i itself excluded):

        L_i = -(temperature / base_temperature) * (1/|P_i|) sum_{p in P_i} w_p log p_ip,
        log p_ip = z_i.z_p / t - log sum_{j != i} exp(z_i.z_j / t)

    w_p = 1, except `extra_weight` for positives that are extra rows. The loss is the mean
    of L_i over anchors with |P_i| > 0. SupContrast divides by |P_i| = 0 and yields NaN for
    such anchors; here they are left out of the mean, and a batch without any positive
    returns 0 (still attached to the graph). With V >= 2 every anchor has a positive (its
    other views), so this only matters for V = 1. `base_temperature=None` means the
    temperature itself, i.e. a factor of exactly 1 (both official defaults are 0.07).

    extra: M x d rows with labels `extra_labels` (M,), appended as M more samples whose V
    views are all that same row, so they are anchors, positives of their class and
    negatives of every other class, exactly like batch samples. This is the TSC CIFAR code
    (LTH14/targeted-supcon@c4f15eb:cifar_dirty/main_supcon_imba.py): each of the C targets
    repeated `target_repeat` times (25) with its assigned class label, appended to both
    views, so 2(B + 25C) anchors in the mean. Build it as
    `extra = targets[order].repeat_interleave(r, 0)`, `extra_labels = arange(C).repeat_interleave(r)`.
    `extra_weight` is TSC's lambda: it scales the log-probabilities of extra-row positives in
    the sum while |P_i| still counts them once each, the common denominator of
    LTH14/targeted-supcon@c4f15eb:moco/builder.py; the CIFAR code has no lambda (1.0).

    k: 0 is SupCon (all same-class positives). k > 0 is KCL: positives are the anchor's
    other views plus k same-class items drawn per anchor (`kcl_positive_mask`; extra rows
    are drawn like any other item, as in the CIFAR code with targets). `generator` seeds the
    draw and must live on the features' device. KCL-CIFAR is `supcon(f, y, k=6)`; TSC-CIFAR
    is `supcon(f, y, extra=..., extra_labels=...)`, optionally with k.
    """
    where = "supcon"
    if features.dim() != 3:
        raise ValueError(f"{where}: features must be B x V x d (samples x views x dim), got shape "
                         f"{tuple(features.shape)}; use features.unsqueeze(1) for a single view")
    B, V, d = features.shape
    labels = _check_labels(labels, B, where)
    if base_temperature is None:
        base_temperature = temperature
    if (extra is None) != (extra_labels is None):
        raise ValueError(f"{where}: pass extra and extra_labels together (targets and the classes they belong to)")
    is_extra = torch.zeros(B, dtype=torch.bool, device=features.device)
    if extra is not None:
        if extra.dim() != 2 or extra.shape[1] != d:
            raise ValueError(f"{where}: extra must be M x {d} (one row per appended target), got shape {tuple(extra.shape)}")
        extra_labels = _check_labels(extra_labels, extra.shape[0], where, "extra_labels")
        features = torch.cat([features, extra.to(features.dtype).unsqueeze(1).expand(-1, V, -1)])
        labels = torch.cat([labels, extra_labels.to(labels.device)])
        is_extra = torch.cat([is_extra, torch.ones(extra.shape[0], dtype=torch.bool, device=features.device)])
    n = features.shape[0]

    # view-major order, as SupContrast's cat(unbind(features, 1)): item v*n + s
    z = features.transpose(0, 1).reshape(V * n, d)
    y = labels.repeat(V)
    sample = torch.arange(n, device=z.device).repeat(V)
    self_mask = torch.eye(V * n, dtype=torch.bool, device=z.device)

    logits = z @ z.T / temperature
    log_prob = logits - torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)

    positive = (y[:, None] == y[None, :]) & ~self_mask
    if k > 0:
        same_sample = (sample[:, None] == sample[None, :]) & ~self_mask
        positive = kcl_positive_mask(positive, same_sample, k, generator)
    weight = positive.to(z.dtype)
    if extra_weight != 1.0:
        weight = weight * (1.0 + (extra_weight - 1.0) * is_extra.repeat(V).to(z.dtype))

    n_pos = positive.sum(1)
    loss = -(temperature / base_temperature) * (weight * log_prob).sum(1) / n_pos.clamp(min=1)
    has_pos = (n_pos > 0).to(z.dtype)
    return (loss * has_pos).sum() / has_pos.sum().clamp(min=1)


def balanced_supcon(views, prototypes, target, temperature):
    """BCL loss: class-averaged SupCon over two views plus one prototype per class
    (FlamieZhu/BCL@f72d070:loss/contrastive.py, `BalSCL`).

    views: B x 2 x d, prototypes: C x d (row k is class k's prototype, gradients flow into
    it), target: B. S = {all 2B view embeddings, the C prototypes}; the anchors are the 2B
    view embeddings. For anchor i, A_k = the items of class k in S without i, P_i = A_{y_i}:

        L_i = -(1/|P_i|) sum_{p in P_i} log[ exp(z_i.s_p/t) / sum_k (1/|A_k|) sum_{j in A_k} exp(z_i.s_j/t) ]

    A class absent from the batch still has its prototype (|A_k| = 1), so every class is a
    negative with equal weight whatever its batch frequency. Returns the mean over 2B anchors.
    """
    where = "balanced_supcon"
    if views.dim() != 3 or views.shape[1] != 2:
        raise ValueError(f"{where}: views must be B x 2 x d (two views per sample), got shape {tuple(views.shape)}")
    B, _, d = views.shape
    if prototypes.dim() != 2 or prototypes.shape[1] != d:
        raise ValueError(f"{where}: prototypes must be C x {d} (one row per class), got shape {tuple(prototypes.shape)}")
    C = prototypes.shape[0]
    target = _check_labels(target, B, where, "target")

    s = torch.cat([views[:, 0], views[:, 1], prototypes.to(views.dtype)])
    y = torch.cat([target, target, torch.arange(C, device=target.device)])
    # index_add_ (unlike bincount) raises on a label >= C instead of growing the count vector
    count = torch.zeros(C, dtype=s.dtype, device=s.device).index_add_(0, y, torch.ones_like(y, dtype=s.dtype))

    anchor_y = y[: 2 * B]
    same = anchor_y[:, None] == y[None, :]
    self_mask = torch.eye(2 * B, s.shape[0], dtype=torch.bool, device=s.device)
    class_size = count[y][None, :] - same.to(s.dtype)  # |A_{y_j}| as seen from anchor i

    logits = s[: 2 * B] @ s.T / temperature
    log_den = torch.logsumexp((logits - class_size.log()).masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    positive = (same & ~self_mask).to(s.dtype)
    loss = -(positive * (logits - log_den)).sum(1) / positive.sum(1)
    return loss.mean()


def psc(z, prototypes, target, temperature):
    """Hybrid-PSC prototype loss (Wang et al., CVPR 2021; no official code, as quoted by the
    CENG502-Projects/CENG502-Spring2022 reproduction):

        L_i = -log[ exp(z_i.p_{y_i}/t) / sum_{j != y_i} exp(z_i.p_j/t) ]

    The denominator leaves the positive prototype out, as quoted, so L_i can be negative.
    z: B x d, prototypes: C x d (C >= 2), target: B. Returns the mean over the batch.
    """
    where = "psc"
    if z.dim() != 2 or prototypes.dim() != 2 or prototypes.shape[1] != z.shape[1]:
        raise ValueError(f"{where}: z must be B x d and prototypes C x d with the same d, got "
                         f"{tuple(z.shape)} and {tuple(prototypes.shape)}")
    if prototypes.shape[0] < 2:
        raise ValueError(f"{where}: need at least 2 prototypes (the denominator sums over the other classes), "
                         f"got {prototypes.shape[0]}")
    target = _check_labels(target, z.shape[0], where, "target")
    logits = z @ prototypes.to(z.dtype).T / temperature
    positive = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, target[:, None], True)
    log_den = torch.logsumexp(logits.masked_fill(positive, float("-inf")), dim=1)
    return (log_den - logits.gather(1, target[:, None]).squeeze(1)).mean()
