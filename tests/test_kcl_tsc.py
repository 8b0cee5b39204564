"""KCL / TSC: the TSC loss assembly and the MoCo loss against their per-anchor equations, the
targets and assignment the method uses, the Hungarian step end to end, and the run chain."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltbench import cli, moco, train
from ltbench.config import build
from ltbench.methods import kcl_tsc
from ltbench.methods.ce import CE
from ltbench.methods.base import DataInfo, Step

from helpers import train_on_synth

INFO = DataInfo(num_classes=4, counts=(8, 4, 2, 1), in_channels=3, image_size=12)
SMALL = {"backbone": "resnet8", "threads": 1, "feat_dim": 8}


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def save_targets(tmp_path, U, name="c4_d8.npy"):
    path = tmp_path / name
    np.save(path, np.asarray(U, dtype=np.float32))
    return str(path)


def save_assignment(tmp_path, perm):
    path = tmp_path / "assign.json"
    path.write_text(json.dumps({"assignment": [int(p) for p in perm]}))
    return str(path)


def tsc_model(tmp_path, U, info=INFO, family="cifar", **over):
    over = {**SMALL, "init_from": "warmup.pt", "targets_path": save_targets(tmp_path, U), **over}
    cfg = build("synth", 10, "tsc_repr", 0, family=family, overrides=over)
    return kcl_tsc.TSCRepr(cfg, info)


# ----------------------------------------------------------------------------- targets and assignment

def test_the_method_uses_the_dag_targets_file_and_assignment(tmp_path):
    U = unit(4, 8).float().numpy()
    perm = [2, 0, 3, 1]
    m = tsc_model(tmp_path, U, assignment="static", assignment_path=save_assignment(tmp_path, perm), target_repeat=3)
    assert torch.equal(m.targets, torch.from_numpy(U))
    rows, labels, weight = m.target_rows()
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3] and weight == 1.0
    for c in range(4):                                     # class c's rows are its assigned target
        assert torch.equal(rows[3 * c:3 * c + 3], torch.from_numpy(U[perm[c]]).expand(3, -1))


def test_fixed_assignment_is_the_official_cifar_label_order(tmp_path):
    order = [4, 8, 3, 1, 9, 5, 2, 7, 0, 6]               # cifar_dirty: target row i belongs to class order[i]
    perm = kcl_tsc.fixed_assignment(10)
    assert all(perm[c] == i for i, c in enumerate(order))
    assert kcl_tsc.fixed_assignment(100).tolist() == list(range(100))
    with pytest.raises(ValueError, match="10 or 100 classes"):
        kcl_tsc.fixed_assignment(4)
    info10 = DataInfo(num_classes=10, counts=(5,) * 10, in_channels=3, image_size=12)
    U = unit(10, 8).float().numpy()
    m = tsc_model(tmp_path, U, info=info10, assignment="fixed", target_repeat=1)
    rows, labels, _ = m.target_rows()
    assert torch.equal(rows[order[0]], torch.from_numpy(U[0])) and torch.equal(rows[order[9]], torch.from_numpy(U[9]))


def test_online_assignment_follows_the_ema_centroids(tmp_path):
    """Batches whose class-c projections sit on target perm[c]: the EMA centroids (random at the
    start) move there and the per-step Hungarian assignment becomes perm."""
    U = kcl_tsc.targets.generate_targets(4, 8, iters=500)[0]
    perm = torch.tensor([3, 2, 0, 1])
    m = tsc_model(tmp_path, U, assignment="online", target_repeat=1)
    assert m.assignment.tolist() == [0, 1, 2, 3]
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    for _ in range(30):
        m.observe(torch.from_numpy(U)[perm[y]], y)
    assert m.assignment.tolist() == perm.tolist()
    log = m.epoch_log()
    assert log["assign_changed"] == 4.0 and 0.95 < log["assign_cos"] <= 1.0
    m.start_epoch(1, 2)
    assert m.epoch_log()["assign_changed"] == 0.0
    assert m.epoch_artifacts() == {"tsc_assignment": {"mode": "online", "assignment": perm.tolist()}}


def test_bad_targets_and_assignments_fail_with_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(3, 8\), expected \(4, 8\)"):
        tsc_model(tmp_path, unit(3, 8).numpy())
    with pytest.raises(ValueError, match="needs assignment_path"):
        tsc_model(tmp_path, unit(4, 8).numpy())            # static is the CIFAR default
    with pytest.raises(ValueError, match="not a permutation|not hold a permutation"):
        tsc_model(tmp_path, unit(4, 8).numpy(), assignment_path=save_assignment(tmp_path, [0, 0, 1, 2]))
    with pytest.raises(ValueError, match="not one of static, fixed, online"):
        tsc_model(tmp_path, unit(4, 8).numpy(), assignment="hungarian")
    with pytest.raises(ValueError, match="init_from"):
        kcl_tsc.TSCRepr(build("synth", 10, "tsc_repr", 0, overrides=SMALL), INFO)


def test_family_defaults_of_the_tsc_settings():
    assert kcl_tsc.tsc_settings({}, "cifar") == dict(assignment="static", target_repeat=25, target_weight=1.0)
    assert kcl_tsc.tsc_settings({}, "imagenet") == dict(assignment="online", target_repeat=1, target_weight=0.2)
    assert kcl_tsc.tsc_settings({"assignment": "fixed"}, "inat")["assignment"] == "fixed"
    params = build("synth", 10, "tsc_repr", 0).params
    assert kcl_tsc.TSCRepr.dag_inputs(params, "cifar") == {"targets_path": "tsc_targets",
                                                            "assignment_path": "tsc_assign"}
    assert kcl_tsc.TSCRepr.dag_inputs(params, "imagenet") == {"targets_path": "tsc_targets"}


# ----------------------------------------------------------------------------- losses

def slow_supcon_with_targets(z, y, extra, extra_labels, weight, t):
    """SupCon with appended labelled rows, anchor by anchor: items are the V views of the B samples
    and V copies of every extra row; L_i = -(1/|P_i|) sum_p w_p log p_ip, w_p = weight on extra rows."""
    B, V, _ = z.shape
    items, labels, is_extra = [], [], []
    for v in range(V):
        for b in range(B):
            items.append(z[b, v]); labels.append(int(y[b])); is_extra.append(False)
        for m in range(len(extra)):
            items.append(extra[m]); labels.append(int(extra_labels[m])); is_extra.append(True)
    total = 0.0
    for i in range(len(items)):
        den = sum(math.exp(float(items[i] @ items[j]) / t) for j in range(len(items)) if j != i)
        pos = [j for j in range(len(items)) if j != i and labels[j] == labels[i]]
        s = sum((weight if is_extra[p] else 1.0) * (float(items[i] @ items[p]) / t - math.log(den)) for p in pos)
        total += -s / len(pos)
    return total / len(items)


def test_tsc_cifar_loss_equals_the_per_anchor_equation(tmp_path):
    U = unit(4, 8, seed=1).float().numpy()
    m = tsc_model(tmp_path, U, assignment="static", assignment_path=save_assignment(tmp_path, [1, 3, 0, 2]),
                  target_repeat=2, target_weight=0.5, k=0, temperature=0.2).double()
    z = unit(6, 2, 8, seed=2)
    y = torch.tensor([0, 1, 1, 2, 3, 3])
    step = Step(0, 1, 0, 1, torch.Generator().manual_seed(0))
    rows, labels, _ = m.target_rows()
    want = slow_supcon_with_targets(z, y, rows, labels, 0.5, 0.2)
    assert m.supcon_loss(z, y, step).item() == pytest.approx(want, rel=1e-10)


def test_kcl_draws_k_positives_per_anchor_from_the_same_class():
    """With k >= every anchor's same-class count the draw takes them all: KCL equals SupCon."""
    cfg = build("synth", 10, "kcl_repr", 0, overrides={**SMALL, "k": 50})
    m = kcl_tsc.KCLRepr(cfg, INFO).double()
    z, y = unit(6, 2, 8, seed=3), torch.tensor([0, 0, 1, 2, 2, 2])
    step = Step(0, 1, 0, 1, torch.Generator().manual_seed(0))
    want = slow_supcon_with_targets(z, y, torch.zeros(0, 8, dtype=torch.float64), torch.zeros(0), 1.0, 0.07)
    assert m.supcon_loss(z, y, step).item() == pytest.approx(want, rel=1e-10)


