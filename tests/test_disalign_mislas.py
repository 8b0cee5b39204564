"""DisAlign and MiSLAS: calibration, re-weighting and label-aware smoothing against their equations,
the official MiSLAS settings, and real runs (frozen backbone; shifted BN moves only BN statistics)."""
import json
import math

import pytest
import torch
from torch import nn

from ltbench import train
from ltbench.config import build
from ltbench.methods.disalign import grw_weights
from ltbench.methods.mislas import label_aware_epsilon, label_aware_smoothing, official_settings

from helpers import make, stage1_state, train_on_synth

D = 64
SMALL = {"backbone": "resnet8", "batch_size": 64, "threads": 1}


def trained(model):
    return {n for g in model.param_groups() for p in g["params"] for n, q in model.named_parameters() if p is q}


def sigmoid(t):
    return 1 / (1 + math.exp(-t))


# ----------------------------------------------------------------------------- DisAlign

def test_grw_weights_by_hand():
    # rho = 1: w_k proportional to N / n_k, i.e. to (0.01, 0.1, 1), scaled to sum to C = 3
    assert grw_weights([100, 10, 1], 1.0).tolist() == pytest.approx([3 * 0.01 / 1.11, 3 * 0.1 / 1.11, 3 / 1.11])
    counts, rho = [500, 120, 37, 5], 1.2
    raw = [(sum(counts) / n) ** rho for n in counts]
    assert grw_weights(counts, rho).tolist() == pytest.approx([4 * r / sum(raw) for r in raw], rel=1e-12)
    assert grw_weights([7, 7], 1.2).tolist() == pytest.approx([1.0, 1.0])


def test_disalign_calibration_matches_the_equation():
    torch.manual_seed(0)
    w, b, x = torch.randn(3, D), torch.randn(3), torch.randn(4, D)
    model = make("disalign")
    model.load_stage1(stage1_state(w, b))
    model.encoder = nn.Identity()
    alpha, beta = [0.5, -1.0, 2.0], [0.3, 1.0, -2.0]
    with torch.no_grad():
        model.alpha.copy_(torch.tensor(alpha))
        model.beta.copy_(torch.tensor(beta))
        model.confidence.weight.normal_(0, 0.1)
    v, c = model.confidence.weight[0].detach(), float(model.confidence.bias.detach())
    out = model(x).detach()
    for i in range(4):
        s = sigmoid(sum(float(v[j] * x[i, j]) for j in range(D)) + c)
        for k in range(3):
            z = sum(float(w[k, j] * x[i, j]) for j in range(D)) + float(b[k])
            want = (1 + s * alpha[k]) * z + s * beta[k]
            assert float(out[i, k]) == pytest.approx(want, abs=1e-4)


def test_disalign_on_a_cosine_head_gates_with_the_normalised_feature():
    torch.manual_seed(1)
    w, x = torch.randn(D, 3), torch.randn(2, D)
    model = make("disalign", cosine_scale=30.0)
    model.load_stage1(stage1_state(w))
    model.encoder = nn.Identity()
    v, c = model.confidence.weight[0].detach(), float(model.confidence.bias.detach())
    out = model(x).detach()
    for i in range(2):
        xn = x[i] / x[i].norm()
        s = sigmoid(float(v @ xn) + c)
        for k in range(3):
            z = 30.0 * float(xn @ w[:, k] / w[:, k].norm())
            assert float(out[i, k]) == pytest.approx((1 + s) * z, abs=1e-4)   # alpha 1, beta 0


def test_disalign_starts_as_the_official_layer_and_trains_only_the_calibration():
    model = make("disalign")
    assert torch.equal(model.confidence.weight, torch.full((1, D), 0.1))
    assert torch.equal(model.alpha, torch.ones(3)) and torch.equal(model.beta, torch.zeros(3))
    assert trained(model) == {"alpha", "beta", "confidence.weight", "confidence.bias"}
    assert model.sampler == "instance" and model.stage1 == "ce"


