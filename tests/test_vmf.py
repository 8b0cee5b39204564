import io
import math

import mpmath
import numpy as np
import pytest
import torch

from ltbench.vmf import (KAPPA_MAX, LogCp, ProCoState, VMFEstimator, bessel_ratio, log_bessel_ive,
                         log_vmf_normalizer, proco_logits)

mpmath.mp.dps = 40
GRID = torch.logspace(-2, 5, 40, dtype=torch.float64)
PROCO_DIMS = (64, 128, 512, 1024)
SMALL_DIMS = (2, 3, 16, 33)      # orders below the Debye threshold go through the recurrence


def mp_log_ive(nu, x):
    return float(mpmath.log(mpmath.besseli(nu, x)) - x)


def mp_log_c(p, k):
    """log C_p(k) + (p/2) log 2 pi, straight from the definition."""
    nu = mpmath.mpf(p) / 2 - 1
    k = mpmath.mpf(k)
    return nu * mpmath.log(k) - mpmath.log(mpmath.besseli(nu, k))


# ------------------------------------------------------------------------------------------
# Bessel functions

@pytest.mark.parametrize("p", PROCO_DIMS + SMALL_DIMS)
def test_log_bessel_ive_matches_mpmath(p):
    nu = p / 2 - 1
    ref = torch.tensor([mp_log_ive(nu, x) for x in GRID.tolist()], dtype=torch.float64)
    got = log_bessel_ive(nu, GRID)
    assert got.dtype == torch.float64
    assert ((got - ref).abs() <= 1e-9 * ref.abs().clamp(min=1)).all(), (got - ref).abs().max()


@pytest.mark.parametrize("p", PROCO_DIMS + SMALL_DIMS)
def test_bessel_ratio_matches_mpmath(p):
    nu = p / 2 - 1
    ref = torch.tensor([float(mpmath.besseli(nu + 1, x) / mpmath.besseli(nu, x)) for x in GRID.tolist()],
                       dtype=torch.float64)
    got = bessel_ratio(nu, GRID)
    assert ((got - ref).abs() <= 1e-9 * ref).all(), ((got - ref).abs() / ref).max()


def test_small_kappa_does_not_underflow_where_scipy_would():
    # log I_511(0.01) - 0.01 is about -5400: far below float64's exp range
    got = log_bessel_ive(511.0, torch.tensor([0.01], dtype=torch.float64))
    assert torch.isfinite(got).all() and got.item() < -5000
    assert abs(got.item() - mp_log_ive(511, 0.01)) < 1e-9 * 5400


def official_miller_log_ive(nu, x):
    """The official recurrence (ProCo_cifar/loss/proco.py:miller_recurrence), in ratio form:
    backward from index 2nu with I_{2nu+1} = 0, I_{2nu} = 1, normalised by I_0 = i0e(x)."""
    ratio = torch.zeros_like(x)             # I_{i+1} / I_i
    log_i0_over_inu = torch.zeros_like(x)
    for i in range(2 * nu, 0, -1):
        step = 2 * i / x + ratio            # I_{i-1} / I_i
        if i <= nu:
            log_i0_over_inu += torch.log(step)
        ratio = 1 / step
    return torch.log(torch.special.i0e(x)) - log_i0_over_inu


def test_official_miller_recurrence_drifts_for_large_kappa_and_ours_does_not():
    nu = 63                                              # p = 128, the CIFAR feature dim
    x = torch.tensor([600.0, 5e3, 5e4], dtype=torch.float64)
    ref = torch.tensor([mp_log_ive(nu, v) for v in x.tolist()], dtype=torch.float64)
    miller_err = official_miller_log_ive(nu, x) - ref
    assert abs(miller_err[0]) < 1e-6                     # fine near the initial kappa = 128 * 90/19
    assert 0.1 < -miller_err[1] < 0.2                    # ~0.13 nats low at kappa = 5e3
    assert -miller_err[2] > 1.5                          # ~2.1 nats low at kappa = 5e4
    assert (log_bessel_ive(nu, x) - ref).abs().max() < 1e-9 * ref.abs().max()


