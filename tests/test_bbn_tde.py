"""BBN and causal TDE: the split-block backbone, BBN's cumulative schedule, mixed input, loss,
reversed pairing and inference; TDE's causal-norm and counterfactual logits, its moving average;
and one real trainer run of each."""
import json
import math

import pytest
import torch
from torch import nn

from ltbench import models
from ltbench.config import build
from ltbench.methods import get
from ltbench.methods.base import DataInfo, Step
from ltbench.methods.bbn import BBN, bbn_mix_loss, cumulative_alpha
from ltbench.methods.tde import causal_logits
from ltbench.models.resnet_cifar import BasicBlock
from ltbench.tracking import client

from helpers import train_on_synth

INFO = DataInfo(num_classes=4, counts=(150, 68, 31, 15), in_channels=3, image_size=12)


def make(method, **over):
    cfg = build("synth", 10, method, 0, overrides={"backbone": "resnet8_bbn", **over})
    torch.manual_seed(0)
    return get(method)(cfg, INFO)


def step(epoch, epochs, paired=None):
    return Step(epoch, epochs, 0, 1, torch.Generator().manual_seed(0), paired)


def batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 12, 12, generator=g), torch.randint(0, 4, (n,), generator=g)


def ce_loop(logits, y):
    """Mean over samples of -z_y + log sum_j exp z_j, one sample at a time."""
    return sum(-logits[i, y[i]] + torch.logsumexp(logits[i], 0) for i in range(len(y))) / len(y)


# ----------------------------------------------------------------------------- backbone

def test_resnet32_bbn_has_four_shared_blocks_then_two_branches():
    net, plain = models.create("resnet32_bbn"), models.create("resnet32")
    last_stage = [b for b in net.layers if isinstance(b, BasicBlock) and b.conv2.out_channels == 64]
    assert len(last_stage) == 4 and net.out_dim == 128
    block = sum(p.numel() for p in BasicBlock(64, 64, 1).parameters())
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in plain.parameters()) + block


def test_bbn_backbone_feature_is_both_branches_pooled_and_concatenated():
    net = models.create("resnet8_bbn").eval()
    x, _ = batch(3, 0)
    with torch.no_grad():
        h = net.trunk(x)
        expected = torch.cat([net.cb_block(h).mean((2, 3)), net.rb_block(h).mean((2, 3))], 1)
        assert torch.allclose(net(x), expected, atol=1e-6)


# ----------------------------------------------------------------------------- BBN

def test_cumulative_alpha_and_the_90_180_epoch_divisor():
    assert cumulative_alpha(1, 200) == 1.0
    assert cumulative_alpha(101, 200) == pytest.approx(0.75)
    assert cumulative_alpha(200, 200) == pytest.approx(1 - (199 / 200) ** 2)
    assert cumulative_alpha(100, 100) == pytest.approx(1 - 0.99 ** 2)
    # 90 and 180 epochs divide by 100 and 200, so alpha ends well above 0
    assert cumulative_alpha(90, 90) == pytest.approx(1 - 0.89 ** 2)
    assert cumulative_alpha(180, 180) == pytest.approx(1 - (179 / 200) ** 2)
    m = make("bbn")
    m.start_epoch(100, 200)                       # 0-indexed epoch 100 is T = 101
    assert m.epoch_log() == {"alpha": pytest.approx(0.75)}


def test_mixed_loss_by_hand():
    fc = nn.Linear(2, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.eye(2))
        fc.bias.zero_()
    # input [2 * 0.75 * 1, 2 * 0.25 * 2] = [1.5, 1.0]; 0.75 log(1 + e^-0.5) + 0.25 log(1 + e^0.5)
    loss = bbn_mix_loss(fc, torch.tensor([[1.0]]), torch.tensor([[2.0]]), torch.tensor([0]), torch.tensor([1]), 0.75)
    assert loss.item() == pytest.approx(0.5990769841801067, abs=1e-6)