def test_disalign_loss_is_the_grw_weighted_cross_entropy():
    torch.manual_seed(2)
    model = make("disalign", rho=1.2)
    model.load_stage1(stage1_state(torch.randn(3, D), torch.randn(3)))
    model.encoder = nn.Identity()
    x, y = torch.randn(6, D), torch.tensor([0, 1, 2, 2, 0, 1])
    logits = model(x).detach()
    w = grw_weights((30, 10, 3), 1.2)
    num = sum(float(w[y[i]]) * -math.log(float(logits[i].softmax(0)[y[i]])) for i in range(6))
    assert model.loss([x], y, None).item() == pytest.approx(num / sum(float(w[t]) for t in y), rel=1e-5)


# ----------------------------------------------------------------------------- MiSLAS

@pytest.mark.parametrize("shape", ["concave", "linear", "convex"])
def test_label_aware_epsilon_matches_the_official_formula(shape):
    counts, head, tail = [500, 200, 50, 5], 0.4, 0.1
    n1, nk = max(counts), min(counts)
    want = []
    for n in counts:
        u = (n - nk) * math.pi / (2 * (n1 - nk))
        want.append({"concave": tail + (head - tail) * math.sin(u),
                     "linear": tail + (head - tail) * (n - nk) / (n1 - nk),
                     "convex": head + (head - tail) * math.sin(1.5 * math.pi + u)}[shape])
    eps = label_aware_epsilon(counts, head, tail, shape).tolist()
    assert eps == pytest.approx(want, abs=1e-12)
    assert eps[0] == pytest.approx(head) and eps[-1] == pytest.approx(tail)


def test_label_aware_epsilon_edge_cases():
    assert label_aware_epsilon([9, 9], 0.3, 0.0).tolist() == [0.3, 0.3]
    with pytest.raises(ValueError, match="use concave, linear or convex"):
        label_aware_epsilon([9, 3], 0.3, 0.0, "exp")


def test_label_aware_smoothing_matches_a_per_sample_loop():
    torch.manual_seed(3)
    logits, y = torch.randn(5, 4), torch.tensor([0, 3, 1, 3, 2])
    eps = torch.tensor([0.4, 0.3, 0.2, 0.1])
    total = 0.0
    for i in range(5):
        logp = [math.log(float(p)) for p in logits[i].softmax(0)]
        e = float(eps[y[i]])
        total += (1 - e) * -logp[y[i]] + e * -sum(logp) / 4
    assert float(label_aware_smoothing(logits, y, eps)) == pytest.approx(total / 5, rel=1e-6)


def cifar_counts(num_classes, imb):
    n_max = 50000 // num_classes
    return [int(n_max * (1 / imb) ** (k / (num_classes - 1))) for k in range(num_classes)]


@pytest.mark.parametrize("num_classes, imb, row", [
    (10, 100, (0.3, 0.0, False, 0.5)), (10, 50, (0.2, 0.0, False, 0.2)), (10, 10, (0.1, 0.0, False, 0.2)),
    (100, 100, (0.4, 0.1, True, 0.2)), (100, 50, (0.3, 0.0, True, 0.1)), (100, 10, (0.2, 0.0, True, 0.1)),
])
def test_official_cifar_settings_follow_the_dataset_and_if(num_classes, imb, row):
    assert official_settings("cifar", cifar_counts(num_classes, imb)) == row


def test_settings_left_null_resolve_and_explicit_ones_win():
    assert official_settings("imagenet", [1280, 5]) == (0.3, 0.0, True, 0.05)
    assert official_settings("cifar", [150, 15, 40, 70]) == (0.4, 0.1, True, 0.2)      # no row: CIFAR-100 IF 100
    model = make("mislas", counts=tuple(cifar_counts(10, 100)), smooth_head=0.25, shift_bn=True)
    assert model.settings == {"smooth_head": 0.25, "smooth_tail": 0.0, "shift_bn": True, "lr_factor": 0.5}
    assert model.eps[0].item() == pytest.approx(0.25) and model.eps[-1].item() == pytest.approx(0.0)
    assert model.epoch_log() == {"smooth_head": 0.25, "smooth_tail": 0.0, "shift_bn": 1.0, "lr_factor": 0.5}


