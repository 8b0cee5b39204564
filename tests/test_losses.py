"""The classic LT losses against hand-computed values and against their equations written
out per sample with Python floats (slow and obvious on purpose)."""
import math

import pytest
import torch

from ltbench import losses


# ----------------------------------------------------------------------------------------
# Reference equations, one sample at a time

def ref_lse(row):
    return math.log(sum(math.exp(v) for v in row))


def ref_ce_terms(logits, target):
    return [ref_lse(row) - row[y] for row, y in zip(logits, target)]


def ref_ce(logits, target, weight=None):
    w = [1.0 if weight is None else weight[y] for y in target]
    terms = ref_ce_terms(logits, target)
    return sum(wi * t for wi, t in zip(w, terms)) / sum(w)


def ref_log_prior(counts):
    total = sum(counts)
    return [math.log(n / total) for n in counts]


def rand_case(seed, B=7, C=5, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, C, (B,), generator=g)
    counts = torch.randint(1, 500, (C,), generator=g).tolist()
    weight = (torch.rand(C, generator=g, dtype=torch.float64) * 2 + 0.1).tolist()
    return logits, target, counts, weight


def close(a, b, tol=1e-10):
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


# ----------------------------------------------------------------------------------------
# Class-balanced weights

def test_cb_weights_hand():
    # beta = 1/2, counts (4, 1): E = (15/16)/(1/2) = 15/8 and 1, w = (8/15, 1), scaled to sum 2.
    w = losses.class_balanced_weights([4, 1], 0.5)
    assert torch.allclose(w, torch.tensor([16 / 23, 30 / 23], dtype=torch.float64), atol=1e-12)


def test_cb_weights_properties():
    counts = [5000, 2000, 500, 50, 5]
    w = losses.class_balanced_weights(counts, 0.9999)
    assert math.isclose(w.sum().item(), len(counts), rel_tol=1e-12)
    assert bool((w[1:] > w[:-1]).all()), "weights must grow as counts shrink"
    assert torch.equal(losses.class_balanced_weights(counts, 0.0), torch.ones(5, dtype=torch.float64))


def test_cb_weights_random():
    _, _, counts, _ = rand_case(0, C=9)
    for beta in (0.9, 0.99, 0.999):
        eff = [(1 - beta ** n) / (1 - beta) for n in counts]
        raw = [1 / e for e in eff]
        ref = [r * len(counts) / sum(raw) for r in raw]
        got = losses.class_balanced_weights(torch.tensor(counts), beta)
        assert all(close(g, r) for g, r in zip(got.tolist(), ref))


def test_cb_weights_bad_beta():
    with pytest.raises(ValueError, match="beta must be in"):
        losses.class_balanced_weights([3, 1], 1.0)


# ----------------------------------------------------------------------------------------
# Cross-entropy

def test_ce_weighted_divides_by_weight_sum():
    # ce = (log 2, log 4); weighted mean = (2 log 2 + 1 log 4) / (2 + 1)
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])
    got = losses.cross_entropy(logits, torch.tensor([0, 1]), weight=torch.tensor([2.0, 1.0]))
    assert math.isclose(got.item(), 4 * math.log(2) / 3, rel_tol=1e-6)


def test_ce_random():
    logits, target, _, weight = rand_case(1)
    assert close(losses.cross_entropy(logits, target), ref_ce(logits.tolist(), target.tolist()))
    assert close(losses.cross_entropy(logits, target, weight), ref_ce(logits.tolist(), target.tolist(), weight))


# ----------------------------------------------------------------------------------------
# Focal

def test_focal_weighted_p_hand():
    # weight 2 on class 0: ce = (2 log 2, log 2), p = (1/4, 1/2) from the weighted ce,
    # loss = mean(3/4 * 2 log 2, 1/2 * log 2) = log 2 (plain mean over the batch).
    logits = torch.zeros(2, 2)
    got = losses.focal(logits, torch.tensor([0, 1]), gamma=1.0, weight=torch.tensor([2.0, 1.0]))
    assert math.isclose(got.item(), math.log(2), rel_tol=1e-6)
    # an unweighted p would give 1/2 * 2 log 2 for the first sample instead of 3/4 * 2 log 2
    first = losses.focal(logits[:1], torch.tensor([0]), gamma=1.0, weight=torch.tensor([2.0, 1.0]))
    assert math.isclose(first.item(), 1.5 * math.log(2), rel_tol=1e-6)


def test_focal_gamma0_is_plain_mean_of_weighted_ce():
    logits, target, _, weight = rand_case(2)
    terms = ref_ce_terms(logits.tolist(), target.tolist())
    ref = sum(weight[y] * t for y, t in zip(target.tolist(), terms)) / len(terms)
    assert close(losses.focal(logits, target, 0.0, weight), ref)


