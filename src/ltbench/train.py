"""The one training loop of ltbench, for every method.

    ltbench train --data results/data/fmnist.npz --split results/splits/fmnist/if100.npz \
        --dataset fmnist --imb 100 --method la --seed 0 --set epochs=16 --out results/runs/...

Read top to bottom: setup, data on the device, the method, resume, the epoch loop (sampler ->
views -> loss -> step), evaluation, checkpoint, result.json. Randomness of an epoch comes from
generators seeded by (seed, epoch), so a run resumed from the checkpoint of epoch k replays
epochs k+1.. exactly as an uninterrupted run would.
"""
from __future__ import annotations

import functools
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ltbench import checkpoint, dist, metrics, methods
from ltbench.data import lt, samplers, sources
from ltbench.data.views import VIEWS
from ltbench.methods.base import DataInfo, Step
from ltbench.tracking import Tracker, provenance


# ----------------------------------------------------------------------------- schedule

def learning_rate(cfg, epoch):
    """lr of 0-indexed `epoch`, per epoch as the official CIFAR code steps it (1-indexed e)."""
    e = epoch + 1
    if e <= cfg.warmup_epochs:
        return cfg.lr * e / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        t = (e - 1 - cfg.warmup_epochs) / max(1, cfg.epochs - cfg.warmup_epochs)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))
    if cfg.schedule == "step":
        passed = sum(e > m for m in cfg.milestones)
        return cfg.lr * (cfg.lr_factors[passed - 1] if passed else 1.0)
    raise ValueError(f"unknown schedule {cfg.schedule!r}: use step or cosine")


# ----------------------------------------------------------------------------- checkpoints

def seed_generators(seed, epoch, device, rank=0):
    """CPU generator (the epoch's index order: the same on every rank) and device generator
    (augmentation and the method's draws: rank 0 keeps the one-process stream, others their own)."""
    s = (seed * 1_000_003 + epoch) % (2**63)
    d = s if rank == 0 else int(np.random.SeedSequence((s, rank)).generate_state(1, np.uint64)[0] >> np.uint64(1))
    return torch.Generator().manual_seed(s), torch.Generator(device=device).manual_seed(d)


# ----------------------------------------------------------------------------- data