def test_bbn_loss_equals_the_equation_on_both_branch_features():
    m = make("bbn")
    (xc, yc), (xr, yr) = batch(6, 1), batch(6, 2)
    got = m.loss([xc], yc, step(49, 200, paired=([xr], yr)))
    a = 1 - (49 / 200) ** 2
    enc = m.encoder
    with torch.no_grad():
        f_c = enc.cb_block(enc.trunk(xc)).mean((2, 3))
        f_r = enc.rb_block(enc.trunk(xr)).mean((2, 3))
        z = torch.stack([m.fc.weight @ torch.cat([2 * a * f_c[i], 2 * (1 - a) * f_r[i]]) + m.fc.bias
                         for i in range(6)])
    assert got.item() == pytest.approx((a * ce_loop(z, yc) + (1 - a) * ce_loop(z, yr)).item(), rel=1e-5)


def test_at_alpha_one_only_the_conventional_branch_learns():
    m = make("bbn")
    (xc, yc), (xr, yr) = batch(6, 1), batch(6, 2)
    m.loss([xc], yc, step(0, 200, paired=([xr], yr))).backward()
    assert all(p.grad.abs().sum() > 0 for p in m.encoder.cb_block.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.encoder.rb_block.parameters())


def test_bbn_inference_concatenates_both_branches_unscaled():
    m = make("bbn").eval()
    x, _ = batch(5, 3)
    with torch.no_grad():
        h = m.encoder.trunk(x)
        feat = torch.cat([m.encoder.cb_block(h).mean((2, 3)), m.encoder.rb_block(h).mean((2, 3))], 1)
        assert torch.allclose(m(x), feat @ m.fc.weight.t() + m.fc.bias, atol=1e-5)


def test_paired_batch_follows_the_reversed_sampler():
    counts = torch.tensor([400, 100, 40, 10])
    labels = torch.repeat_interleave(torch.arange(4), counts)
    m = make("bbn")
    assert m.paired_sampler == "reversed"
    idx = m.paired_order(labels, 0, 10, torch.Generator().manual_seed(0), 40000)
    freq = torch.bincount(labels[idx], minlength=4).double() / len(idx)
    w = 400 / counts.double()                                     # n_max / n_k
    assert torch.allclose(freq, w / w.sum(), atol=0.01)


def test_bbn_refuses_a_backbone_without_branches():
    with pytest.raises(ValueError, match="split-block backbone.*resnet32_bbn"):
        make("bbn", backbone="resnet8")


# ----------------------------------------------------------------------------- TDE

def tde_loop(x, w, c, K, tau, gamma, alpha):
    """The counterfactual logit, sample by sample, head by head, class by class."""
    h = x.shape[1] // K
    out = torch.zeros(len(x), len(w), dtype=torch.float64)
    for i in range(len(x)):
        for k in range(K):
            xk = x[i, k * h:(k + 1) * h] / x[i, k * h:(k + 1) * h].norm()
            ck = c[k * h:(k + 1) * h] / c[k * h:(k + 1) * h].norm()
            cos = (xk @ ck) / (xk.norm() * ck.norm())
            for j in range(len(w)):
                wk = w[j, k * h:(k + 1) * h]
                out[i, j] += tau / K * ((xk - alpha * cos * ck) @ (wk / (wk.norm() + gamma)))
    return out


def test_tde_logits_by_hand():
    # one head: x^ = (0.6, 0.8), c^ = (1, 0), cos = 0.6; w^ = (1, 1) / (sqrt 2 + 1/32)
    x, c, w = torch.tensor([[3.0, 4.0]]), torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 1.0]])
    plain = causal_logits(x, w, 1, 16.0, 1 / 32, c, 0.0)
    tde = causal_logits(x, w, 1, 16.0, 1 / 32, c, 1.0)
    assert plain.item() == pytest.approx(16 * 1.4 / (math.sqrt(2) + 1 / 32), rel=1e-6)
    assert tde.item() == pytest.approx(16 * 0.8 / (math.sqrt(2) + 1 / 32), rel=1e-6)


