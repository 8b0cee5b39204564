"""Contrastive losses against their equations written out per anchor, and tiny hand cases."""
import math

import pytest
import torch
import torch.nn.functional as F

from ltbench.contrastive import balanced_supcon, kcl_positive_mask, psc, supcon


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def angles(*degrees):
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in degrees], dtype=torch.float64)


# ----------------------------------------------------------------------------------------
# Reference implementations: one anchor at a time, straight from the equations

def supcon_loop(items, item_labels, t, base_t, extra_rows=(), extra_weight=1.0, positives=None):
    """items: list of vectors, every one an anchor; positives[i] overrides the positive set."""
    losses = []
    for i, zi in enumerate(items):
        others = [j for j in range(len(items)) if j != i]
        pos = positives[i] if positives is not None else [j for j in others if item_labels[j] == item_labels[i]]
        if not pos:
            continue
        log_den = math.log(sum(math.exp(float(zi @ items[j]) / t) for j in others))
        total = sum((extra_weight if j in extra_rows else 1.0) * (float(zi @ items[j]) / t - log_den) for j in pos)
        losses.append(-(t / base_t) * total / len(pos))
    return sum(losses) / len(losses) if losses else 0.0


def flatten_views(features, labels):
    """The SupContrast item order: all samples' view 0, then all samples' view 1, ..."""
    B, V, _ = features.shape
    items = [features[b, v] for v in range(V) for b in range(B)]
    return items, [int(labels[b]) for v in range(V) for b in range(B)]


def bcl_loop(views, prototypes, target, t):
    B, C = views.shape[0], prototypes.shape[0]
    items = [views[b, 0] for b in range(B)] + [views[b, 1] for b in range(B)] + list(prototypes)
    labels = [int(y) for y in target] * 2 + list(range(C))
    losses = []
    for i in range(2 * B):
        A = {k: [j for j in range(len(items)) if j != i and labels[j] == k] for k in range(C)}
        den = sum(sum(math.exp(float(items[i] @ items[j]) / t) for j in A[k]) / len(A[k]) for k in range(C))
        P = A[labels[i]]
        losses.append(-sum(float(items[i] @ items[p]) / t - math.log(den) for p in P) / len(P))
    return sum(losses) / len(losses)


# ----------------------------------------------------------------------------------------
# SupCon

@pytest.mark.parametrize("t, base_t", [(0.1, None), (0.5, 0.07), (0.07, 0.07)])
def test_supcon_matches_per_anchor_equation(t, base_t):
    f = unit(7, 2, 5, seed=1)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 3])
    items, labels = flatten_views(f, y)
    want = supcon_loop(items, labels, t, base_t if base_t is not None else t)
    assert supcon(f, y, temperature=t, base_temperature=base_t).item() == pytest.approx(want, rel=1e-12)


def test_supcon_three_views():
    f = unit(4, 3, 6, seed=2)
    y = torch.tensor([1, 1, 0, 2])
    items, labels = flatten_views(f, y)
    assert supcon(f, y, temperature=0.2).item() == pytest.approx(supcon_loop(items, labels, 0.2, 0.2), rel=1e-12)


def test_supcon_hand_computed_quarter_turns():
    # views at 0/90 degrees (sample 0) and 180/270 degrees (sample 1), t = 1: every anchor sees
    # cosines {0, -1, 0}. Different labels: the one positive has cosine 0.
    f = angles(0, 90, 180, 270).view(2, 2, 2)
    base = math.log(2 + math.exp(-1))
    assert supcon(f, torch.tensor([0, 1]), temperature=1.0).item() == pytest.approx(base, rel=1e-12)
    # same label: all three others are positives, mean log-prob = (0 - 1 + 0)/3 - base
    assert supcon(f, torch.tensor([0, 0]), temperature=1.0).item() == pytest.approx(base + 1 / 3, rel=1e-12)