def test_bad_order_is_rejected():
    with pytest.raises(ValueError, match="nu"):
        log_bessel_ive(-0.5, GRID)
    with pytest.raises(ValueError, match="p must be an int"):
        log_vmf_normalizer(GRID, 1)


# ------------------------------------------------------------------------------------------
# log C_p and its custom backward

KAPPAS = torch.tensor([0.05, 1.0, 30.0, 700.0, 2e4, 9e4], dtype=torch.float64)


@pytest.mark.parametrize("p", (3, 128, 1024))
def test_log_normalizer_forward_matches_mpmath(p):
    ref = torch.tensor([float(mp_log_c(p, k)) for k in KAPPAS.tolist()], dtype=torch.float64)
    got = log_vmf_normalizer(KAPPAS, p)
    assert ((got - ref).abs() <= 1e-9 * ref.abs().clamp(min=1)).all()


@pytest.mark.parametrize("p", (3, 128, 1024))
def test_log_normalizer_backward_gradcheck(p):
    kappa = KAPPAS.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda k: LogCp.apply(k, p), (kappa,))


@pytest.mark.parametrize("p", (3, 128, 1024))
def test_log_normalizer_backward_is_minus_bessel_ratio(p):
    kappa = KAPPAS.clone().requires_grad_()
    log_vmf_normalizer(kappa, p).sum().backward()
    ref = torch.tensor([float(mpmath.diff(lambda k: mp_log_c(p, k), k)) for k in KAPPAS.tolist()],
                       dtype=torch.float64)
    assert (ref < 0).all() and (ref > -1).all()          # d/dk log C_p = -A_p in (-1, 0)
    assert torch.allclose(kappa.grad, ref, rtol=1e-9, atol=0)


# ------------------------------------------------------------------------------------------
# Closed-form logits

def test_proco_logits_matches_definition_loop():
    gen = torch.Generator().manual_seed(0)
    p, tau = 16, 0.1
    z = torch.nn.functional.normalize(torch.randn(3, p, generator=gen, dtype=torch.float64), dim=1)
    mu = torch.nn.functional.normalize(torch.randn(4, p, generator=gen, dtype=torch.float64), dim=1)
    kappa = torch.tensor([1.0, 50.0, 600.0, 5e4], dtype=torch.float64)
    got = proco_logits(z, mu, kappa, tau)
    for i in range(3):
        for k in range(4):
            kt = math.sqrt(sum((kappa[k].item() * mu[k, j].item() + z[i, j].item() / tau) ** 2 for j in range(p)))
            want = float(mp_log_c(p, kappa[k].item()) - mp_log_c(p, kt))
            assert abs(got[i, k].item() - want) < 1e-9 * max(1.0, abs(want)), (i, k)


def test_proco_logits_dtype_and_gradient_only_through_z():
    gen = torch.Generator().manual_seed(1)
    z = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen), dim=1).requires_grad_()
    mu = torch.nn.functional.normalize(torch.randn(3, 8, generator=gen), dim=1).requires_grad_()
    kappa = torch.tensor([2.0, 40.0, 900.0], requires_grad=True)
    out = proco_logits(z, mu, kappa, 0.1)
    assert out.dtype == torch.float32 and out.shape == (5, 3)
    out.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert mu.grad is None and kappa.grad is None


def test_proco_logits_gradcheck_in_z():
    gen = torch.Generator().manual_seed(2)
    z = torch.nn.functional.normalize(torch.randn(4, 6, generator=gen, dtype=torch.float64), dim=1)
    mu = torch.nn.functional.normalize(torch.randn(3, 6, generator=gen, dtype=torch.float64), dim=1)
    kappa = torch.tensor([3.0, 60.0, 2e3], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda zz: proco_logits(zz, mu, kappa, 0.2), (z.requires_grad_(),))


def test_proco_logits_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="proco_logits"):
        proco_logits(torch.zeros(2, 8), torch.zeros(3, 7), torch.ones(3), 0.1)
    with pytest.raises(ValueError, match="tau"):
        proco_logits(torch.zeros(2, 8), torch.zeros(3, 8), torch.ones(3), 0.0)