def test_focal_random():
    logits, target, _, weight = rand_case(3)
    for w in (None, weight):
        for gamma in (0.5, 1.0, 2.0):
            ref = 0.0
            for row, y in zip(logits.tolist(), target.tolist()):
                ce = (1.0 if w is None else w[y]) * (ref_lse(row) - row[y])
                ref += (1 - math.exp(-ce)) ** gamma * ce
            ref /= len(target)
            assert close(losses.focal(logits, target, gamma, w), ref)


def test_focal_gradcheck():
    # p is not detached in the official code; the gradient must include d p / d logits
    logits, target, _, weight = rand_case(4, B=4, C=3)
    torch.autograd.gradcheck(lambda o: losses.focal(o, target, 2.0, torch.tensor(weight)),
                             (logits.requires_grad_(),))


# ----------------------------------------------------------------------------------------
# LDAM

def test_ldam_margins_hand():
    # n^(-1/4) = (1/2, 1) for counts (16, 1), rescaled so the largest is max_m
    m = losses.ldam_margins([16, 1], max_m=0.5)
    assert torch.allclose(m, torch.tensor([0.25, 0.5], dtype=torch.float64), atol=1e-15)


def test_ldam_margin_before_scale_hand():
    counts, s = [16, 1], 10.0
    u = torch.tensor([[0.5, 0.2], [0.5, 0.2]])
    # class 0 (margin 0.25): s*(0.5-0.25, 0.2) = (2.5, 2.0) -> log(1 + e^-0.5)
    got0 = losses.ldam(u[:1], torch.tensor([0]), counts, max_m=0.5, s=s)
    assert math.isclose(got0.item(), math.log1p(math.exp(-0.5)), rel_tol=1e-6)
    # class 1 (margin 0.5): s*(0.5, 0.2-0.5) = (5, -3) -> log(1 + e^8)
    got1 = losses.ldam(u[1:], torch.tensor([1]), counts, max_m=0.5, s=s)
    assert math.isclose(got1.item(), math.log1p(math.exp(8.0)), rel_tol=1e-6)
    # a margin applied after the scale (s*u - Delta) would give log(1 + e^-2.75) instead
    assert not math.isclose(got0.item(), math.log1p(math.exp(-2.75)), rel_tol=1e-3)


def test_ldam_random():
    logits, target, counts, weight = rand_case(5, B=9, C=6, scale=0.5)
    logits = logits.clamp(-1, 1)  # cosines
    max_m, s = 0.5, 30.0
    raw = [n ** -0.25 for n in counts]
    delta = [r * max_m / max(raw) for r in raw]
    for w in (None, weight):
        adj = []
        for row, y in zip(logits.tolist(), target.tolist()):
            adj.append([s * (u - (delta[k] if k == y else 0.0)) for k, u in enumerate(row)])
        ref = ref_ce(adj, target.tolist(), w)
        assert close(losses.ldam(logits, target, counts, max_m, s, w), ref)


def test_ldam_gradcheck():
    logits, target, counts, weight = rand_case(6, B=4, C=3, scale=0.3)
    torch.autograd.gradcheck(lambda u: losses.ldam(u, target, counts, 0.5, 30.0, torch.tensor(weight)),
                             (logits.requires_grad_(),))


# ----------------------------------------------------------------------------------------
# Logit adjustment, balanced softmax, post-hoc

def test_la_tau0_is_ce():
    logits, target, counts, weight = rand_case(7)
    assert torch.equal(losses.logit_adjusted(logits, target, counts, tau=0.0, weight=weight),
                       losses.cross_entropy(logits, target, weight))


def test_la_and_bs_hand():
    # counts (3, 1), zero logits: adjusted logits (log 3/4, log 1/4) or (log 3, 0); class 1 -> log 4
    logits, target = torch.zeros(1, 2), torch.tensor([1])
    assert math.isclose(losses.logit_adjusted(logits, target, [3, 1]).item(), math.log(4), rel_tol=1e-6)
    assert math.isclose(losses.balanced_softmax(logits, target, [3, 1]).item(), math.log(4), rel_tol=1e-6)


def test_bs_equals_la_tau1():
    logits, target, counts, _ = rand_case(8, B=32, C=10)
    la = losses.logit_adjusted(logits, target, counts, tau=1.0)
    bs = losses.balanced_softmax(logits, target, counts)
    assert math.isclose(la.item(), bs.item(), rel_tol=1e-12)


def test_la_random():
    logits, target, counts, weight = rand_case(9)
    lp = ref_log_prior(counts)
    for tau in (0.5, 1.0, 2.0):
        for w in (None, weight):
            adj = [[o + tau * lp[k] for k, o in enumerate(row)] for row in logits.tolist()]
            assert close(losses.logit_adjusted(logits, target, counts, tau, w), ref_ce(adj, target.tolist(), w))


