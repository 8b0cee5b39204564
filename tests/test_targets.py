"""TSC targets: the simplex optimum, the checks, Hungarian assignment and EMA centroids."""
import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltbench.targets import (SIMPLEX_TOL, _uniformity_excess, check_targets, class_centroids, ema_update,
                             generate_targets, hungarian_assign, save_targets)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # thousands of tiny matmuls: a second thread only adds contention
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def official_loss(U, tau):
    """L_u as target_generation.py writes it, self term included, on rows renormalised in float64."""
    U = F.normalize(torch.as_tensor(U, dtype=torch.float64), dim=1)
    return torch.logsumexp(U @ U.T / tau, dim=1).mean().item()


@pytest.fixture(scope="module")
def targets_10():
    return generate_targets(10, 128, seed=0)


@pytest.mark.parametrize("C", [10, 100])
def test_adam_reaches_the_regular_simplex(C, targets_10):
    U, info = targets_10 if C == 10 else generate_targets(C, 128, seed=0)
    assert U.shape == (C, 128) and U.dtype == np.float32
    G = U.astype(np.float64) @ U.T.astype(np.float64)
    off = G[~np.eye(C, dtype=bool)]
    assert np.abs(off + 1 / (C - 1)).max() <= SIMPLEX_TOL
    assert info["max_cos"] == pytest.approx(-1 / (C - 1), abs=SIMPLEX_TOL)
    assert info["simplex_applicable"] and info["simplex_ok"]
    assert info["min_dist"] == pytest.approx(math.sqrt(2 + 2 / (C - 1)), abs=1e-4)
    # the optimum's loss: 1/tau + log(1 + (C-1) exp((-1/(C-1) - 1)/tau))
    simplex_loss = 1 / 0.07 + math.log1p((C - 1) * math.exp((-1 / (C - 1) - 1) / 0.07))
    assert info["best_loss"] == pytest.approx(simplex_loss, abs=1e-9)
    assert info["loss"] == pytest.approx(official_loss(U, 0.07), abs=1e-9)


def test_best_iterate_is_kept_and_seeded(targets_10):
    U, info = targets_10
    assert info["best_loss"] <= info["final_loss"]
    assert 0 <= info["best_iter"] <= info["iters"] == 10000
    U2, _ = generate_targets(10, 128, seed=0, iters=200)
    U3, _ = generate_targets(10, 128, seed=0, iters=200)
    U4, _ = generate_targets(10, 128, seed=1, iters=200)
    assert np.array_equal(U2, U3) and not np.allclose(U2, U4)


def test_short_run_is_not_a_simplex():
    _, info = generate_targets(10, 128, seed=0, iters=50)
    assert info["simplex_ok"] is False and info["simplex_max_dev"] > SIMPLEX_TOL


def test_gradient_matches_autograd_of_the_official_loss():
    x = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tau = 0.3
    excess, u, grad = _uniformity_excess(x.clone(), tau)
    xa = x.clone().requires_grad_()
    loss = torch.logsumexp(F.normalize(xa, dim=1) @ F.normalize(xa, dim=1).T / tau, dim=1).mean()
    loss.backward()
    assert torch.allclose(grad, xa.grad, rtol=1e-10, atol=1e-13)
    assert 1 / tau + excess.item() == pytest.approx(loss.item(), rel=1e-13)
    assert torch.allclose(u.norm(dim=1), torch.ones(7, dtype=torch.float64))


def test_check_targets_on_hand_made_sets():
    tri = np.array([[math.cos(a), math.sin(a)] for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)])
    info = check_targets(tri, tau=0.5)
    assert info["max_cos"] == pytest.approx(-0.5) and info["min_cos"] == pytest.approx(-0.5)
    assert info["min_dist"] == pytest.approx(math.sqrt(3))
    assert info["simplex_ok"] and info["simplex_max_dev"] < 1e-12
    assert info["loss"] == pytest.approx(official_loss(tri, 0.5), rel=1e-12)
    assert info["loss"] == pytest.approx(math.log(math.exp(2) + 2 * math.exp(-1)), rel=1e-12)

    # four points in the plane: more than dim + 1, no simplex; the square's nearest pairs are orthogonal
    square = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=float)
    info = check_targets(square)
    assert not info["simplex_applicable"] and info["simplex_ok"] is None
    assert info["max_cos"] == pytest.approx(0.0, abs=1e-15) and info["min_dist"] == pytest.approx(math.sqrt(2))

    # a triangle nudged off the simplex fails the check
    bent = tri.copy()
    bent[1] = [math.cos(2.2), math.sin(2.2)]
    assert check_targets(bent)["simplex_ok"] is False

    with pytest.raises(ValueError, match="unit vectors"):
        check_targets(2 * tri)