def test_mislas_trains_the_stage1_classifier_slower_and_the_scales_at_full_lr():
    model = make("mislas", lr_factor=0.2)
    w, b = torch.randn(3, D), torch.randn(3)
    model.load_stage1(stage1_state(w, b))
    assert torch.equal(model.fc.weight, w) and torch.equal(model.fc.bias, b)     # fine-tuned, not re-initialised
    groups = model.param_groups()
    assert groups[0]["lr_scale"] == 0.2 and groups[1].get("lr_scale", 1.0) == 1.0
    assert trained(model) == {"fc.weight", "fc.bias", "scale"}
    assert model.sampler == "class_balanced" and model.stage1 == "mislas_stage1"


def test_shift_bn_puts_only_the_frozen_backbone_in_train_mode_while_training():
    shifted, plain = make("mislas", shift_bn=True), make("mislas", shift_bn=False)
    assert shifted.encoder.training and not plain.encoder.training
    shifted.eval()
    assert not shifted.encoder.training
    shifted.train()
    assert shifted.encoder.training and not any(p.requires_grad for p in shifted.encoder.parameters())


def test_mislas_stage1_schedule_is_the_official_cifar_rule():
    cfg = build("cifar100", 100, "mislas_stage1", 0)
    lrs = [train.learning_rate(cfg, e) for e in range(200)]
    # train_stage1.py, cos False: e (1-indexed) <= 5: lr e / 5; > 180: lr 0.01; > 160: lr 0.1; else lr
    want = [0.1 * e / 5 if e <= 5 else 0.1 * 0.01 if e > 180 else 0.1 * 0.1 if e > 160 else 0.1 for e in range(1, 201)]
    assert lrs == pytest.approx(want, rel=1e-12)
    assert cfg.params == {"alpha": 1.0} and cfg.batch_size == 128 and cfg.weight_decay == 2e-4


# ----------------------------------------------------------------------------- real runs

def run(synth, root, name, method, **over):
    return train_on_synth(synth, root, method, {**SMALL, **over}, name=name)


def ckpt(out):
    return torch.load(out / "ckpt" / "last.pt", weights_only=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("disalign_mislas")


@pytest.fixture(scope="module")
def mixup_stage1(synth, root):
    return run(synth, root, "mislas_stage1", "mislas_stage1", epochs=1)


@pytest.mark.parametrize("shift_bn", [True, False])
def test_mislas_after_a_mixup_stage1_moves_bn_statistics_only_when_shifted(synth, root, mixup_stage1, shift_bn):
    s1 = mixup_stage1
    out = run(synth, root, f"mislas_shift{shift_bn}", "mislas", epochs=1, shift_bn=shift_bn, lr_factor=0.5,
              init_from=str(s1 / "ckpt/last.pt"))
    assert json.loads((out / "result.json").read_text())["method"] == "mislas"
    before, ck = ckpt(s1)["model"], ckpt(out)
    after = ck["model"]
    stats = [k for k in before if k.startswith("encoder.") and ("running_" in k or "num_batches" in k)]
    weights = [k for k in before if k.startswith("encoder.") and k not in stats]
    assert stats and all(torch.equal(before[k], after[k]) for k in weights)
    assert any(not torch.equal(before[k], after[k]) for k in stats) == shift_bn
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert not torch.equal(after["scale"], torch.ones_like(after["scale"]))
    lr = [g["lr"] for g in ck["optimizer"]["param_groups"]]
    assert lr == pytest.approx([0.5 * 0.1, 0.1])                 # epoch 1 of the cosine: the base lr


def test_disalign_on_ce_and_on_a_cosine_ldam_stage1(synth, root):
    for stage1 in ("ce", "ldam_drw"):
        s1 = run(synth, root, stage1, stage1, epochs=1)
        out = run(synth, root, f"disalign@{stage1}", "disalign", epochs=1, init_from=str(s1 / "ckpt/last.pt"))
        before, after = ckpt(s1)["model"], ckpt(out)["model"]
        for k in before:
            if k.startswith("encoder."):
                assert torch.equal(before[k], after[k]), k
        assert bool(after["fc.cosine"]) == (stage1 == "ldam_drw")
        assert not torch.equal(after["alpha"], torch.ones_like(after["alpha"]))
        assert json.loads((out / "result.json").read_text())["top1_last"] >= 0