def test_supcon_base_temperature_is_a_plain_factor():
    f, y = unit(5, 2, 4, seed=3), torch.tensor([0, 0, 1, 1, 2])
    one = supcon(f, y, temperature=0.5)
    assert supcon(f, y, temperature=0.5, base_temperature=0.5).item() == pytest.approx(one.item(), rel=1e-14)
    assert supcon(f, y, temperature=0.5, base_temperature=0.25).item() == pytest.approx(2 * one.item(), rel=1e-14)


def test_supcon_distinct_labels_two_views_is_nt_xent():
    f = unit(6, 2, 8, seed=4)
    t = 0.3
    z = torch.cat([f[:, 0], f[:, 1]])
    logits = (z @ z.T / t).fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(6, 12), torch.arange(0, 6)])
    want = F.cross_entropy(logits, partner)
    assert supcon(f, torch.arange(6), temperature=t).item() == pytest.approx(want.item(), rel=1e-12)


def test_supcon_anchors_without_positive_leave_the_mean():
    f = unit(3, 1, 4, seed=5)
    y = torch.tensor([0, 0, 1])  # one view: the class-1 anchor has no positive
    items, labels = flatten_views(f, y)
    got = supcon(f, y, temperature=0.1).item()
    assert math.isfinite(got)
    assert got == pytest.approx(supcon_loop(items, labels, 0.1, 0.1), rel=1e-12)
    # the two class-0 anchors alone: each is -log p of the other
    z = f[:, 0]
    lp = [z[i] @ z[1 - i] / 0.1 - torch.logsumexp(torch.stack([z[i] @ z[j] / 0.1 for j in range(3) if j != i]), 0)
          for i in (0, 1)]
    assert got == pytest.approx(-(lp[0] + lp[1]).item() / 2, rel=1e-12)


def test_supcon_no_positive_at_all_is_zero_and_keeps_the_graph():
    f = unit(3, 1, 4, seed=6).requires_grad_()
    loss = supcon(f, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(f.grad, torch.zeros_like(f))


def test_supcon_with_targets_is_the_tsc_cifar_layout():
    # TSC CIFAR: targets repeated r times, appended to both views as labelled samples
    B, C, r, d, t = 5, 3, 2, 6, 0.07
    f, y = unit(B, 2, d, seed=7), torch.tensor([0, 2, 2, 1, 0])
    targets = unit(C, d, seed=8)
    order = torch.tensor([2, 0, 1])  # target row k belongs to class order[k]
    extra, extra_y = targets.repeat_interleave(r, 0), order.repeat_interleave(r)
    view = [torch.cat([f[:, v], extra]) for v in range(2)]
    items = list(view[0]) + list(view[1])
    labels = (y.tolist() + extra_y.tolist()) * 2
    n = B + C * r
    extra_rows = {v * n + B + m for v in range(2) for m in range(C * r)}
    assert len(items) == 2 * (B + C * r)
    for w in (1.0, 0.2):
        want = supcon_loop(items, labels, t, t, extra_rows, w)
        got = supcon(f, y, temperature=t, extra=extra, extra_labels=extra_y, extra_weight=w)
        assert got.item() == pytest.approx(want, rel=1e-12)


def test_supcon_targets_pull_their_class():
    # a class-0 sample sitting on its target has a lower loss than one sitting on another target
    targets = angles(0, 180)
    f_on = angles(0, 0).view(1, 2, 2)
    f_off = angles(180, 180).view(1, 2, 2)
    kw = dict(temperature=0.5, extra=targets, extra_labels=torch.tensor([0, 1]))
    assert supcon(f_on, torch.tensor([0]), **kw) < supcon(f_off, torch.tensor([0]), **kw)


# ----------------------------------------------------------------------------------------
# KCL positives

def test_kcl_mask_keeps_views_and_draws_k_same_class_items():
    y = torch.tensor([0, 0, 0, 0, 1, 1]).repeat(2)
    sample = torch.arange(6).repeat(2)
    eye = torch.eye(12, dtype=torch.bool)
    same_class = (y[:, None] == y[None, :]) & ~eye
    same_sample = (sample[:, None] == sample[None, :]) & ~eye
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        m = kcl_positive_mask(same_class, same_sample, 2, g)
        assert torch.equal(m & same_sample, same_sample)      # own other view always in
        assert not (m & ~same_class).any()                    # never another class
        drawn = (m & ~same_sample).sum(1)
        # class 0 anchors have 6 candidates -> 2 drawn; class 1 anchors have 2 -> both
        assert drawn.tolist() == [2] * 4 + [2] * 2 + [2] * 4 + [2] * 2


def test_kcl_mask_draws_uniformly():
    # one anchor, three candidates, k = 1: each should be drawn about a third of the time
    same_class = torch.tensor([[False, True, True, True]])
    same_sample = torch.zeros_like(same_class)
    g = torch.Generator().manual_seed(1)
    hits = torch.zeros(4)
    for _ in range(3000):
        hits += kcl_positive_mask(same_class, same_sample, 1, g)[0].float()
    assert hits[0] == 0 and hits.sum() == 3000
    assert ((hits[1:] / 3000 - 1 / 3).abs() < 0.04).all()


def test_supcon_kcl_matches_equation_with_the_drawn_positives():
    B, t = 8, 0.2
    f, y = unit(B, 2, 5, seed=9), torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])
    got = supcon(f, y, temperature=t, k=2, generator=torch.Generator().manual_seed(3)).item()
    # redraw the same mask with the same seed, then evaluate the equation anchor by anchor
    yy, sample, eye = y.repeat(2), torch.arange(B).repeat(2), torch.eye(2 * B, dtype=torch.bool)
    m = kcl_positive_mask((yy[:, None] == yy[None, :]) & ~eye, (sample[:, None] == sample[None, :]) & ~eye,
                          2, torch.Generator().manual_seed(3))
    items, labels = flatten_views(f, y)
    positives = [row.nonzero().flatten().tolist() for row in m]
    assert got == pytest.approx(supcon_loop(items, labels, t, t, positives=positives), rel=1e-12)


