"""GLMC and GLMC + MaxNorm: the mixing, the soft labels, the stop-gradient, the cumulative alpha,
the re-sampling weights, the loss against its equation by hand, inference, and real runs."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from ltbench import methods
from ltbench.config import build
from ltbench.methods.base import DataInfo, Step
from ltbench.methods.glmc import consistency, cutmix_box, label_weights, parabolic_alpha

from helpers import train_on_synth

COUNTS = (150, 70, 32, 15)
INFO = DataInfo(num_classes=4, counts=COUNTS, in_channels=3, image_size=8)
Y, YR = torch.tensor([0, 0, 1, 3]), torch.tensor([3, 2, 1, 3])


CIFAR100_IF100 = {"resample_weighting": 0.0, "label_weighting": 1.2, "contrast_weight": 4.0}


def make(name="glmc", **params):
    torch.manual_seed(0)
    cfg = build("synth", 10, name, 0, overrides={"backbone": "resnet8", **CIFAR100_IF100, **params})
    return methods.get(name)(cfg, INFO)


def images(seed, n=len(Y)):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


class FixedRng:
    """Stands in for step.numpy_rng(): lam, then the box centre row and column."""

    def __init__(self, lam, cy, cx):
        self.lam, self.centre = lam, [cy, cx]

    def beta(self, a, b):
        assert (a, b) == (1.0, 1.0)                     # Beta(1, 1), whatever the official --beta says
        return self.lam

    def integers(self, high):
        return self.centre.pop(0)


def test_cutmix_box_by_hand():
    # side ceil(8 * sqrt(0.25)) = 4 around row 1, column 6: rows 1-2 .. 1+2 clipped at 0, columns 4..8
    assert cutmix_box(8, 8, 0.75, 1, 6) == (0, 3, 4, 8)
    assert cutmix_box(8, 8, 0.75, 4, 4) == (2, 6, 2, 6)
    # lam = 0 asks for a full 8 x 8 box; around row 1 it is clipped to rows 0..5
    assert cutmix_box(8, 8, 0.0, 1, 4) == (0, 5, 0, 8)


def test_mixing_pastes_the_box_and_mixes_labels_by_lam_not_by_area():
    model = make()
    x1, x2, r1, r2 = images(1), images(2), images(3), images(4)
    x_g, x_l, t, t_w = model.mix([x1, x2], Y, ([r1, r2], YR), FixedRng(0.0, 1, 4))
    assert torch.equal(x_g, r1)                          # lam = 0: all of x~1
    expected = x2.clone()
    expected[:, :, 0:5, 0:8] = r2[:, :, 0:5, 0:8]        # the clipped box covers 40 of 64 pixels
    assert torch.equal(x_l, expected)
    assert torch.equal(t, F.one_hot(YR, 4).float())      # still lam = 0, not the area 40/64

    x_g, x_l, t, t_w = model.mix([x1, x2], Y, ([r1, r2], YR), FixedRng(0.75, 4, 4))
    assert torch.allclose(x_g, 0.75 * x1 + 0.25 * r1)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 2:6] = True
    assert torch.equal(x_l[:, :, inside], r2[:, :, inside]) and torch.equal(x_l[:, :, ~inside], x2[:, :, ~inside])
    v = [c ** -1.2 for c in COUNTS]
    v = [4 * w / sum(v) for w in v]
    for i, (a, b) in enumerate(zip(Y.tolist(), YR.tolist())):
        row = [0.0] * 4
        row[a] += 0.75
        row[b] += 0.25
        assert t[i].tolist() == pytest.approx(row)
        assert t_w[i].tolist() == pytest.approx([r * w for r, w in zip(row, v)], rel=1e-6)


def test_label_weights_sum_to_the_number_of_classes():
    v = label_weights(COUNTS, 1.2)
    assert v.sum().item() == pytest.approx(4.0)
    assert (v[3] / v[0]).item() == pytest.approx((150 / 15) ** 1.2)
    assert torch.allclose(make().label_weight.double(), v)


def test_the_consistency_term_stops_the_gradient_on_the_target_side():
    g = torch.Generator().manual_seed(0)
    u_g, u_l, h_g, h_l = (torch.randn(3, 5, generator=g, requires_grad=True) for _ in range(4))
    loss = consistency(u_g, u_l, h_g, h_l)
    loss.backward()
    assert h_g.grad is None and h_l.grad is None           # no gradient path into the targets at all
    assert u_g.grad.abs().sum() > 0 and u_l.grad.abs().sum() > 0
    cos = lambda a, b: float(a @ b) / (float(a.norm()) * float(b.norm()))
    with torch.no_grad():
        by_hand = -sum(cos(u_g[i], h_l[i]) for i in range(3)) / 3 - sum(cos(u_l[i], h_g[i]) for i in range(3)) / 3
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)


def test_alpha_decays_parabolically_from_one_with_the_0_indexed_epoch():
    assert parabolic_alpha(0, 200) == 1.0
    assert parabolic_alpha(100, 200) == 0.75
    model = make()
    model.start_epoch(150, 200)
    assert model.epoch_log()["alpha"] == pytest.approx(1 - 0.75 ** 2)


def soft_ce_by_hand(logits, target):
    total = 0.0
    for o, t in zip(logits.tolist(), target.tolist()):
        log_z = math.log(sum(math.exp(v) for v in o))
        total -= sum(tk * (ok - log_z) for ok, tk in zip(o, t))
    return total / len(logits)


def test_loss_equals_the_equation_by_hand():
    model = make()
    views, paired = [images(1), images(2)], ([images(3), images(4)], YR)
    step = Step(50, 200, 0, 1, torch.Generator().manual_seed(5), paired)
    loss = model.loss(views, Y, step)
    # the same lam and box: the step's NumPy stream is drawn from a generator in the same state
    x_g, x_l, t, t_w = model.mix(views, Y, paired, Step(50, 200, 0, 1, torch.Generator().manual_seed(5)).numpy_rng())
    f_g, f_l = model.encoder(x_g), model.encoder(x_l)
    h_g, h_l = model.projection(f_g), model.projection(f_l)
    u_g, u_l = model.predictor(h_g), model.predictor(h_l)
    alpha = 1 - (50 / 200) ** 2
    expected = (alpha * (soft_ce_by_hand(model.fc(f_g), t) + soft_ce_by_hand(model.fc(f_l), t))
                + (1 - alpha) * (soft_ce_by_hand(model.fc_cb(f_g), t_w) + soft_ce_by_hand(model.fc_cb(f_l), t_w))
                + 4.0 * consistency(u_g, u_l, h_g, h_l).item())
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_inference_uses_fc_cb_only():
    model = make().eval()
    x = images(1)
    with torch.no_grad():
        f = model.encoder(x)
        assert torch.equal(model(x), model.fc_cb(f))
        assert not torch.allclose(model(x), model.fc(f))


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0])
def test_resampled_class_frequencies_follow_n_to_the_1_minus_q(q):
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(COUNTS)])
    order = make(resample_weighting=q).paired_order(labels, 0, 10, torch.Generator().manual_seed(0), 200_000)
    freq = torch.bincount(labels[order], minlength=4).double() / len(order)
    expected = torch.tensor([n ** (1 - q) for n in COUNTS], dtype=torch.float64)
    assert torch.allclose(freq, expected / expected.sum(), atol=0.005)


def test_maxnorm_caps_fc_cb_rows_at_the_bound_fixed_before_training():
    model = make("glmc_maxnorm", maxnorm_thresh=0.5)
    with torch.no_grad():
        model.fc_cb.weight.mul_(torch.tensor([0.5, 1.0, 2.0, 3.0])[:, None])
    norms = [float(r.norm()) for r in model.fc_cb.weight.detach()]
    model.fit(None)
    bound = min(norms) + 0.5 * (max(norms) - min(norms))
    assert model.maxnorm_bound.item() == pytest.approx(bound, rel=1e-6)

    with torch.no_grad():
        model.fc_cb.weight.mul_(1.5)                     # a step that grows every row
    before, bias = model.fc_cb.weight.detach().clone(), model.fc_cb.bias.detach().clone()
    model.after_step()
    for row_before, row in zip(before, model.fc_cb.weight):
        n = float(row_before.norm())
        expected = row_before * (bound / n) if n > bound else row_before
        assert torch.allclose(row, expected, rtol=1e-6)
    assert torch.equal(model.fc_cb.bias, bias)


@pytest.mark.parametrize("name", ["glmc", "glmc_maxnorm"])
def test_two_epochs_of_the_real_trainer(name, synth, tmp_path):
    out = train_on_synth(synth, tmp_path, name, {"epochs": 2, "backbone": "resnet8", "batch_size": 64, "threads": 1})
    res = json.loads((out / "result.json").read_text())
    assert res["epochs"] == 2 and 0 <= res["top1_last"] <= 100
    state = torch.load(out / "ckpt" / "last.pt", weights_only=False)["model"]
    if name == "glmc_maxnorm":                           # the trainer ran the projection after each step
        assert math.isfinite(state["maxnorm_bound"].item())
        assert state["fc_cb.weight"].norm(dim=1).max() <= state["maxnorm_bound"] * (1 + 1e-6)


def test_unset_weights_come_from_the_official_table_by_classes_and_if():
    from ltbench.methods.glmc import official_weights
    assert official_weights("cifar", 100, 50) == {"resample_weighting": 0.2, "label_weighting": 1.2,
                                                 "contrast_weight": 6.0}
    assert official_weights("cifar", 10, 100)["contrast_weight"] == 1.0
    assert official_weights("cifar", 10, 12)["label_weighting"] == 1.0       # nearest IF: 10
    cfg = build("synth", 10, "glmc", 0, overrides={"backbone": "resnet8"})
    m = methods.get("glmc")(cfg, INFO)       # 4 classes at IF 10: the CIFAR-10 IF-10 row
    assert (m.p["resample_weighting"], m.p["label_weighting"], m.p["contrast_weight"]) == (0.2, 1.0, 2.0)