def sample_vmf_e1(p, kappa, n, rng):
    """Wood (1994) rejection sampler for vMF(e_1, kappa) on S^{p-1}, numpy float64."""
    b = (p - 1) / (2 * kappa + math.sqrt(4 * kappa ** 2 + (p - 1) ** 2))
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + (p - 1) * math.log(1 - x0 ** 2)
    ws = []
    while sum(len(w) for w in ws) < n:
        zb = rng.beta((p - 1) / 2, (p - 1) / 2, size=n)
        w = (1 - (1 + b) * zb) / (1 - (1 - b) * zb)
        accept = kappa * w + (p - 1) * np.log(1 - x0 * w) - c >= np.log(rng.uniform(size=n))
        ws.append(w[accept])
    w = np.concatenate(ws)[:n]
    v = rng.standard_normal((n, p - 1))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return np.concatenate([w[:, None], np.sqrt(1 - w ** 2)[:, None] * v], axis=1)


def test_closed_form_matches_monte_carlo_expectation():
    # E_{z' ~ vMF(mu, kappa)} exp(z . z' / tau) = C_p(kappa) / C_p(||kappa mu + z / tau||)
    p, kappa, tau = 64, 50.0, 0.5
    rng = np.random.default_rng(0)
    mu = np.zeros(p)
    mu[0] = 1.0
    z = mu + rng.standard_normal(p) / math.sqrt(p)
    z /= np.linalg.norm(z)
    args = (torch.tensor(z)[None], torch.tensor(mu)[None], torch.tensor([kappa], dtype=torch.float64), tau)
    closed = math.exp(proco_logits(*args).item())
    wrong = math.exp(proco_logits(-args[0], *args[1:]).item())       # the sign of z flipped

    rms, ses = [], []
    for n in (1_000, 10_000, 100_000):                # 10 independent estimates at each size
        errors = []
        for _ in range(10):
            samples = sample_vmf_e1(p, kappa, n, rng)
            values = np.exp(samples @ z / tau)
            errors.append((values.mean() - closed) / closed)
        rms.append(math.sqrt(np.mean(np.square(errors))))
        ses.append(values.std() / math.sqrt(n) / closed)
    assert rms[1] < rms[0] / 2 and rms[2] < rms[1] / 2    # shrinks like 1/sqrt(n) (factor 3.2)
    assert rms[2] < 2 * ses[2]
    assert abs(np.mean(errors)) < 4 * ses[2] / math.sqrt(10)        # pooled 1e6 samples: no bias
    assert abs(closed - wrong) / closed > 20 * ses[2]                # the check can tell them apart

    # the sampler itself: E[z'] = A_p(kappa) mu
    mean_cos = samples[:, 0].mean()
    a_p = bessel_ratio(p / 2 - 1, torch.tensor([kappa], dtype=torch.float64)).item()
    assert abs(mean_cos - a_p) < 4 * samples[:, 0].std() / math.sqrt(len(samples))


# ------------------------------------------------------------------------------------------
# Estimators

def unit(x):
    return torch.nn.functional.normalize(x, dim=1)


def test_init_is_deterministic_and_has_the_official_kappa():
    a = VMFEstimator(5, 128, torch.Generator().manual_seed(3))
    b = VMFEstimator(5, 128, torch.Generator().manual_seed(3))
    c = VMFEstimator(5, 128, torch.Generator().manual_seed(4))
    assert torch.equal(a.mean, b.mean) and not torch.equal(a.mean, c.mean)
    assert torch.allclose(a.mean.norm(dim=1), torch.full((5,), 0.9, dtype=torch.float64))
    assert torch.allclose(a.kappa, torch.full((5,), 128 * 90 / 19, dtype=torch.float64))
    assert torch.allclose(a.mu.norm(dim=1), torch.ones(5, dtype=torch.float64))
    assert (a.count == 0).all()