def slow_moco(q, k, y, queue, qlab, t, targets=None, tlab=None, tw=1.0):
    """All same-class queue keys as positives (num_positive >= their count), anchor by anchor."""
    cols = [None] + list(range(len(queue))) + ([("t", m) for m in range(len(targets))] if targets is not None else [])
    out = 0.0
    for i in range(len(q)):
        def sim(c):
            v = k[i] if c is None else queue[c] if isinstance(c, int) else targets[c[1]]
            return float(q[i] @ v) / t
        lse = math.log(sum(math.exp(sim(c)) for c in cols))
        pos = [None] + [j for j in range(len(queue)) if qlab[j] == y[i]]
        tpos = [("t", m) for m in range(len(targets))] if targets is not None else []
        tpos = [c for c in tpos if tlab[c[1]] == y[i]]
        s = sum(sim(c) - lse for c in pos) + tw * sum(sim(c) - lse for c in tpos)
        out += -s / (len(pos) + len(tpos))
    return out / len(q)


def test_moco_loss_equals_the_per_anchor_equation():
    q, k, queue = unit(5, 8, seed=4), unit(5, 8, seed=5), unit(7, 8, seed=6)
    y = torch.tensor([0, 1, 1, 2, 3])
    qlab = torch.tensor([1, 1, 0, -1, 2, 1, -1])          # -1: a slot not yet filled
    targets, tlab = unit(8, 8, seed=7), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    g = torch.Generator().manual_seed(0)
    got = moco.kcl_moco_loss(q, k, y, queue, qlab, 0.1, num_positive=6, generator=g)
    assert got.item() == pytest.approx(slow_moco(q, k, y, queue, qlab, 0.1), rel=1e-10)
    got = moco.kcl_moco_loss(q, k, y, queue, qlab, 0.1, 6, g, targets=targets, target_labels=tlab, target_weight=0.2)
    assert got.item() == pytest.approx(slow_moco(q, k, y, queue, qlab, 0.1, targets, tlab, 0.2), rel=1e-10)