def test_check_targets_blocks_agree_with_one_gram():
    from ltbench import targets as T
    U = F.normalize(torch.randn(9, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)), dim=1).numpy()
    full = check_targets(U)
    orig = T._off_diagonal_cosines
    T._off_diagonal_cosines = lambda U: orig(U, block=2)  # several uneven blocks
    try:
        assert check_targets(U) == pytest.approx(full)
    finally:
        T._off_diagonal_cosines = orig


def test_save_targets_round_trip(tmp_path, targets_10):
    U, info = targets_10
    npy, js = tmp_path / "t" / "c10_d128.npy", tmp_path / "t" / "c10_d128.json"
    save_targets(U, info, npy, js)
    assert np.array_equal(np.load(npy), U) and np.load(npy).dtype == np.float32
    saved = json.loads(js.read_text())
    assert saved["simplex_ok"] is True and saved["max_cos"] == pytest.approx(-1 / 9, abs=SIMPLEX_TOL)
    # a name without .npy is written exactly as given
    save_targets(U, info, tmp_path / "plain", tmp_path / "plain.json")
    assert (tmp_path / "plain").exists()


# ----------------------------------------------------------------------------------------
# Assignment

def test_hungarian_recovers_a_known_permutation():
    C, d = 8, 16
    targets = F.normalize(torch.randn(C, d, generator=torch.Generator().manual_seed(3)), dim=1)
    true = np.array([3, 0, 6, 1, 7, 2, 5, 4])  # class c sits near target true[c]
    noise = 0.05 * torch.randn(C, d, generator=torch.Generator().manual_seed(4))
    centroids = 3.0 * (targets[torch.as_tensor(true)] + noise)  # unnormalised on purpose
    perm = hungarian_assign(centroids, targets)
    assert perm.dtype == np.int64 and np.array_equal(perm, true)


def test_hungarian_agrees_with_brute_force():
    rng = np.random.default_rng(5)
    for _ in range(5):
        c = rng.standard_normal((5, 3))
        t = rng.standard_normal((5, 3))
        cos = (c / np.linalg.norm(c, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T
        best = max(itertools.permutations(range(5)), key=lambda p: sum(cos[i, p[i]] for i in range(5)))
        perm = hungarian_assign(c, t)
        assert sum(cos[i, perm[i]] for i in range(5)) == pytest.approx(sum(cos[i, best[i]] for i in range(5)), rel=1e-12)
        assert sorted(perm) == list(range(5))


def test_class_centroids_by_hand():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -2.0], [3.0, 4.0]])
    y = torch.tensor([0, 0, 1, 2])
    c = class_centroids(f, y, 3)
    s = 1 / math.sqrt(2)
    assert torch.allclose(c, torch.tensor([[s, s], [0.0, -1.0], [0.6, 0.8]]))
    with pytest.raises(ValueError, match=r"classes \[1\] have no samples"):
        class_centroids(f[[0, 1, 3]], torch.tensor([0, 0, 2]), 3)


def test_ema_update_by_hand():
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    feats = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.6, -0.8]])
    labels = torch.tensor([0, 0, 2])
    new = ema_update(c, feats, labels, momentum=0.9)
    # class 0: batch mean (0.5, 0.5) -> unit (s, s); 0.9 (1, 0) + 0.1 (s, s), normalised
    s = 1 / math.sqrt(2)
    a0, b0 = 0.9 + 0.1 * s, 0.1 * s
    # class 2: 0.9 (-1, 0) + 0.1 (0.6, -0.8) = (-0.84, -0.08), normalised
    a2, b2 = -0.84, -0.08
    want = torch.tensor([[a0, b0], [0.0, 1.0], [a2, b2]]) / torch.tensor([[math.hypot(a0, b0)], [1.0], [math.hypot(a2, b2)]])
    assert torch.allclose(new, want, atol=1e-7)
    assert torch.equal(c, torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))  # input untouched


def test_ema_update_then_assign_follows_the_features():
    # centroids start random; a few EMA steps on features sitting at permuted targets move the
    # assignment to that permutation, the online TSC loop in miniature
    C, d = 6, 8
    targets = F.normalize(torch.randn(C, d, generator=torch.Generator().manual_seed(6)), dim=1)
    true = torch.tensor([2, 5, 0, 4, 1, 3])
    centroids = F.normalize(torch.randn(C, d, generator=torch.Generator().manual_seed(7)), dim=1)
    labels = torch.arange(C).repeat(4)
    for _ in range(40):
        centroids = ema_update(centroids, targets[true[labels]], labels)
    assert np.array_equal(hungarian_assign(centroids, targets), true.numpy())