class DeviceData:
    """Train / val / test images as uint8 tensors on the training device (the small datasets;
    ImageNet-LT and iNat stay on disk: `ltbench.data.loader.FileData`, the same interface)."""

    val_is_test = False

    def __init__(self, data_path, split_path, device, channels_last=False):
        self.device = device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        arrays = sources.load_prepared(data_path)
        split = lt.load_split(split_path)
        tx, ty = arrays["train_x"], arrays["train_y"]
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
        self.train_x, self.train_y = to(tx[split["train_idx"]]), to(ty[split["train_idx"]])
        self.val_x, self.val_y = to(tx[split["val_idx"]]), to(ty[split["val_idx"]])
        self.test_x, self.test_y = to(arrays["test_x"][split["test_idx"]]), to(arrays["test_y"][split["test_idx"]])
        self.mean = torch.tensor(arrays["mean"], device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(arrays["std"], device=device).view(1, -1, 1, 1)
        self.counts = tuple(int(c) for c in split["counts"])
        self.sha256 = str(split["sha256"])
        self.classes = list(arrays["classes"])
        self.info = DataInfo(num_classes=len(self.counts), counts=self.counts,
                             in_channels=self.train_x.shape[1], image_size=self.train_x.shape[-1])

    def normalize(self, x):
        return ((x.float() / 255 - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def train_batches(self, order, slices, views, generator, cfg, epoch, stream=0):
        """(normalised views, labels) of each (start, stop) slice of the epoch's `order`."""
        order = order.to(self.device)
        for start, stop in slices:
            idx = order[start:stop]
            xb = self.train_x[idx]
            yield [self.normalize(VIEWS[v](xb, generator, cfg)) for v in views], self.train_y[idx]

    def eval_batches(self, which, lo, hi, batch_size):
        x = self.val_x if which == "val" else self.test_x
        for i in range(lo, hi, batch_size):
            yield x[i:min(i + batch_size, hi)]


def open_data(data_path, split_path, device, cfg):
    """Pixels in memory for prepared arrays; images on disk for a file-list index."""
    from ltbench.data import filelist
    if filelist.is_index(data_path):
        from ltbench.data.loader import FileData
        return FileData(data_path, split_path, device, cfg.channels_last, cfg.workers)
    if cfg.augment_path != "batched":   # per-image PIL views in DataLoader workers, as the official repos
        from ltbench.data.reference import ReferenceData
        return ReferenceData(data_path, split_path, device, cfg)
    return DeviceData(data_path, split_path, device, cfg.channels_last)


@torch.no_grad()
def predict(model, data, which, batch_size, cfg):
    """Logits of the val or test images: each process predicts its share, all get every row."""
    n = len(data.val_y if which == "val" else data.test_y)
    lo, hi = dist.share(n)
    model.eval()
    with autocast(cfg, data.device):
        out = [model(data.normalize(xb)).float() for xb in data.eval_batches(which, lo, hi, batch_size)]
    model.train()
    return dist.gather_rows(torch.cat(out) if out else torch.zeros(0, data.info.num_classes, device=data.device))


@functools.cache
def _cpu_has_bf16():
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return probe is not None and bool(probe())


def bf16_native(device):
    """CUDA, or a CPU whose oneDNN has bf16 kernels (AVX512-BF16 / AMX): there bf16 autocast
    trains ResNets ~1.5x and evaluates ~3x faster; elsewhere bf16 on CPU is emulated and slower.
    Asked every step, so the CPU probe runs once per process."""
    return device.type == "cuda" or (device.type == "cpu" and _cpu_has_bf16())


def autocast(cfg, device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and bf16_native(device))


def evaluate(model, data, cfg, which):
    from ltbench.losses import posthoc_adjust
    y = data.val_y if which == "val" else data.test_y
    logits = predict(model, data, which, cfg.eval_batch_size, cfg)
    if cfg.posthoc_tau:
        logits = posthoc_adjust(logits, model.counts, cfg.posthoc_tau)
    return metrics.evaluate(logits, y, data.counts, cfg.many, cfg.few)


# ----------------------------------------------------------------------------- training

def make_optimizer(model, cfg):
    params = model.param_groups() if hasattr(model, "param_groups") else model.parameters()
    # one fused kernel per step on GPU, the multi-tensor path on CPU
    fast = {"fused": True} if next(model.parameters()).is_cuda else {"foreach": True}
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, **fast)


def train_epoch(model, loss_fn, opt, data, cfg, epoch, step0):
    """One epoch. Every process draws the same global order; `dist.rank_slices` gives each its
    part of every global batch (all of it on one process). `loss_fn` is `model.loss`, through
    DDP under torchrun."""
    gen_cpu, gen_dev = seed_generators(cfg.seed, epoch, data.device, dist.rank())
    sampler = cfg.sampler or model.sampler
    n = cfg.epoch_samples or len(data.train_y)
    labels = data.train_y.cpu()
    order = samplers.epoch_indices(sampler, labels, epoch, cfg.epochs, gen_cpu, n)
    slices = dist.rank_slices(len(order), cfg.batch_size, cfg.drop_last)
    batches = data.train_batches(order, slices, model.views, gen_dev, cfg, epoch)
    if model.paired_sampler:
        order2 = model.paired_order(labels, epoch, cfg.epochs, gen_cpu, len(order))
        paired_batches = data.train_batches(order2, slices, model.views, gen_dev, cfg, epoch, stream=1)
    nb = len(slices)
    total, seen = torch.zeros((), device=data.device), 0

    for b, (views, yb) in enumerate(batches):
        paired = next(paired_batches) if model.paired_sampler else None
        with autocast(cfg, data.device):
            loss = loss_fn(views, yb, Step(epoch, cfg.epochs, step0 + b, nb, gen_dev, paired))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.after_step()
        total += loss.detach() * len(yb)      # stays on the device: no sync per step
        seen += len(yb)
    total = dist.mean(total / max(seen, 1)).item()   # equal parts: the mean over ranks is the global mean
    if not math.isfinite(total):
        raise FloatingPointError(f"{cfg.method}: loss is {total} at epoch {epoch + 1}; "
                                 f"lower lr (now {opt.param_groups[0]['lr']:.3g}) or check the data")
    return total, step0 + nb


def run(cfg, data_path, split_path, out_dir, ckpt_dir, tracking_uri):
    t_start = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = dist.setup(cfg.device)           # joins the process group under torchrun
    main = dist.is_main()                     # rank 0 alone prints, checkpoints and logs
    torch.use_deterministic_algorithms(cfg.deterministic and device.type == "cpu", warn_only=True)
    out_dir, ckpt_dir = Path(out_dir), Path(ckpt_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if main:
        print(f"# {cfg.method} on {cfg.dataset}-LT IF {cfg.imb:g}, seed {cfg.seed}, device {device}"
              f"{f' x {dist.world()} processes' if dist.world() > 1 else ''}\n{cfg.dump()}", flush=True)

    data = open_data(data_path, split_path, device, cfg)
    torch.manual_seed(cfg.seed)
    model = methods.get(cfg.base)(cfg, data.info).to(device)
    if cfg.init_from:
        model.load_stage1(torch.load(cfg.init_from, map_location=device, weights_only=False)["model"])
    model = dist.sync_batchnorm(model, device)   # batch statistics over the global batch
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.encoder.compile()   # in place: state_dict keys (and so checkpoints) are unchanged
    opt = make_optimizer(model, cfg)
    state = {"epoch": 0, "step": 0, "best_val": -1.0, "best_val_epoch": -1, "best_test": -1.0,
             "best_test_epoch": -1, "test_at_best_val": None, "test_best": None, "wall_s": 0.0}

    ck = checkpoint.load_latest(ckpt_dir, map_location=device)   # last.pt, or prev.pt if last is damaged
    changed = checkpoint.changed_settings(ck["config"], cfg.to_dict()) if ck else []
    if changed:   # the settings were edited since: resuming would splice two different runs
        ck = None
        if main:
            stale = checkpoint.set_aside(ckpt_dir)
            print(f"# {ckpt_dir} holds a run with other settings ({', '.join(changed)}); moved to {stale}, "
                  f"starting over in a new MLflow run", flush=True)
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        state = ck["state"]
        if main:
            print(f"# resumed from {ckpt_dir} after epoch {state['epoch']}", flush=True)
    loss_fn = dist.loss_function(model, device)

    tracker = None
    if main:
        tracker = Tracker(tracking_uri, ckpt_dir, run_name=f"{cfg.method}/{cfg.dataset}/if{cfg.imb:g}/s{cfg.seed}",
                          tags={"dataset": cfg.dataset, "imb": f"{cfg.imb:g}", "method": cfg.method, "base": cfg.base,
                                "seed": str(cfg.seed), "split_sha256": data.sha256, "device": str(device),
                                "val_is_test": str(data.val_is_test).lower(), **provenance()},
                          result=out_dir / "result.json")
    if main and state["epoch"] == 0:
        sizes = metrics.group_sizes(data.counts, cfg.many, cfg.few)
        flat = {k: v for k, v in cfg.to_dict().items() if k != "params"}
        tracker.params({**flat, **{f"p_{k}": v for k, v in cfg.params.items()},
                        **{f"n_{k}": v for k, v in sizes.items()}, "n_train": len(data.train_y),
                        "n_params": sum(p.numel() for p in model.parameters()), "world_size": dist.world(),
                        "effective_batch_size": cfg.batch_size, "batch_size_per_process": cfg.batch_size // dist.world()})
        (ckpt_dir / "config.yaml").write_text(cfg.dump())
        tracker.artifact(ckpt_dir / "config.yaml")

    def record(epoch, lr, loss, t0):
        """Evaluate after `epoch` (1-indexed; 0 = untrained), log, checkpoint."""
        val = evaluate(model, data, cfg, "val")
        test = val if data.val_is_test else evaluate(model, data, cfg, "test")
        keep = {k: v for k, v in test.items() if k != "confusion"}
        if val["top1"] > state["best_val"]:
            state.update(best_val=val["top1"], best_val_epoch=epoch, test_at_best_val=keep)
        if test["top1"] > state["best_test"]:
            state.update(best_test=test["top1"], best_test_epoch=epoch, test_best=keep)
        state.update(epoch=epoch, last_test=keep, wall_s=state["wall_s"] + time.time() - t0)
        if not main:
            return
        tracker.metrics({"lr": lr, "train_loss": loss, "val_top1": val["top1"], "test_top1": test["top1"],
                         "test_many": test["many"], "test_medium": test["medium"], "test_few": test["few"],
                         **model.epoch_log()}, step=epoch)
        # a method's per-epoch record that is not a scalar (e.g. TSC's class-to-target permutation)
        for name, content in (model.epoch_artifacts() if hasattr(model, "epoch_artifacts") else {}).items():
            path = ckpt_dir / f"{name}_e{epoch:04d}.json"
            path.write_text(json.dumps(content))
            tracker.artifact(path)
        checkpoint.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state,
                         "config": cfg.to_dict()}, ckpt_dir, "last", prev="prev")
        if state["best_val_epoch"] == epoch:
            checkpoint.save({"model": model.state_dict(), "state": state, "config": cfg.to_dict()}, ckpt_dir, "best_val")
        print(f"{epoch:5d} {lr:8.2e} {loss:8.4f} {val['top1']:6.2f} {test['top1']:6.2f} {test['many']:6.2f} "
              f"{test['medium']:6.2f} {test['few']:6.2f} {time.time() - t0:6.1f}", flush=True)

    if main:
        print(f"{'epoch':>5} {'lr':>8} {'loss':>8} {'val':>6} {'test':>6} {'many':>6} {'med':>6} {'few':>6} {'s':>6}", flush=True)
    if state["epoch"] == 0:
        t0 = time.time()
        model.fit(data)
        if cfg.epochs == 0:   # a training-free method (NCM, tau-norm) is evaluated once
            record(0, 0.0, float("nan"), t0)
    for epoch in range(state["epoch"], cfg.epochs):
        t0 = time.time()
        lr = learning_rate(cfg, epoch)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        model.start_epoch(epoch, cfg.epochs)
        loss, state["step"] = train_epoch(model, loss_fn, opt, data, cfg, epoch, state["step"])
        record(epoch + 1, lr, loss, t0)

    confusion = evaluate(model, data, cfg, "test")["confusion"]   # every process: evaluation is shared
    if main:
        finish(model, data, cfg, state, tracker, out_dir, ckpt_dir, tracking_uri, t_start, confusion)
    dist.close()


def finish(model, data, cfg, state, tracker, out_dir, ckpt_dir, tracking_uri, t_start, confusion):
    """Final metrics to MLflow, artifacts, and result.json written last (the rule's output)."""
    import csv

    from ltbench.report.confusion import confusion_png
    final = {"top1_last": state["last_test"]["top1"], "top1_best_val": state["test_at_best_val"]["top1"],
             "top1_best_test": state["best_test"], "ece_last": state["last_test"]["ece"],
             "nll_last": state["last_test"]["nll"], "wall_s": state["wall_s"]}
    for tag, m in (("last", state["last_test"]), ("best_val", state["test_at_best_val"]), ("best_test", state["test_best"])):
        for g in metrics.GROUPS:
            final[f"{g}_{tag}"] = m[g]
    tracker.metrics(final, step=cfg.epochs)
    with open(ckpt_dir / "per_class.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "name", "train_count", "acc_last", "acc_best_val"])
        for k, n in enumerate(data.counts):
            w.writerow([k, data.classes[k], n, state["last_test"]["per_class"][k], state["test_at_best_val"]["per_class"][k]])
    tracker.artifact(ckpt_dir / "per_class.csv")
    confusion_png(confusion, data.classes, ckpt_dir / "confusion.png",
                  title=f"{cfg.method} {cfg.dataset} IF {cfg.imb:g} seed {cfg.seed} (last epoch)")
    tracker.artifact(ckpt_dir / "confusion.png")
    tracker.end()
    result = {"run_id": tracker.run_id, "tracking_uri": tracking_uri, "tracking_pending": tracker.pending,
              "dataset": cfg.dataset, "imb": cfg.imb, "method": cfg.method, "base": cfg.base, "seed": cfg.seed,
              "backbone": cfg.backbone, "epochs": cfg.epochs, "best_val_epoch": state["best_val_epoch"],
              "val_is_test": data.val_is_test, "world_size": dist.world(),
              "best_test_epoch": state["best_test_epoch"], **final,
              "group_sizes": metrics.group_sizes(data.counts, cfg.many, cfg.few),
              "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "checkpoint_dir": str(ckpt_dir),
              "slurm_gpus": os.environ.get("SLURM_STEP_GPUS", os.environ.get("SLURM_JOB_GPUS")),
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "total_wall_s": time.time() - t_start}
    tmp = out_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=float))
    os.replace(tmp, out_dir / "result.json")
    tracker.close()   # only now may `ltbench sync` touch this run folder (and its result.json)
    print(f"# done: last {final['top1_last']:.2f}  best-val-epoch {final['top1_best_val']:.2f}  "
          f"best-test-epoch {final['top1_best_test']:.2f} (for paper comparison only)", flush=True)
