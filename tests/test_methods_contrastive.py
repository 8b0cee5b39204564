"""BCL, ProCo, Hybrid-SC/PSC: each loss against its equation written out per sample, the gradient
paths that make the method what it is, an exact ProCo resume, and a real 2-epoch training run."""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from ltbench import methods
from ltbench.config import build
from ltbench.methods.base import DataInfo, Step
from ltbench.models.heads import NormedLinear
from ltbench.vmf import proco_logits

from helpers import train_on_synth

COUNTS = (150, 70, 32, 15)
INFO = DataInfo(num_classes=4, counts=COUNTS, in_channels=3, image_size=12)
Y = torch.tensor([0, 0, 1, 2, 3, 0, 1, 3])


def make(name, family="cifar", seed=0, **params):
    torch.manual_seed(seed)
    cfg = build("synth", 10, name, seed, family=family, overrides={"backbone": "resnet8", **params})
    return methods.get(name)(cfg, INFO)


def batch(n_views, seed=1, n=len(Y)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 12, 12, generator=g) for _ in range(n_views)]


def step(epoch=0, epochs=10, paired=None):
    return Step(epoch, epochs, 0, 1, torch.Generator().manual_seed(0), paired)


def la_ce_by_hand(logits, y):
    """mean_i -log[ pi_y e^{o_y} / sum_k pi_k e^{o_k} ], one sample at a time."""
    pi = [c / sum(COUNTS) for c in COUNTS]
    total = 0.0
    for o, t in zip(logits.tolist(), y.tolist()):
        total -= math.log(pi[t] * math.exp(o[t]) / sum(p * math.exp(v) for p, v in zip(pi, o)))
    return total / len(y)


def ce_by_hand(logits, y):
    rows = zip(logits.tolist(), y.tolist())
    return sum(-math.log(math.exp(o[t]) / sum(math.exp(v) for v in o)) for o, t in rows) / len(y)


# ------------------------------------------------------------------------------------------ BCL

def bcl_by_hand(z2, z3, protos, y, tau):
    """Spec §3.11: anchors are the 2B views; A_k = class-k items of S without the anchor."""
    s = torch.cat([z2, z3, protos]).detach().double()
    lab = torch.cat([y, y, torch.arange(len(protos))]).tolist()
    losses = []
    for i in range(2 * len(y)):
        others = [j for j in range(len(lab)) if j != i]
        size = {k: sum(lab[j] == k for j in others) for k in set(lab)}
        den = sum(math.exp(float(s[i] @ s[j]) / tau) / size[lab[j]] for j in others)
        pos = [j for j in others if lab[j] == lab[i]]
        losses.append(-sum(float(s[i] @ s[p]) / tau - math.log(den) for p in pos) / len(pos))
    return sum(losses) / len(losses)


def test_bcl_loss_is_lambda_la_plus_mu_bcl_from_its_pieces():
    model = make("bcl")
    views = batch(3)
    loss = model.loss(views, Y, step())
    b = len(Y)
    feat = model.encoder(torch.cat(views))
    z = F.normalize(model.head(feat), dim=1)
    protos = F.normalize(model.head_fc(model.fc.weight), dim=1)
    expected = (2.0 * la_ce_by_hand(model.fc(feat[:b]), Y)
                + 0.6 * bcl_by_hand(z[b:2 * b], z[2 * b:], protos, Y, 0.1))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_bcl_trains_the_classifier_weights_through_the_prototypes():
    model = make("bcl", ce_weight=0.0)     # no CE: the only path to fc.weight is head_fc(w_k)
    model.loss(batch(3), Y, step()).backward()
    assert model.fc.weight.grad.abs().sum() > 0
    assert torch.all(model.fc.bias.grad == 0)
    assert model.head_fc[0].weight.grad.abs().sum() > 0


def test_bcl_architecture_follows_the_dataset_family():
    cifar, imagenet = make("bcl"), make("bcl", family="imagenet")
    d = cifar.encoder.out_dim
    assert isinstance(cifar.fc, torch.nn.Linear)
    assert [m.out_features for m in cifar.head_fc if isinstance(m, torch.nn.Linear)] == [512, 128]
    assert isinstance(imagenet.fc, NormedLinear) and imagenet.fc.scale == 30.0
    assert [m.out_features for m in imagenet.head if isinstance(m, torch.nn.Linear)] == [d, 1024]
    assert imagenet.prototypes().shape == (4, 1024)


# ---------------------------------------------------------------------------------------- ProCo

def vmf_by_hand(features, y, num_classes):
    """mu_k, kappa_k = p R / (1 - R^2) of the class means of `features` (every class present);
    kappa is capped at 1e5, which a single-sample class (R = 1 up to rounding) hits."""
    means = torch.stack([features[y == k].double().mean(0) for k in range(num_classes)])
    r = means.norm(dim=1)
    kappa = torch.where(r < 1, features.shape[1] * r / (1 - r * r), torch.full_like(r, 1e5))
    return means / r[:, None], kappa.clamp(max=1e5)