def test_supcon_kcl_with_k_above_every_class_size_is_supcon():
    f, y = unit(6, 2, 4, seed=10), torch.tensor([0, 0, 1, 1, 1, 2])
    full = supcon(f, y, temperature=0.3).item()
    assert supcon(f, y, temperature=0.3, k=50, generator=torch.Generator().manual_seed(0)).item() == pytest.approx(full, rel=1e-13)


# ----------------------------------------------------------------------------------------
# BCL

def test_bcl_matches_per_anchor_equation_with_an_absent_class():
    C, t = 5, 0.1
    views, protos = unit(6, 2, 7, seed=11), unit(C, 7, seed=12)
    target = torch.tensor([0, 1, 1, 3, 0, 1])  # classes 2 and 4: prototype only
    want = bcl_loop(views, protos, target, t)
    assert balanced_supcon(views, protos, target, t).item() == pytest.approx(want, rel=1e-12)


def test_bcl_hand_computed():
    # one class-0 sample: views at 0 and 60 degrees, prototypes at 30 (class 0) and 180 (class 1), t = 1
    views = angles(0, 60).view(1, 2, 2)
    protos = angles(30, 180)
    c = math.cos
    # anchor at 0: A_0 = {60, 30}, A_1 = {180}; anchor at 60: A_0 = {0, 30}, A_1 = {180}
    den0 = (math.exp(c(math.pi / 3)) + math.exp(c(math.pi / 6))) / 2 + math.exp(-1)
    den1 = (math.exp(c(math.pi / 3)) + math.exp(c(math.pi / 6))) / 2 + math.exp(c(2 * math.pi / 3))
    l0 = -(c(math.pi / 3) + c(math.pi / 6) - 2 * math.log(den0)) / 2
    l1 = -(c(math.pi / 3) + c(math.pi / 6) - 2 * math.log(den1)) / 2
    got = balanced_supcon(views, protos, torch.tensor([0]), 1.0).item()
    assert got == pytest.approx((l0 + l1) / 2, rel=1e-12)