def test_moco_loss_samples_exactly_k_queue_positives():
    """Class 0 has 5 keys in the queue and K = 2: each anchor's loss is the mean over 1 + 2 positives
    of 3 of them; every 2-subset is possible and the draw follows the generator."""
    q, k = unit(1, 4, seed=8), unit(1, 4, seed=9)
    queue, qlab = unit(6, 4, seed=10), torch.tensor([0, 0, 0, 0, 0, 1])
    lp = torch.log_softmax(torch.cat([q @ k.T, q @ queue.T], 1) / 0.5, 1)[0]
    allowed = {round(-(lp[0] + lp[1 + a] + lp[1 + b]).item() / 3, 10) for a in range(5) for b in range(a + 1, 5)}
    seen = {round(moco.kcl_moco_loss(q, k, torch.tensor([0]), queue, qlab, 0.5, 2,
                                     torch.Generator().manual_seed(s)).item(), 10) for s in range(40)}
    assert seen <= allowed and len(seen) > 3


def test_key_encoder_follows_by_ema_and_the_queue_is_a_ring():
    enc, head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    key = moco.KeyEncoder(enc, head, dim=2, queue_size=5, momentum=0.9)
    assert not any(p.requires_grad for p in key.parameters())
    before = key.encoder.weight.clone()
    with torch.no_grad():
        enc.weight.add_(1.0)
    key.follow(enc, head)
    assert torch.allclose(key.encoder.weight, 0.9 * before + 0.1 * enc.weight)
    key.enqueue(torch.ones(3, 2), torch.tensor([7, 8, 9]))
    key.enqueue(2 * torch.ones(3, 2), torch.tensor([1, 2, 3]))        # slots 3, 4, then 0 again
    assert key.queue_labels.tolist() == [3, 8, 9, 1, 2] and int(key.queue_ptr) == 1
    assert key.queue[0].tolist() == [2.0, 2.0] and key.queue[1].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="does not fit a queue"):
        key.enqueue(torch.ones(6, 2), torch.zeros(6))


# ----------------------------------------------------------------------------- the Hungarian step, end to end

def aligned_warmup_checkpoint(synth, tmp_path, U, perm):
    """A 'warm-up' checkpoint whose projections of class c point at target perm[c]: the head's
    first layer passes the (non-negative) features through, the last is the least-squares map of
    each training image's features to 5 * U[perm[y]]."""
    cfg = build("synth", 10, "tsc_warmup", 0, overrides={**SMALL, "channels_last": False})
    data = train.DeviceData(synth["data"], synth["split"], "cpu")
    torch.manual_seed(0)
    model = kcl_tsc.TSCWarmup(cfg, data.info).eval()
    with torch.no_grad():
        f = model.encoder(data.normalize(data.train_x)).double()
        d = f.shape[1]
        goal = 5 * torch.as_tensor(U, dtype=torch.float64)[torch.as_tensor(perm)[data.train_y]]
        w = torch.linalg.lstsq(torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], 1), goal).solution
        model.head[0].weight.copy_(torch.eye(d))
        model.head[0].bias.zero_()
        model.head[2].weight.copy_(w[:d].T)
        model.head[2].bias.copy_(w[d])
    path = tmp_path / "warmup" / "last.pt"
    path.parent.mkdir()
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, path)
    return path


