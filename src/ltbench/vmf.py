"""von Mises-Fisher pieces of ProCo: Bessel functions, the vMF log-normaliser, the closed-form
contrast logits and the per-class running estimators.

Source: LeapLabTHU/ProCo@af9e78e:ProCo_cifar/loss/proco.py (`miller_recurrence`, `LogRatioC`,
`EstimatorCV`, `ProCoLoss`) and ProCo_cifar/main.py (when the estimators are updated and swapped).

A vMF density on S^{p-1} has normaliser C_p(k) = k^nu / ((2 pi)^{p/2} I_nu(k)), nu = p/2 - 1.
Everything here drops the (2 pi)^{p/2} factor, which cancels in every ratio ProCo uses.

Deliberate deviation, Bessel evaluation. The official code gets log I_nu by Miller's backward
recurrence started at index 2 nu with I_{2nu+1} = 0, normalised by I_0. That start is only good
while kappa is at most a few times nu: for kappa >> p the truncated recurrence drifts (at p = 128,
-0.13 nats at kappa = 5e3 and -2.1 nats at kappa = 5e4; kappa is clamped at 1e5, so the estimator
reaches that regime). We use the uniform asymptotic (Debye) expansion instead, which is uniformly
accurate in kappa for large order; orders below 20 are lifted to 20 and brought back down by the
(stable) backward three-term recurrence. Accuracy against mpmath is tested in tests/test_vmf.py.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

KAPPA_MAX = 1e5          # official clamp on the estimated concentration
INIT_LENGTH = 0.9        # official initial mean resultant length (kappa = p * 90 / 19)
_DEBYE_TERMS = 10        # relative error < 1e-13 for orders >= 15 (see tests)
_DEBYE_MIN_ORDER = 20.0


def _debye_polynomials(count):
    """Coefficients (ascending powers of t) of u_0 .. u_count of the Debye expansion

        I_nu(nu z) ~ e^{nu eta} / (sqrt(2 pi nu) (1 + z^2)^{1/4}) * sum_k u_k(t) / nu^k,
        t = 1 / sqrt(1 + z^2),

    built with exact rationals from u_{k+1}(t) = t^2 (1 - t^2) u_k'(t) / 2
    + (1/8) int_0^t (1 - 5 s^2) u_k(s) ds   (DLMF 10.41.9-10).
    """
    polys = [[Fraction(1)]]
    for _ in range(count):
        u = polys[-1]
        nxt = [Fraction(0)] * (len(u) + 3)
        for i, c in enumerate(u):
            if i > 0:               # t^2 (1 - t^2) * i c t^{i-1} / 2
                nxt[i + 1] += i * c / 2
                nxt[i + 3] -= i * c / 2
            nxt[i + 1] += c / (8 * (i + 1))         # int_0^t c s^i / 8
            nxt[i + 3] -= 5 * c / (8 * (i + 3))     # int_0^t -5 c s^{i+2} / 8
        polys.append(nxt)
    return [[float(c) for c in u] for u in polys]


_U = _debye_polynomials(_DEBYE_TERMS)


def _log_ive_debye(nu, x):
    """log(I_nu(x) e^{-x}) from the Debye expansion, written in x so nothing cancels at large x:
    nu * eta - x = nu^2 / (r + x) - nu * asinh(nu / x),  r = sqrt(nu^2 + x^2)."""
    r = torch.sqrt(nu * nu + x * x)
    t = nu / r
    series = torch.zeros_like(x)
    for u in reversed(_U):                     # Horner in 1/nu over Horner in t
        uk = torch.zeros_like(x)
        for c in reversed(u):
            uk = uk * t + c
        series = series / nu + uk
    return (nu * nu / (r + x) - nu * torch.asinh(nu / x)
            - 0.5 * math.log(2 * math.pi) - 0.5 * torch.log(r) + torch.log(series))


def _check_order(nu, where):
    if not (isinstance(nu, (int, float)) and math.isfinite(nu) and nu >= 0):
        raise ValueError(f"{where}: order nu must be a finite python number >= 0, got {nu!r}; "
                         "for a vMF on S^(p-1) pass nu = p/2 - 1 with p >= 2")
    return float(nu)


def log_bessel_ive(nu, kappa):
    """log(I_nu(kappa) e^{-kappa}) elementwise, in float64 (scipy's `ive`, but in log space so it
    never underflows). nu: python number >= 0; kappa: tensor of positive values."""
    nu = _check_order(nu, "log_bessel_ive")
    x = torch.as_tensor(kappa).to(torch.float64)
    lift = max(0, math.ceil(_DEBYE_MIN_ORDER - nu))
    top = nu + lift
    log_i = _log_ive_debye(top, x)
    if lift == 0:
        return log_i
    # Downward, I_n is the dominant solution of I_{n-1} = (2n/x) I_n + I_{n+1}: the recurrence is
    # stable. Carry the ratio r_n = I_{n+1} / I_n so nothing overflows.
    ratio = torch.exp(_log_ive_debye(top + 1, x) - log_i)
    for k in range(lift):
        step = 2 * (top - k) / x + ratio
        log_i = log_i + torch.log(step)
        ratio = 1 / step
    return log_i


def bessel_ratio(nu, kappa):
    """A(kappa) = I_{nu+1}(kappa) / I_nu(kappa) elementwise, float64; for nu = p/2 - 1 this is the
    mean resultant length A_p of vMF(kappa) on S^{p-1}."""
    return torch.exp(log_bessel_ive(nu + 1, kappa) - log_bessel_ive(nu, kappa))


class LogCp(torch.autograd.Function):
    """log C_p(kappa) + (p/2) log(2 pi) = nu log kappa - log I_nu(kappa), nu = p/2 - 1, float64.

    Backward: d/dkappa = nu/kappa - I_nu'(kappa)/I_nu(kappa) = -I_{nu+1}(kappa)/I_nu(kappa)
    (using I_nu' = I_{nu+1} + (nu/kappa) I_nu). The official `LogRatioC` clips that ratio at 1.0.
    It lies in (0, 1) analytically; the official recurrence overshoots once kappa >> p (p = 128:
    1.18 at kappa = 5e3, where the true ratio is 0.987), so there the clip binds and the official
    gradient is 1.0. With accurate ratios the clip only guards rounding; kept to match.
    """

    @staticmethod
    def forward(ctx, kappa, p):
        nu = p / 2 - 1
        log_ive = log_bessel_ive(nu, kappa)
        ctx.save_for_backward(kappa, log_ive)
        ctx.nu = nu
        return nu * torch.log(kappa) - log_ive - kappa

    @staticmethod
    def backward(ctx, grad):
        kappa, log_ive = ctx.saved_tensors
        ratio = torch.exp(log_bessel_ive(ctx.nu + 1, kappa) - log_ive).clamp(max=1.0)
        return -grad * ratio, None


def log_vmf_normalizer(kappa, p):
    """log C_p(kappa) up to the constant -(p/2) log(2 pi), float64, with the custom backward above."""
    if not (isinstance(p, int) and p >= 2):
        raise ValueError(f"log_vmf_normalizer: dimension p must be an int >= 2 (the feature dim), got {p!r}")
    return LogCp.apply(kappa.to(torch.float64), p)


def proco_logits(z, mu, kappa, tau):
    """Closed-form expected-SupCon logits of ProCo, B x C:

        s_k(z) = log C_p(kappa_k) - log C_p(||kappa_k mu_k + z / tau||),

    i.e. log E_{z' ~ vMF(mu_k, kappa_k)} exp(z . z' / tau). z: B x p features (unit norm in ProCo);
    mu: C x p unit mean directions; kappa: C concentrations; tau > 0. Computed in float64 and
    returned in z's dtype. mu and kappa are estimator state: detached, gradient flows through z only.
    """
    if z.dim() != 2 or mu.dim() != 2 or z.shape[1] != mu.shape[1] or kappa.shape != mu.shape[:1]:
        raise ValueError(f"proco_logits: need z B x p, mu C x p, kappa (C,); got z {tuple(z.shape)}, "
                         f"mu {tuple(mu.shape)}, kappa {tuple(kappa.shape)}")
    if not tau > 0:
        raise ValueError(f"proco_logits: temperature tau must be > 0, got {tau!r}")
    p = z.shape[1]
    z64 = z.to(torch.float64)
    mu64 = mu.detach().to(torch.float64)
    k64 = kappa.detach().to(torch.float64)
    # ||kappa mu + z/tau||^2 expanded, so memory is B x C rather than the official B x C x p.
    # float64 is not autocast-eligible, so this stays float64 under AMP.
    sq = ((k64 * k64 * (mu64 * mu64).sum(1))[None, :]
          + (2 / tau) * (z64 @ mu64.T) * k64[None, :]
          + ((z64 * z64).sum(1) / tau ** 2)[:, None])
    kappa_tilde = sq.clamp(min=0).sqrt()
    logits = log_vmf_normalizer(k64, p)[None, :] - log_vmf_normalizer(kappa_tilde, p)
    return logits.to(z.dtype)


class VMFEstimator(nn.Module):
    """Per-class vMF fit from a running mean of normalised features (official `EstimatorCV`).

    Buffers: `mean` (C x p, m-bar) and `count` (C, samples seen), both float64 (the official keeps
    float32; float64 keeps kappa = p R / (1 - R^2) accurate as R -> 1 and the state exact).
    `update` folds a batch in as a sample-count-weighted cumulative average; classes absent from
    the batch keep their mean. mu = m-bar / R and kappa = p R / (1 - R^2), R = ||m-bar||, are derived
    on demand; the official stores kappa and refreshes it after each update of the estimator
    the loss reads, which gives the same values wherever the loss uses them.
    kappa is the formula as coded, not the paper's R (p - R^2) / (1 - R^2); clamped at 1e5,
    and R >= 1 (possible only by rounding) maps to 1e5 as the official's negative-kappa branch does.
    Init: m-bar = 0.9 x random unit vectors (kappa = p 90/19), count 0; the random draw uses the
    given generator, so construction is deterministic.
    """

    def __init__(self, num_classes, dim, generator=None):
        super().__init__()
        if num_classes < 1 or dim < 2:
            raise ValueError(f"VMFEstimator: need num_classes >= 1 and feature dim >= 2, got {num_classes}, {dim}")
        self.register_buffer("mean", torch.zeros(num_classes, dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.float64))
        self.reset(generator)

    def reset(self, generator=None):
        draw = torch.randn(self.mean.shape, generator=generator, dtype=torch.float64)
        self.mean.copy_(INIT_LENGTH * F.normalize(draw, dim=1))
        self.count.zero_()

    @torch.no_grad()
    def update(self, z, y):
        """Fold in a batch: z B x p (detached here), y (B,) int64 labels."""
        num_classes, dim = self.mean.shape
        if z.dim() != 2 or z.shape[1] != dim or y.shape != z.shape[:1]:
            raise ValueError(f"VMFEstimator.update: need z B x {dim} and y (B,), got z {tuple(z.shape)}, "
                             f"y {tuple(y.shape)}")
        onehot = F.one_hot(y, num_classes).to(self.mean)
        n = onehot.sum(0)
        batch_mean = (onehot.T @ z.detach().to(self.mean)) / n.clamp(min=1)[:, None]
        # n / (n + count); 0 where neither has samples, so the initial mean survives until seen
        weight = (n / (n + self.count).clamp(min=1))[:, None]
        self.mean.mul_(1 - weight).add_(weight * batch_mean)
        self.count.add_(n)

    @property
    def mu(self):
        return F.normalize(self.mean, dim=1)

    @property
    def kappa(self):
        dim = self.mean.shape[1]
        r = self.mean.norm(dim=1)
        kappa = torch.where(r < 1, dim * r / (1 - r * r), torch.full_like(r, KAPPA_MAX))
        return kappa.clamp(max=KAPPA_MAX)


class ProCoState(nn.Module):
    """The two estimators of official `ProCoLoss`, and its forward.

    `old` feeds the loss; `new` restarts every epoch. `start_epoch()` (official `_hook_before_epoch`,
    called at the top of every epoch including the first) hands `new`'s mean and count to `old`,
    then re-initialises `new` with a fresh random draw. Within the epoch each call
    `forward(z, y, tau)` folds the batch into both estimators, then returns the logits from the
    updated `old`. ProCo_cifar/main.py calls it once per contrastive view (v2, then v3), so the v3
    logits already include the v2 batch. Under DDP the official folds in the all-gathered batch and
    takes logits on the local one; a caller doing DDP should `update` with gathered features.
    Construction draws `old` then `new`, as the official does; for an exactly reproducible resume,
    seed the generator passed to `start_epoch` from (seed, epoch).
    """

    def __init__(self, num_classes, dim, generator=None):
        super().__init__()
        self.old = VMFEstimator(num_classes, dim, generator)
        self.new = VMFEstimator(num_classes, dim, generator)

    def start_epoch(self, generator=None):
        self.old.mean.copy_(self.new.mean)
        self.old.count.copy_(self.new.count)
        self.new.reset(generator)

    def update(self, z, y):
        self.old.update(z, y)
        self.new.update(z, y)

    def forward(self, z, y, tau):
        self.update(z, y)
        return proco_logits(z, self.old.mu, self.old.kappa, tau)