def test_cumulative_weighted_mean_equals_plain_mean_of_everything_seen():
    gen = torch.Generator().manual_seed(5)
    est = VMFEstimator(4, 8, gen)
    init = est.mean.clone()
    batches = [(unit(torch.randn(6, 8, generator=gen)), torch.tensor([0, 0, 1, 1, 1, 0])),
               (unit(torch.randn(3, 8, generator=gen)), torch.tensor([2, 0, 2])),
               (unit(torch.randn(5, 8, generator=gen)), torch.tensor([1, 1, 1, 1, 0]))]
    for z, y in batches:
        est.update(z, y)
    z_all = torch.cat([z for z, _ in batches]).double()
    y_all = torch.cat([y for _, y in batches])
    for k in range(3):
        rows = [z_all[i] for i in range(len(y_all)) if y_all[i] == k]
        assert torch.allclose(est.mean[k], sum(rows) / len(rows), atol=1e-14, rtol=0)
        assert est.count[k] == len(rows)
    assert torch.equal(est.mean[3], init[3]) and est.count[3] == 0     # never seen: init kept


def test_kappa_formula_and_clamp():
    p = 128
    est = VMFEstimator(5, p)
    lengths = torch.tensor([0.3, 0.9, 0.999, 1.0, 1.0 + 1e-12], dtype=torch.float64)
    est.mean.copy_(lengths[:, None] * unit(torch.randn(5, p, dtype=torch.float64)))
    r = est.mean.norm(dim=1)
    want = [p * r[i].item() / (1 - r[i].item() ** 2) for i in range(3)] + [KAPPA_MAX, KAPPA_MAX]
    assert torch.allclose(est.kappa, torch.tensor(want, dtype=torch.float64), rtol=1e-12)
    assert est.kappa[2] == pytest.approx(p * 0.999 / (1 - 0.999 ** 2), rel=1e-9)   # 63968: below the clamp
    est.mean[0] = 0.99999 * unit(torch.randn(1, p, dtype=torch.float64))[0]   # p R/(1-R^2) = 6.4e6
    assert est.kappa[0] == KAPPA_MAX


def batch(gen, b=8, c=4, p=16):
    return unit(torch.randn(b, p, generator=gen)), torch.randint(0, c, (b,), generator=gen)


def test_new_old_handover_and_per_batch_updates():
    gen = torch.Generator().manual_seed(6)
    state = ProCoState(4, 16, gen)
    state.start_epoch(gen)                       # epoch 0: old takes new's fresh init, count 0
    assert (state.old.count == 0).all()
    for _ in range(3):
        state(*batch(gen), tau=0.1)
    assert torch.equal(state.old.count, state.new.count)   # same batches since the epoch start
    prev_mean, prev_count = state.new.mean.clone(), state.new.count.clone()

    state.start_epoch(gen)                       # epoch 1
    assert torch.equal(state.old.mean, prev_mean) and torch.equal(state.old.count, prev_count)
    assert (state.new.count == 0).all() and not torch.equal(state.new.mean, prev_mean)
    assert torch.allclose(state.new.mean.norm(dim=1), torch.full((4,), 0.9, dtype=torch.float64))

    z, y = batch(gen)
    logits = state(z, y, tau=0.1)
    seen = torch.bincount(y, minlength=4).double()
    assert torch.equal(state.old.count, prev_count + seen) and torch.equal(state.new.count, seen)
    # the logits read `old` after this batch has been folded in
    assert torch.equal(logits, proco_logits(z, state.old.mu, state.old.kappa, 0.1))


def test_state_dict_round_trip_resumes_exactly():
    gen = torch.Generator().manual_seed(7)
    a = ProCoState(4, 16, gen)
    a.start_epoch(gen)
    for _ in range(2):
        a(*batch(gen), tau=0.1)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = ProCoState(4, 16, torch.Generator().manual_seed(99))
    b.load_state_dict(torch.load(buf))
    assert set(b.state_dict()) == {"old.mean", "old.count", "new.mean", "new.count"}
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value)
    z, y = batch(gen)
    assert torch.equal(a(z, y, tau=0.1), b(z, y, tau=0.1))


def test_update_rejects_mismatched_batch():
    est = VMFEstimator(4, 16)
    with pytest.raises(ValueError, match="VMFEstimator.update"):
        est.update(torch.zeros(3, 15), torch.zeros(3, dtype=torch.long))
