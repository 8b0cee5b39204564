"""Decoupling (cRT, LWS, tau-norm, NCM): the stage-2 heads by hand, tau chosen on val, NCM against a
per-sample loop, and real stage-1 -> stage-2 runs that leave the backbone untouched."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ltbench.config import build
from ltbench.tracking import client

from helpers import make, stage1_state, train_on_synth

D = 64          # resnet8's feature size
SMALL = {"backbone": "resnet8", "batch_size": 64, "threads": 1}


def on_features(model):
    """Let the model read feature vectors directly, so a head can be checked by hand."""
    model.encoder = nn.Identity()
    return model


def padded(*rows):
    out = torch.zeros(len(rows), D)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.float32)
    return out


def trained(model):
    return {n for g in model.param_groups() for p in g["params"] for n, q in model.named_parameters() if p is q}


# ----------------------------------------------------------------------------- heads by hand

def test_lws_logits_are_f_k_times_stage1_logits_by_hand():
    model = make("lws")
    model.load_stage1(stage1_state(padded([1.0], [0, 2.0], [-1.0]), torch.tensor([0.5, -1.0, 2.0])))
    on_features(model)
    with torch.no_grad():
        model.scale.copy_(torch.tensor([2.0, 0.5, 3.0]))
    x = padded([1.0, 2.0])
    # f_k (w_k . x + b_k): 2 (1 + 0.5), 0.5 (4 - 1), 3 (-1 + 2)
    assert model(x).tolist() == [[3.0, 1.5, 3.0]]
    assert trained(model) == {"scale"}


def test_lws_logits_match_the_equation_for_random_weights():
    torch.manual_seed(0)
    w, b, f, x = torch.randn(3, D), torch.randn(3), torch.rand(3) + 0.5, torch.randn(5, D)
    model = make("lws")
    model.load_stage1(stage1_state(w, b))
    on_features(model)
    with torch.no_grad():
        model.scale.copy_(f)
    expected = [[f[k] * (sum(w[k, j] * x[i, j] for j in range(D)) + b[k]) for k in range(3)] for i in range(5)]
    assert torch.allclose(model(x), torch.tensor(expected), atol=1e-4)


def test_lws_on_a_cosine_stage1_head_learns_scales_of_s_times_the_cosine():
    torch.manual_seed(1)
    w, x = torch.randn(D, 3), torch.randn(4, D)          # a cosine head stores d x C, no bias
    model = make("lws", cosine_scale=30.0)
    model.load_stage1(stage1_state(w))
    on_features(model)
    with torch.no_grad():
        model.scale.copy_(torch.tensor([1.0, 2.0, 0.5]))
    expected = [[model.scale[k].item() * 30.0 * float(x[i] @ w[:, k] / (x[i].norm() * w[:, k].norm()))
                 for k in range(3)] for i in range(4)]
    assert bool(model.fc.cosine)
    assert torch.allclose(model(x), torch.tensor(expected), atol=1e-4)


def test_tau_norm_rescales_rows_by_norm_to_the_tau_and_drops_the_bias():
    model = make("tau_norm", counts=(20, 2), tau=0.5)
    model.load_stage1(stage1_state(padded([3.0, 4.0], [0, 2.0]), torch.tensor([100.0, -100.0])))
    on_features(model)
    model.fit(None)                                       # a fixed tau needs no data
    # |w_0| = 5, |w_1| = 2: rows (3, 4) / sqrt 5 and (0, 2) / sqrt 2; x = (1, 1); no bias
    assert model(padded([1.0, 1.0]))[0].tolist() == pytest.approx([7 / math.sqrt(5), math.sqrt(2)], rel=1e-6)
    model.tau.fill_(1.0)
    assert model(padded([1.0, 1.0]))[0].tolist() == pytest.approx([(3 + 4) / 5, 1.0], rel=1e-6)


def tau_case():
    """Head row |w_0| = 2 > |w_1| = 1; bias that would always pick class 0, if it were kept."""
    model = make("tau_norm", counts=(20, 2))
    model.load_stage1(stage1_state(padded([2.0], [0, 1.0]), torch.tensor([50.0, 0.0])))
    return on_features(model)


def test_tau_is_chosen_on_the_validation_split_not_test():
    # logits 2 a / 2^tau vs b. val: (1, .8) of class 1 is right only for 2^tau > 2.5 (tau >= 1.4), (1, 0) of
    # class 0 always; test: (1, .8) of class 0 is right only for tau <= 1.3, (0, 1) of class 1 always.
    val_x, val_y = padded([1.0, 0.8], [1.0, 0.0]), torch.tensor([1, 0])
    test_x, test_y = padded([1.0, 0.8], [0.0, 1.0]), torch.tensor([0, 1])
    data = SimpleNamespace(normalize=lambda x: x.float(), val_x=val_x, val_y=val_y, test_x=test_x, test_y=test_y,
                           val_is_test=False)
    model = tau_case()
    model.fit(data)
    assert float(model.tau) == pytest.approx(1.4)        # test would prefer tau = 0
    curve = model.val_curve.tolist()
    assert curve[:14] == [50.0] * 14 and curve[14:] == [100.0] * 7
    assert model(test_x).argmax(1).tolist() == [1, 1]     # val's tau costs the test sample of class 0
    log = model.epoch_log()
    assert log["tau"] == pytest.approx(1.4) and log["val_top1_tau1.3"] == 50.0 and log["val_top1_tau2.0"] == 100.0


def test_tau_norm_without_a_validation_split_says_how_to_fix():
    empty = torch.zeros(0, D)
    data = SimpleNamespace(normalize=lambda x: x.float(), val_x=empty, val_y=torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="val_per_class > 0"):
        tau_case().fit(data)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_ncm_matches_a_per_sample_loop(metric):
    torch.manual_seed(2)
    train_x, train_y = torch.randn(30, D) + 1.0, torch.arange(30) % 3
    test_x = torch.randn(7, D) + 1.0
    model = on_features(make("ncm", metric=metric))
    model.fit(SimpleNamespace(normalize=lambda x: x.float(), train_x=train_x, train_y=train_y))
    mean = [sum(float(train_x[i, j]) for i in range(30)) / 30 for j in range(D)]

    def cl2n(v):
        c = [float(v[j]) - mean[j] for j in range(D)]
        n = math.sqrt(sum(t * t for t in c))
        return [t / n for t in c]
    feats = [cl2n(v) for v in train_x]
    cents = [[sum(feats[i][j] for i in range(30) if train_y[i] == k) / 10 for j in range(D)] for k in range(3)]
    for i in range(7):
        g = cl2n(test_x[i])
        for k in range(3):
            if metric == "cosine":
                dot = sum(a * b for a, b in zip(g, cents[k]))
                want = dot / (math.sqrt(sum(a * a for a in g)) * math.sqrt(sum(b * b for b in cents[k])))
            else:
                want = -sum((a - b) ** 2 for a, b in zip(g, cents[k]))
            assert float(model(test_x[i:i + 1])[0, k]) == pytest.approx(want, abs=1e-5)


def test_ncm_rejects_an_unknown_metric():
    with pytest.raises(ValueError, match="use cosine or euclidean"):
        make("ncm", metric="manhattan")


def test_crt_reinitialises_and_trains_only_a_linear_head():
    model = make("crt")
    w = torch.randn(3, D)
    model.load_stage1(stage1_state(w, torch.zeros(3)))
    assert not torch.equal(model.fc.weight, w) and model.fc.bias is not None
    assert model.fc.weight.abs().max().item() <= 1 / math.sqrt(D)     # nn.Linear's default init, as the official
    assert trained(model) == {"fc.weight", "fc.bias"}
    assert trained(make("tau_norm")) == set() and trained(make("ncm")) == set()


def test_a_stage1_without_a_head_or_with_another_backbone_fails_in_one_line():
    sd = stage1_state(torch.randn(3, D), torch.zeros(3))
    del sd["fc.weight"]
    with pytest.raises(ValueError, match="no classifier `fc.weight`"):
        make("lws").load_stage1(sd)
    with pytest.raises(ValueError, match="stage-1 backbone does not fit backbone='resnet20'"):
        make("crt", backbone="resnet20").load_stage1(stage1_state(torch.randn(3, D), torch.zeros(3)))


def test_a_preset_epochs_override_leaves_training_free_methods_training_free():
    assert build("fmnist", 100, "tau_norm", 0, overrides={"epochs": 16}).epochs == 0
    assert build("fmnist", 100, "ncm", 0, overrides={"epochs": 16}).epochs == 0
    assert build("fmnist", 100, "crt", 0, overrides={"epochs": 2}).epochs == 2


def test_frozen_backbone_stays_in_eval_mode_through_train_and_eval_switches():
    model = make("crt")
    assert not model.encoder.training
    model.train()
    assert model.training and model.fc.training and not any(m.training for m in model.encoder.modules())
    model.eval()
    model.train()
    assert not any(m.training for m in model.encoder.modules())


# ----------------------------------------------------------------------------- real runs

def run(synth, root, method, **over):
    return train_on_synth(synth, root, method, {**SMALL, **over})


@pytest.fixture(scope="module")
def stage1(synth, tmp_path_factory):
    root = tmp_path_factory.mktemp("decoupling")
    return root, run(synth, root, "ce", epochs=2)


def state(out):
    return torch.load(out / "ckpt" / "last.pt", weights_only=False)["model"]


@pytest.mark.parametrize("method", ["crt", "lws", "tau_norm", "ncm"])
def test_stage2_run_from_a_stage1_checkpoint_leaves_the_backbone_untouched(synth, stage1, method):
    root, s1 = stage1
    out = run(synth, root, method, epochs=1, init_from=str(s1 / "ckpt" / "last.pt"))
    res = json.loads((out / "result.json").read_text())
    assert res["method"] == method and res["top1_last"] == res["top1_last"]
    before, after = state(s1), state(out)
    enc = [k for k in before if k.startswith("encoder.")]
    assert any("running_mean" in k for k in enc)
    for k in enc:                                         # weights and BN running statistics alike
        assert torch.equal(before[k], after[k]), k
    if method == "crt":
        assert res["epochs"] == 1 and not torch.equal(before["fc.weight"], after["fc.weight"])
    if method == "lws":
        assert torch.equal(before["fc.weight"], after["fc.weight"]) and torch.equal(before["fc.bias"], after["fc.bias"])
        assert not torch.equal(after["scale"], torch.ones_like(after["scale"]))
    if method == "tau_norm":
        assert res["epochs"] == 0
        metrics = client(res["tracking_uri"]).get_run(res["run_id"]).data.metrics
        assert metrics["tau"] == pytest.approx(float(after["tau"]))
        assert {f"val_top1_tau{t / 10:.1f}" for t in range(21)} <= set(metrics)