def test_bcl_class_averaging_ignores_batch_frequency():
    # class 1 is n identical samples (both views and its prototype at 100 degrees). With class
    # averaging every anchor's loss is independent of n, so the mean over anchors is
    # L(n) = (l0 + n l1) / (1 + n): fit l0, l1 from n = 1 and 5, then predict n = 3. Plain
    # SupCon fails this: its class-0 denominators grow with n.
    t = 0.5
    anchor, neg, protos = angles(10, 40).view(1, 2, 2), angles(100, 100).view(1, 2, 2), angles(25, 100)

    def mean_loss(n, loss):
        return loss(torch.cat([anchor, neg.repeat(n, 1, 1)]), torch.tensor([0] + [1] * n)).item()

    def predicted_n3(loss):
        L1, L5 = mean_loss(1, loss), mean_loss(5, loss)
        l1 = (6 * L5 - 2 * L1) / 4
        l0 = 2 * L1 - l1
        return (l0 + 3 * l1) / 4, mean_loss(3, loss)

    want, got = predicted_n3(lambda v, y: balanced_supcon(v, protos, y, t))
    assert got == pytest.approx(want, rel=1e-12)
    want, got = predicted_n3(lambda v, y: supcon(v, y, temperature=t))
    assert abs(got - want) > 1e-3


def test_bcl_gradient_reaches_every_prototype():
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)  # e.g. classifier weights
    views = unit(5, 2, 3, seed=13)
    loss = balanced_supcon(views, F.normalize(w, dim=1), torch.tensor([0, 0, 1, 2, 2]), 0.1)
    loss.backward()
    assert (w.grad.norm(dim=1) > 0).all()  # class 3 is absent from the batch, still a negative


def test_bcl_gradcheck():
    views = unit(3, 2, 3, seed=14).requires_grad_()
    protos = unit(3, 3, seed=15).requires_grad_()
    assert torch.autograd.gradcheck(lambda v, p: balanced_supcon(v, p, torch.tensor([0, 2, 0]), 0.3), (views, protos))


def test_bcl_rejects_wrong_view_count():
    with pytest.raises(ValueError, match="B x 2 x d"):
        balanced_supcon(unit(4, 3, 5), unit(2, 5), torch.zeros(4, dtype=torch.long), 0.1)


# ----------------------------------------------------------------------------------------
# PSC

def test_psc_matches_equation():
    z, protos, t = unit(6, 4, seed=16), unit(5, 4, seed=17), 0.1
    y = torch.tensor([0, 4, 2, 2, 1, 0])
    want = 0.0
    for i in range(6):
        neg = sum(math.exp(float(z[i] @ protos[j]) / t) for j in range(5) if j != int(y[i]))
        want += -(float(z[i] @ protos[int(y[i])]) / t - math.log(neg))
    assert psc(z, protos, y, t).item() == pytest.approx(want / 6, rel=1e-12)


def test_psc_hand_computed():
    # prototypes at 0/120/240 degrees, z on its own prototype, t = 1: -(1 - log(2 e^{-1/2}))
    got = psc(angles(0), angles(0, 120, 240), torch.tensor([0]), 1.0).item()
    assert got == pytest.approx(math.log(2) - 1.5, rel=1e-12)


def test_shape_errors_name_the_function():
    with pytest.raises(ValueError, match="supcon: features must be B x V x d"):
        supcon(unit(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="supcon: labels must have shape"):
        supcon(unit(4, 2, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="extra and extra_labels together"):
        supcon(unit(4, 2, 5), torch.zeros(4, dtype=torch.long), extra=unit(2, 5))
    with pytest.raises(ValueError, match="psc: need at least 2 prototypes"):
        psc(unit(3, 4), unit(1, 4), torch.zeros(3, dtype=torch.long), 0.1)
