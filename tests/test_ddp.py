"""Data-parallel training: sharding of the epoch order, and a real 2-process torchrun (Gloo, CPU)
run of the trainer against the one-process run of the same global batch."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ltbench import dist

# Measured: after 3 epochs x 9 steps (SGD lr 0.1, momentum 0.9) the one-process and 2-process runs
# agree to 1e-6 in every parameter and 5e-6 in the BN running variances (values ~1): float32 sums
# in another order (the all-reduced BN statistics, DDP's gradient average; one-process CPU
# BatchNorm accumulates in float64). The probe net uses tanh: with ReLU (ResNet-8) the runs agree to
# 3e-7 per step until some ReLU input lies within rounding of 0 and its derivative flips, after
# which they drift apart by ~1e-3, as any two runs with different summation order do.
WEIGHT_ATOL = 3e-5


def as_rank(monkeypatch, r, w):
    monkeypatch.setattr(dist, "world", lambda: w)
    monkeypatch.setattr(dist, "rank", lambda: r)


@pytest.mark.parametrize("n, batch, world, drop_last", [(100, 32, 2, False), (100, 32, 4, True), (103, 32, 2, False),
                                                        (30, 32, 4, False), (64, 16, 1, False)])
def test_rank_slices_split_every_global_batch_into_equal_disjoint_parts(monkeypatch, n, batch, world, drop_last):
    parts = []
    for r in range(world):
        as_rank(monkeypatch, r, world)
        parts.append(dist.rank_slices(n, batch, drop_last))
    steps = len(parts[0])
    assert all(len(p) == steps for p in parts)
    used = []
    for b in range(steps):
        pieces = [parts[r][b] for r in range(world)]
        sizes = {stop - start for start, stop in pieces}
        assert len(sizes) == 1                                  # every rank: as many images
        covered = [i for start, stop in pieces for i in range(start, stop)]
        assert covered == list(range(b * batch, b * batch + len(covered)))   # rank order = global order
        assert len(covered) == batch or b == steps - 1
        used += covered
    full = n // batch * batch
    short = n - full
    expected = full if drop_last else full + short - short % world
    assert used == list(range(expected))


def test_rank_slices_on_one_process_are_the_plain_batches():
    assert dist.rank_slices(70, 32, False) == [(0, 32), (32, 64), (64, 70)]
    assert dist.rank_slices(70, 32, True) == [(0, 32), (32, 64)]


def test_a_global_batch_that_does_not_split_evenly_is_refused_in_one_line(monkeypatch):
    as_rank(monkeypatch, 0, 3)
    with pytest.raises(ValueError, match="batch_size 128 cannot be split evenly over 3 processes") as e:
        dist.rank_slices(1000, 128, False)
    assert "\n" not in str(e.value)


def test_share_covers_n_items_in_rank_order(monkeypatch):
    spans = []
    for r in range(3):
        as_rank(monkeypatch, r, 3)
        spans.append(dist.share(10))
    assert spans == [(0, 3), (3, 6), (6, 10)]


def _collectives(rank, store, out):
    """Rank body: uneven evaluation shares gathered, and global-batch BatchNorm on each half."""
    import torch.distributed as tdist
    from torch import nn
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    lo, hi = dist.share(5)
    gathered = dist.gather_rows(torch.arange(lo, hi, dtype=torch.float32).view(-1, 1).repeat(1, 3))
    torch.manual_seed(0)
    x = torch.randn(8, 4, 5, 5) * 3 + 1
    bn = dist.sync_batchnorm(nn.Sequential(nn.BatchNorm2d(4)), torch.device("cpu"))
    with torch.no_grad():
        bn[0].weight.uniform_(0.5, 1.5)
        bn[0].bias.uniform_(-1, 1)
    part = x[rank * 4:(rank + 1) * 4].requires_grad_()
    y = bn(part)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y) * (rank + 1)).sum().backward()   # rank r's objective
    torch.save({"gathered": gathered, "y": y.detach(), "grad_x": part.grad, "grad_w": bn[0].weight.grad,
                "running_var": bn[0].running_var.clone(), "kind": type(bn[0]).__name__}, f"{out}{rank}.pt")
    with torch.no_grad():   # bf16 activations (autocast on a bf16 CPU): float32 statistics, bf16 out
        yb = bn(part.detach().bfloat16())
    torch.save({"y": yb, "running_dtype": bn[0].running_mean.dtype}, f"{out}{rank}_bf16.pt")
    tdist.destroy_process_group()


def test_gather_and_global_batchnorm_match_one_process(tmp_path):
    from torch import multiprocessing as mp
    from torch import nn
    mp.spawn(_collectives, args=(str(tmp_path / "store"), str(tmp_path / "rank")), nprocs=2)
    r = [torch.load(tmp_path / f"rank{k}.pt") for k in range(2)]
    expected = torch.arange(5, dtype=torch.float32).view(-1, 1).repeat(1, 3)
    assert torch.equal(r[0]["gathered"], expected) and torch.equal(r[1]["gathered"], expected)
    assert r[0]["kind"] == "CPUSyncBatchNorm"
    for k in range(2):
        b = torch.load(tmp_path / f"rank{k}_bf16.pt")
        assert b["y"].dtype == torch.bfloat16 and b["running_dtype"] == torch.float32
        assert torch.allclose(b["y"].float(), r[k]["y"], atol=0.05)
    # one process, the whole batch, the sum of both ranks' objectives
    torch.manual_seed(0)
    x = (torch.randn(8, 4, 5, 5) * 3 + 1).requires_grad_()
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    y = bn(x)
    w = torch.linspace(-1, 1, y[:4].numel()).view_as(y[:4])
    (y[:4] * w).sum().add((y[4:] * w * 2).sum()).backward()
    assert torch.allclose(torch.cat([r[0]["y"], r[1]["y"]]), y.detach(), atol=1e-5)
    assert torch.allclose(torch.cat([r[0]["grad_x"], r[1]["grad_x"]]), x.grad, atol=1e-5)
    assert torch.allclose(r[0]["grad_w"] + r[1]["grad_w"], bn.weight.grad, atol=1e-4)
    assert torch.allclose(r[0]["running_var"], bn.running_var, atol=1e-5)


WORKER = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path

    import torch
    from torch import nn

    from ltbench import losses, methods, train
    from ltbench.config import build
    from ltbench.methods.base import Method


    @methods.register("ddp_probe")
    class Probe(Method):
        \"\"\"CE on un-augmented images (both runs see identical pixels) through a small net with
        BatchNorm (2-d and 1-d) and smooth activations (no ReLU kinks, see WEIGHT_ATOL).\"\"\"
        views = ("plain",)

        def __init__(self, cfg, info):
            super().__init__(cfg, info)
            self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Tanh(),
                                         nn.Conv2d(8, 16, 3, stride=2), nn.BatchNorm2d(16), nn.Tanh(),
                                         nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                         nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Tanh())
            self.fc = nn.Linear(16, info.num_classes)

        def loss(self, views, y, step):
            return losses.cross_entropy(self(views[0]), y)


    seen = []
    original = train.DeviceData.train_batches


    def recording(self, order, slices, *args, **kwargs):
        seen.append([order[start:stop].tolist() for start, stop in slices])
        return original(self, order, slices, *args, **kwargs)


    train.DeviceData.train_batches = recording
    data, split, out, uri = sys.argv[1:]
    # fp32: the comparison is of the data-parallel arithmetic, which bf16 rounding would swamp
    cfg = build("synth", 10, "ddp_probe", 0, overrides={"epochs": 3, "batch_size": 32, "threads": 1,
                                                        "warmup_epochs": 0, "amp": False})
    torch.manual_seed(cfg.seed)               # what the trainer builds, to see how far training moves it
    torch.save(Probe(cfg, train.DeviceData(data, split, "cpu").info).state_dict(), Path(out + "_initial.pt"))
    train.run(cfg, data, split, out, Path(out) / "ckpt", uri)
    Path(out, f"indices_rank{os.environ.get('RANK', 'single')}.json").write_text(json.dumps(seen))
''')


@pytest.fixture(scope="module")
def two_runs(synth, tmp_path_factory):
    """The same run once on one process and once under torchrun with 2 Gloo processes."""
    tmp = tmp_path_factory.mktemp("ddp")
    script = tmp / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    env.pop("WORLD_SIZE", None)
    uri = f"sqlite:///{tmp}/mlflow.db"
    single, multi = tmp / "single", tmp / "ddp"
    args = [synth["data"], synth["split"]]
    procs = [subprocess.Popen([sys.executable, str(script), *args, str(single), uri], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
             subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(script), *args, str(multi), f"sqlite:///{tmp}/mlflow_ddp.db"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    for p in procs:
        log, _ = p.communicate(timeout=170)
        assert p.returncode == 0, log[-3000:]
    return single, multi, log


def test_ranks_train_on_disjoint_parts_that_make_up_the_one_process_batches(two_runs):
    single, multi, _ = two_runs
    one = json.loads((single / "indices_ranksingle.json").read_text())
    r0 = json.loads((multi / "indices_rank0.json").read_text())
    r1 = json.loads((multi / "indices_rank1.json").read_text())
    assert len(one) == len(r0) == len(r1) == 3                  # epochs
    for epoch in range(3):
        assert len(r0[epoch]) == len(r1[epoch]) == len(one[epoch])
        for b, batch in enumerate(one[epoch]):
            a, c = r0[epoch][b], r1[epoch][b]
            assert len(a) == len(c) == len(batch) // 2
            assert not set(a) & set(c)
            assert a + c == batch


def test_two_processes_end_with_the_weights_of_one_process(two_runs):
    single, multi, _ = two_runs
    w1 = torch.load(single / "ckpt" / "last.pt", weights_only=False)["model"]
    w2 = torch.load(multi / "ckpt" / "last.pt", weights_only=False)["model"]
    w0 = torch.load(f"{single}_initial.pt", weights_only=False)
    assert w1.keys() == w2.keys() == w0.keys()
    floats = [k for k in w1 if w1[k].is_floating_point()]
    diff = max((w1[k] - w2[k]).abs().max().item() for k in floats)
    moved = max((w1[k] - w0[k]).abs().max().item() for k in floats)
    print(f"max |w_1proc - w_2proc| = {diff:.2e}; max |w_1proc - w_init| = {moved:.2e}")
    assert diff < WEIGHT_ATOL
    assert moved > 1000 * WEIGHT_ATOL                          # training moved the weights far more than that
    assert all(torch.equal(w1[k], w2[k]) for k in w1 if k not in floats)   # BN step counters
    r1 = json.loads((single / "result.json").read_text())
    r2 = json.loads((multi / "result.json").read_text())
    assert r2["world_size"] == 2 and r1["world_size"] == 1
    assert r2["top1_last"] == pytest.approx(r1["top1_last"])  # each process evaluates half; logits gathered


def test_rank_zero_alone_writes_and_logs_world_size_and_effective_batch(two_runs):
    from ltbench.tracking import client
    single, multi, log = two_runs
    res = json.loads((multi / "result.json").read_text())
    c = client(res["tracking_uri"])
    runs = c.search_runs([c.get_experiment_by_name("ltbench").experiment_id])
    assert len(runs) == 1
    params = runs[0].data.params
    assert params["world_size"] == "2" and params["effective_batch_size"] == "32"
    assert params["batch_size_per_process"] == "16"
    assert log.count("# done:") == 1 and log.count("# ddp_probe on synth") == 1   # rank 0 alone prints