def test_hungarian_assignment_recovers_a_known_permutation_end_to_end(synth, tmp_path):
    U = kcl_tsc.targets.generate_targets(4, 8, iters=500)[0]
    perm = [2, 0, 3, 1]
    ckpt = aligned_warmup_checkpoint(synth, tmp_path, U, perm)
    targets_path = save_targets(tmp_path, U)
    out = tmp_path / "tsc_assign_d8.json"
    cli.main(["assign", "--checkpoint", str(ckpt), "--data", synth["data"], "--split", synth["split"],
              "--targets", targets_path, "--device", "cpu", "--out", str(out)])
    got = json.loads(out.read_text())
    assert got["assignment"] == perm
    assert got["mean_cos"] > got["identity_mean_cos"] + 0.3
    m = tsc_model(tmp_path, U, assignment_path=str(out), target_repeat=1)
    rows, labels, _ = m.target_rows()
    assert all(torch.equal(rows[c], torch.from_numpy(U[perm[c]])) for c in range(4))


def test_assign_refuses_a_run_without_a_projection_head(synth, tmp_path, capsys):
    cfg = build("synth", 10, "ce", 0, overrides={"backbone": "resnet8"})
    data = train.DeviceData(synth["data"], synth["split"], "cpu")
    ckpt = tmp_path / "ce.pt"
    torch.save({"model": CE(cfg, data.info).state_dict(), "config": cfg.to_dict()}, ckpt)
    with pytest.raises(SystemExit) as stop:
        cli.main(["assign", "--checkpoint", str(ckpt), "--data", synth["data"], "--split", synth["split"],
                  "--targets", save_targets(tmp_path, unit(4, 8).numpy()), "--out", str(tmp_path / "a.json")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "no projection head" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- the run chain in the trainer

def run_method(synth, tmp_path, method, family="cifar", **over):
    return train_on_synth(synth, tmp_path, method,
                          {"backbone": "resnet8", "threads": 1, "epochs": 1, "batch_size": 32, **over}, family=family)


def test_the_classifier_stage_trains_a_head_on_the_frozen_backbone(synth, tmp_path):
    rep = run_method(synth, tmp_path, "kcl_repr", feat_dim=8)
    probe = run_method(synth, tmp_path, "kcl", epochs=2, init_from=str(rep / "ckpt" / "last.pt"))
    a = torch.load(rep / "ckpt" / "last.pt", weights_only=False)["model"]
    b = torch.load(probe / "ckpt" / "last.pt", weights_only=False)
    encoder = [k for k in a if k.startswith("encoder.")]
    assert any("running_mean" in k for k in encoder)
    for k in encoder:                       # weights and BatchNorm statistics untouched
        assert torch.equal(a[k], b["model"][k]), k
    assert len(b["optimizer"]["param_groups"][0]["params"]) == 1          # the cosine head's weight only
    assert json.loads((probe / "result.json").read_text())["method"] == "kcl"


def test_at_scale_a_moco_warmup_feeds_an_online_tsc_half(synth, tmp_path):
    moco_set = {"feat_dim": 8, "queue_size": 64}
    warm = run_method(synth, tmp_path, "tsc_warmup", family="imagenet", **moco_set)
    w = torch.load(warm / "ckpt" / "last.pt", weights_only=False)["model"]
    assert (w["key.queue_labels"] >= 0).all()          # 8 full batches of 32 went through a queue of 64
    assert not torch.equal(w["key.encoder.conv1.weight"], w["encoder.conv1.weight"])

    over = dict(moco_set, init_from=str(warm / "ckpt" / "last.pt"),
                targets_path=save_targets(tmp_path, unit(4, 8).numpy()))
    model = kcl_tsc.TSCRepr(build("synth", 10, "tsc_repr", 0, family="imagenet",
                                  overrides={"backbone": "resnet8", **over}), INFO)
    model.load_stage1(w)
    state = model.state_dict()
    for k in ("encoder.conv1.weight", "head.2.weight", "key.encoder.conv1.weight", "key.queue", "key.queue_ptr"):
        assert torch.equal(state[k], w[k]), k
    assert not torch.equal(state["centroids"], w["centroids"])   # the TSC half's centroids restart at random

    tsc = run_method(synth, tmp_path, "tsc_repr", family="imagenet", epochs=2, **over)
    logs = sorted((tsc / "ckpt").glob("tsc_assignment_e*.json"))
    assert [p.name for p in logs] == ["tsc_assignment_e0001.json", "tsc_assignment_e0002.json"]
    for p in logs:
        rec = json.loads(p.read_text())
        assert rec["mode"] == "online" and sorted(rec["assignment"]) == [0, 1, 2, 3]