def test_bs_random():
    logits, target, counts, _ = rand_case(10)
    ref = 0.0
    for row, y in zip(logits.tolist(), target.tolist()):
        ref -= math.log(counts[y] * math.exp(row[y]) / sum(n * math.exp(o) for n, o in zip(counts, row)))
    assert close(losses.balanced_softmax(logits, target, counts), ref / len(target))


def test_la_gradcheck():
    logits, target, counts, weight = rand_case(11, B=4, C=3)
    torch.autograd.gradcheck(lambda o: losses.logit_adjusted(o, target, counts, 1.5, torch.tensor(weight)),
                             (logits.requires_grad_(),))


def test_posthoc_adjust():
    got = losses.posthoc_adjust(torch.zeros(1, 2), [3, 1], 1.0)
    assert torch.allclose(got, torch.tensor([[-math.log(0.75), -math.log(0.25)]]))
    logits, _, counts, _ = rand_case(12)
    lp = ref_log_prior(counts)
    got = losses.posthoc_adjust(logits, counts, 2.0).tolist()
    assert all(close(g, o - 2.0 * lp[k]) for grow, orow in zip(got, logits.tolist())
               for k, (g, o) in enumerate(zip(grow, orow)))
    # removing the prior the LA loss added gives back the raw logits
    back = losses.posthoc_adjust(logits + torch.tensor(lp), counts, 1.0)
    assert torch.allclose(back, logits, atol=1e-12)


# ----------------------------------------------------------------------------------------
# Soft targets and mixup

def test_soft_ce_hand_and_random():
    # rows need not sum to 1: t = (1, 1) on uniform logits -> 2 log 2
    assert math.isclose(losses.soft_cross_entropy(torch.zeros(1, 2), torch.ones(1, 2)).item(),
                        2 * math.log(2), rel_tol=1e-6)
    logits, _, _, _ = rand_case(13)
    t = torch.rand(logits.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = 0.0
    for row, trow in zip(logits.tolist(), t.tolist()):
        ref -= sum(tk * (o - ref_lse(row)) for tk, o in zip(trow, row))
    assert close(losses.soft_cross_entropy(logits, t), ref / len(logits))


def test_soft_ce_one_hot_is_ce():
    logits, target, _, _ = rand_case(14)
    onehot = torch.nn.functional.one_hot(target, logits.shape[1]).double()
    assert close(losses.soft_cross_entropy(logits, onehot), losses.cross_entropy(logits, target))


def test_mixup_ce():
    logits, y_a, _, _ = rand_case(15)
    y_b = y_a.roll(1)
    lam = 0.3
    ref = lam * ref_ce(logits.tolist(), y_a.tolist()) + (1 - lam) * ref_ce(logits.tolist(), y_b.tolist())
    assert close(losses.mixup_cross_entropy(logits, y_a, y_b, lam), ref)
    assert close(losses.mixup_cross_entropy(logits, y_a, y_b, 1.0), losses.cross_entropy(logits, y_a))


# ----------------------------------------------------------------------------------------
# Dtypes, counts types, bad input

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_follows_logits(dtype):
    logits, target, counts, weight = rand_case(16, scale=0.5)
    for fn in (lambda o: losses.logit_adjusted(o, target, counts, 1.0, weight),
               lambda o: losses.balanced_softmax(o, target, counts),
               lambda o: losses.ldam(o, target, counts, weight=weight),
               lambda o: losses.focal(o, target, 2.0, weight)):
        low, ref = fn(logits.to(dtype)), fn(logits)
        assert low.dtype == dtype
        assert math.isclose(low.item(), ref.item(), rel_tol=0.05)
    assert losses.posthoc_adjust(logits.to(dtype), counts, 1.0).dtype == dtype


def test_counts_as_list_tuple_tensor_agree():
    logits, target, counts, _ = rand_case(17)
    vals = {losses.ldam(logits.clamp(-1, 1), target, c).item()
            for c in (counts, tuple(counts), torch.tensor(counts), torch.tensor(counts, dtype=torch.float32))}
    assert len(vals) == 1


def test_bad_counts_and_shapes():
    logits, target = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="counts has 2 classes but logits have 3"):
        losses.logit_adjusted(logits, target, [5, 1])
    with pytest.raises(ValueError, match="class 1 has count 0"):
        losses.balanced_softmax(logits, target, [5, 0, 2])
    with pytest.raises(ValueError, match="target must have shape"):
        losses.ldam(logits, target[:3], [5, 2, 1])
    with pytest.raises(ValueError, match="weight must have one entry per class"):
        losses.cross_entropy(logits, target, weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="soft_target must both be B x C"):
        losses.soft_cross_entropy(logits, torch.zeros(4, 2))