@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5])
def test_tde_logits_equal_the_equation_per_sample_and_head(K, alpha):
    g = torch.Generator().manual_seed(K)
    x, w, c = (torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(3, 8, generator=g, dtype=torch.float64),
               torch.randn(8, generator=g, dtype=torch.float64))
    got = causal_logits(x, w, K, 16.0, 1 / 32, c, alpha)
    assert torch.allclose(got, tde_loop(x, w, c, K, 16.0, 1 / 32, alpha), atol=1e-10)


def test_tde_forward_is_the_counterfactual_and_alpha_zero_is_plain_causal_norm():
    x, _ = batch(5, 4)
    logits = {}
    for alpha in (0.0, 1.0):
        m = make("tde", alpha=alpha).eval()
        m.embed_mean.copy_(torch.randn(128, generator=torch.Generator().manual_seed(9)))
        with torch.no_grad():
            feat = m.encoder(x)
            logits[alpha] = m(x)
            expected = tde_loop(feat.double(), m.fc.weight.double(), m.embed_mean.double(), 2, 16.0, 1 / 32, alpha)
            assert torch.allclose(logits[alpha].double(), expected, atol=1e-4)
            if alpha == 0.0:
                assert torch.allclose(logits[alpha], m.fc(feat), atol=1e-6)   # the training logits
    assert not torch.allclose(logits[0.0], logits[1.0], atol=1e-3)


def test_tde_moving_average_and_training_loss():
    m = make("tde", mu=0.9)
    (x1, y1), (x2, y2) = batch(6, 5), batch(6, 6)
    with torch.no_grad():
        f1, f2 = m.encoder(x1), m.encoder(x2)
    loss = m.loss([x1], y1, step(0, 200))
    plain = tde_loop(f1.double(), m.fc.weight.double(), torch.ones(128, dtype=torch.float64), 2, 16.0, 1 / 32, 0.0)
    assert loss.item() == pytest.approx(ce_loop(plain, y1).item(), rel=1e-5)
    m.loss([x2], y2, step(0, 200))
    expected = 0.9 * f1.mean(0) + f2.mean(0)                  # x_bar <- mu x_bar + mean(x), from 0
    assert torch.allclose(m.embed_mean, expected, atol=1e-5)
    assert "embed_mean" in m.state_dict()


def test_tde_rejects_heads_that_do_not_divide_the_feature():
    with pytest.raises(ValueError, match="num_head=3 does not divide the 128-d feature"):
        make("tde", num_head=3)


# ----------------------------------------------------------------------------- real trainer runs

SMALL = {"epochs": 2, "backbone": "resnet8_bbn", "batch_size": 64, "threads": 1}


def _run(synth, tmp, method, **over):
    out = train_on_synth(synth, tmp, method, {**SMALL, **over})
    return json.loads((out / "result.json").read_text()), out


def test_bbn_trains_with_reversed_pairs_in_the_real_trainer(synth, tmp_path, monkeypatch):
    seen = {"y": [], "y2": []}
    loss = BBN.loss

    def spy(self, views, y, step):
        seen["y"].append(y.cpu())
        seen["y2"].append(step.paired[1].cpu())
        assert step.paired[0][0].shape == views[0].shape
        return loss(self, views, y, step)
    monkeypatch.setattr(BBN, "loss", spy)
    res, _ = _run(synth, tmp_path, "bbn")
    assert res["top1_last"] == res["top1_last"] and res["backbone"] == "resnet8_bbn"
    y, y2 = torch.cat(seen["y"]), torch.cat(seen["y2"])
    tail = int(torch.bincount(y).argmin())
    assert (y == tail).float().mean() < 0.1 and (y2 == tail).float().mean() > 0.4
    alphas = client(res["tracking_uri"]).get_metric_history(res["run_id"], "alpha")
    assert [a.value for a in sorted(alphas, key=lambda a: a.step)] == pytest.approx([1.0, 1 - (1 / 2) ** 2])


def test_tde_trains_in_the_real_trainer_and_checkpoints_the_moving_average(synth, tmp_path):
    res, out = _run(synth, tmp_path, "tde")
    assert res["top1_last"] == res["top1_last"]
    state = torch.load(out / "ckpt" / "last.pt", weights_only=False)["model"]
    assert state["embed_mean"].abs().sum() > 0