def test_proco_loss_equals_its_pieces_with_v3_logits_after_the_v2_update():
    model = make("proco")
    model.start_epoch(0, 10)            # `old` now has no samples: the batch means are the estimate
    views = batch(3)
    loss = model.loss(views, Y, step())
    b = len(Y)
    feat = model.encoder(torch.cat(views))
    z = F.normalize(model.head(feat), dim=1)
    z2, z3 = z[b:2 * b], z[2 * b:]
    mu2, kappa2 = vmf_by_hand(z2, Y, 4)
    mu3, kappa3 = vmf_by_hand(torch.cat([z2, z3]), torch.cat([Y, Y]), 4)    # v3 sees the v2 batch too
    s2, s3 = proco_logits(z2, mu2, kappa2, 0.1), proco_logits(z3, mu3, kappa3, 0.1)
    expected = la_ce_by_hand(model.fc(feat[:b]), Y) + 1.0 * 0.5 * (la_ce_by_hand(s2, Y) + la_ce_by_hand(s3, Y))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(model.state.old.count, 2 * torch.bincount(Y).double())


def _train_steps(model, opt, epoch, seeds):
    model.start_epoch(epoch, 10)
    for s in seeds:
        opt.zero_grad()
        model.loss(batch(3, seed=s), Y, step(epoch)).backward()
        opt.step()


def test_proco_resumes_from_a_state_dict_to_the_exact_loss():
    a = make("proco")
    opt = torch.optim.SGD(a.parameters(), lr=0.05)
    _train_steps(a, opt, 0, [1, 2])
    _train_steps(a, opt, 1, [3])
    saved = copy.deepcopy(a.state_dict())
    assert {"state.old.mean", "state.old.count", "state.new.mean", "state.new.count"} <= set(saved)

    b = make("proco", seed=7)
    b.load_state_dict(saved)
    fresh = make("proco", seed=7)       # same weights, estimator state left out: must differ
    fresh.load_state_dict({k: v for k, v in saved.items() if not k.startswith("state.")}, strict=False)
    losses = []
    for m in (a, b, fresh):
        m.start_epoch(2, 10)
        losses.append(m.loss(batch(3, seed=4), Y, step(2)).item())
    assert losses[1] == losses[0]
    assert losses[2] != losses[0]


# --------------------------------------------------------------------------------------- Hybrid

def supcon_by_hand(z1, z2, y, tau):
    z = torch.cat([z1, z2]).detach().double()
    lab = torch.cat([y, y]).tolist()
    total = 0.0
    for i in range(len(lab)):
        others = [j for j in range(len(lab)) if j != i]
        den = sum(math.exp(float(z[i] @ z[j]) / tau) for j in others)
        pos = [j for j in others if lab[j] == lab[i]]
        total -= sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / den) for p in pos) / len(pos)
    return total / len(lab)


def psc_by_hand(z, protos, y, tau):
    z, protos = z.detach().double(), protos.detach().double()
    total = 0.0
    for zi, t in zip(z, y.tolist()):
        neg = sum(math.exp(float(zi @ protos[j]) / tau) for j in range(len(protos)) if j != t)
        total -= math.log(math.exp(float(zi @ protos[t]) / tau) / neg)
    return total / len(z)


@pytest.mark.parametrize("name", ["hybrid_sc", "hybrid_psc"])
def test_hybrid_loss_mixes_the_feature_loss_and_the_balanced_ce_by_the_parabolic_alpha(name):
    model = make(name)
    views, (x_ce, _) = batch(2), batch(2, seed=2)
    y_ce = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])       # the class-balanced batch
    loss = model.loss(views, Y, step(epoch=5, epochs=10, paired=([x_ce, x_ce], y_ce)))
    b = len(Y)
    feat = model.encoder(torch.cat([*views, x_ce]))
    z = F.normalize(model.head(feat[:2 * b]), dim=1)
    if name == "hybrid_sc":
        feature = supcon_by_hand(z[:b], z[b:], Y, 0.1)
    else:
        feature = psc_by_hand(z, F.normalize(model.prototypes, dim=1), torch.cat([Y, Y]), 0.1)
    alpha = 1 - (5 / 10) ** 2
    expected = alpha * feature + (1 - alpha) * ce_by_hand(model.fc(feat[2 * b:]), y_ce)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------- real training runs

@pytest.mark.parametrize("name", ["bcl", "proco", "hybrid_sc", "hybrid_psc"])
def test_two_epochs_of_the_real_trainer(name, synth, tmp_path):
    out = train_on_synth(synth, tmp_path, name, {"epochs": 2, "backbone": "resnet8", "batch_size": 64, "threads": 1})
    res = json.loads((out / "result.json").read_text())
    assert res["epochs"] == 2 and 0 <= res["top1_last"] <= 100
    state = torch.load(out / "ckpt" / "last.pt", weights_only=False)["model"]
    if name == "proco":
        assert state["state.old.count"].sum() > 0
