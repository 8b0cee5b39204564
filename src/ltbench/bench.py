"""`ltbench bench`: training throughput of ltbench's data path against the per-image reference.

    ltbench bench                                   # every family, on the CPU and on the GPU if there is one
    ltbench bench --device cuda --steps 50 --packed 4 --json

For one method of each family (one view: ce; three views: bcl, proco; two batches: glmc; two-view
SupCon: kcl_repr, whose views and loss TSC's representation stage shares) it trains the real method
for a few steps on synthetic CIFAR-shaped data (3 x 32 x 32, LDAM's long-tailed counts) along both
paths, one after the other in the same process, and reports view-images per second (images x views
per image, the second batch of a two-batch method counting its own views):

  ltbench     augment_path batched: uint8 images on the device, each view made there for the whole
              batch; bf16 autocast (CUDA, and CPUs with bf16 kernels), channels_last, the trainer's fused (CUDA) / foreach SGD
  reference   as the official repos run: per-image PIL transforms in DataLoader workers, float32,
              channels-first, torch.optim.SGD with its default arguments

Both take the recipe's batch size on a GPU (`--batch` sets one for all). The loop is the trainer's
step (sampler -> views -> loss -> backward -> step); the first steps are not timed, and the
reference path also trains through what its workers prefetched meanwhile (two batches per worker)
before the clock starts, so the timed steps see its pipeline in the steady state.

`--packed K` also starts K processes that train the first method along the ltbench path on one
device at once and reports their aggregate rate: what a GPU gives when K runs share it.

Projected hours: every run of a grid (its stage-1 runs counted once) needs epochs x N_train(IF) x
views-per-image view-images; divided by the measured rate of the family with the same views per
image, summed, for the core table (`CORE`) and config.yaml's paper preset.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import queue
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch

from ltbench import methods, train
from ltbench.config import build
from ltbench.data import lt, samplers, sources
from ltbench.experiment import GRID_KEYS, effective, run_settings, stage1_of
from ltbench.methods.base import Step

FAMILIES = {"ce": "one view", "bcl": "three views", "proco": "three views", "glmc": "two batches",
            "kcl_repr": "two-view SupCon"}
PATHS = {"ltbench": dict(augment_path="batched", amp=True, channels_last=True, compile=False),
         "reference": dict(augment_path="reference", amp=False, channels_last=False, compile=False)}
# per device kind: timed steps, untimed warm-up steps, batch (0: the recipe's)
DEFAULTS = {"cpu": dict(steps=2, warmup=1, batch=16), "cuda": dict(steps=20, warmup=5, batch=0)}
N_MAX = 500            # images of the largest synthetic class; the rate does not depend on N

# The core comparison: 12 methods on CIFAR-10/100-LT at IF 100/50/10, three seeds
CORE = {"preset": "core", "variants": {},
        "presets": {"core": dict(datasets=["cifar10", "cifar100"], imbalance_factors=[100, 50, 10], seeds=[0, 1, 2],
                                 methods=["ce", "focal", "cb_ce", "cb_focal", "ldam_drw", "la", "bs", "mixup",
                                          "bcl", "proco", "glmc", "tau_norm"], train={})},
        "data": {"cifar10": {"source": "cifar10", "family": "cifar"},
                 "cifar100": {"source": "cifar100", "family": "cifar"}}}
SOURCES = {"cifar10": (5000, 10), "cifar100": (500, 100), "fmnist": (6000, 10)}   # (n_max, classes)
# which measured method's rate a run takes, by its views per image (a two-batch method: "paired")
REPRESENTATIVES = {1: ("ce",), 2: ("kcl_repr",), 3: ("bcl", "proco"), "paired": ("glmc",)}


# ----------------------------------------------------------------------------- data

def synthetic_files(folder, classes=10, imb=100):
    """A prepared npz and split of random CIFAR-shaped uint8 images with LDAM's LT counts."""
    rng = np.random.default_rng(0)
    train_y = np.repeat(np.arange(classes), N_MAX)      # balanced; the split keeps LDAM's LT subset
    test_y = np.arange(classes)
    arrays = {"train_x": rng.integers(0, 256, (len(train_y), 3, 32, 32), dtype=np.uint8), "train_y": train_y,
              "test_x": rng.integers(0, 256, (classes, 3, 32, 32), dtype=np.uint8), "test_y": test_y,
              "classes": [f"class{c}" for c in range(classes)]}
    split = lt.make_split(train_y, test_y, imb)
    files = {"data": os.path.join(folder, "bench.npz"), "split": os.path.join(folder, "split.npz"),
             "classes": classes, "imb": imb, "n_train": len(split["train_idx"])}
    sources.save_prepared(arrays, files["data"])
    lt.save_split(split, files["split"])
    return files


# ----------------------------------------------------------------------------- one measurement

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_sgd(model, cfg):
    """The optimiser as the official code writes it: torch.optim.SGD with its default arguments."""
    params = model.param_groups() if hasattr(model, "param_groups") else model.parameters()
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def measure(method, path, device, files, steps, warmup, batch=0, workers=0, ready=None):
    """Train `method` for warm-up + `steps` steps along `path`; the rate of the timed steps.
    `ready` is called once the warm-up is done, right before the clock starts (a barrier)."""
    device = torch.device(device)
    over = {**PATHS[path], "device": str(device), "workers": workers}
    if batch:
        over["batch_size"] = batch
    cfg = build("bench", files["imb"], method, 0, overrides=over)
    data = train.open_data(files["data"], files["split"], device, cfg)
    torch.manual_seed(0)
    model = methods.get(cfg.base)(cfg, data.info).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = train.make_optimizer(model, cfg) if path == "ltbench" else plain_sgd(model, cfg)
    model.fit(data)
    model.start_epoch(0, cfg.epochs)

    workers = getattr(data, "workers", 0)
    warmup += 2 * workers          # DataLoader's default prefetch: two batches per worker in flight
    b, total = cfg.batch_size, warmup + steps
    slices = [(i * b, (i + 1) * b) for i in range(total)]
    gen_cpu, gen_dev = train.seed_generators(0, 0, device)
    labels = data.train_y.cpu()
    order = samplers.epoch_indices(cfg.sampler or model.sampler, labels, 0, cfg.epochs, gen_cpu, total * b)
    batches = data.train_batches(order, slices, model.views, gen_dev, cfg, 0)
    paired = None
    if model.paired_sampler:
        order2 = model.paired_order(labels, 0, cfg.epochs, gen_cpu, total * b)
        paired = data.train_batches(order2, slices, model.views, gen_dev, cfg, 0, stream=1)

    t0 = time.monotonic()
    for k in range(total):
        if k == warmup:        # before the next batch is asked for: its views are made in the timed span
            sync(device)
            if ready:
                ready()
            t0 = time.monotonic()
        views, y = next(batches)
        step = Step(0, cfg.epochs, k, total, gen_dev, next(paired) if paired else None)
        with train.autocast(cfg, device):
            loss = model.loss(views, y, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.after_step()
    sync(device)
    t1 = time.monotonic()
    per_image = len(model.views) * (2 if paired else 1)
    return {"method": method, "family": FAMILIES.get(method, ""), "path": path, "device": str(device),
            "backbone": cfg.backbone, "batch": b, "views_per_image": per_image, "workers": workers,
            "steps": steps, "seconds": t1 - t0, "view_images": steps * b * per_image,
            "view_images_per_s": steps * b * per_image / (t1 - t0), "t0": t0, "t1": t1}


# ----------------------------------------------------------------------------- K runs at once

def _packed_run(method, device, files, steps, warmup, batch, threads, barrier, results):
    if threads:
        torch.set_num_threads(threads)
    results.put(measure(method, "ltbench", device, files, steps, warmup, batch, ready=lambda: barrier.wait(900)))


def packed(k, method, device, files, steps, warmup, batch):
    """K processes train `method` on `device` at once, their timed steps started together; the
    aggregate rate is all their view-images over the span from the first start to the last end."""
    ctx = multiprocessing.get_context("spawn")      # CUDA cannot be used in forked children
    barrier, results = ctx.Barrier(k), ctx.Queue()
    threads = max(1, torch.get_num_threads() // k) if torch.device(device).type == "cpu" else 0
    procs = [ctx.Process(target=_packed_run, args=(method, str(device), files, steps, warmup, batch, threads,
                                                   barrier, results)) for _ in range(k)]
    for p in procs:
        p.start()
    runs = []
    while len(runs) < k:
        try:
            runs.append(results.get(timeout=5))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"bench --packed {k}: a training process exited with status {dead[0]}; "
                                   f"run `ltbench bench --methods {method} --device {device}` alone to see why")
    for p in procs:
        p.join()
    span = max(r["t1"] for r in runs) - min(r["t0"] for r in runs)
    return {"k": k, "method": method, "device": str(device), "seconds": span,
            "view_images_per_s": sum(r["view_images"] for r in runs) / span,
            "per_run": [r["view_images_per_s"] for r in runs]}


# ----------------------------------------------------------------------------- projection

def views_per_image(base, cfg):
    """(view-images per training image per epoch, two-batch?) of a method under `cfg`."""
    cls = methods.get(base)
    views = cls.views.fget(SimpleNamespace(cfg=cfg)) if isinstance(cls.views, property) else cls.views
    paired = bool(cls.paired_sampler)
    return len(views) * (2 if paired else 1), paired


def grid_runs(config, preset):
    """[(view-images, representative key)] of every run the preset trains, each stage-1 run once."""
    config = {**config, "preset": preset, **{key: None for key in GRID_KEYS + ("train",)}}
    grid = effective(config)
    runs = {}
    for d in grid["datasets"]:
        source = config["data"][d].get("source", d)
        if source not in SOURCES:
            raise ValueError(f"bench: dataset {d!r} of preset {preset!r} has source {source!r}, whose training-set "
                             f"size is not known here (known: {', '.join(SOURCES)})")
        n_max, classes = SOURCES[source]
        n_max = min(n_max, config["data"][d].get("max_per_class") or n_max)
        family = config["data"][d].get("family", "cifar")
        for imb in grid["imbalance_factors"]:
            n = sum(lt.img_num_per_cls(n_max, classes, imb))
            for seed in grid["seeds"]:
                for method in grid["methods"]:
                    while method and (d, imb, method, seed) not in runs:
                        base, overrides = run_settings(config, d, method)
                        cfg = build(d, imb, method, seed, base=base, family=family, overrides=overrides)
                        per_image, paired = views_per_image(base, cfg)
                        runs[d, imb, method, seed] = (cfg.epochs * n * per_image, "paired" if paired else per_image)
                        method = stage1_of(config, method)
    return list(runs.values())


def project(runs, rates):
    """Hours of `runs` at `rates` (method -> view-images/s); None if a needed family was not measured."""
    seconds = 0.0
    for view_images, key in runs:
        measured = [rates[m] for m in REPRESENTATIVES[key] if m in rates]
        if view_images and not measured:
            return None
        seconds += view_images / np.mean(measured) if view_images else 0.0
    return seconds / 3600


def projections(results, tables):
    out = []
    for device in dict.fromkeys(r["device"] for r in results):
        for name, runs in tables.items():
            row = {"device": device, "table": name, "runs": len(runs), "view_images": sum(v for v, _ in runs)}
            for path in PATHS:
                rates = {r["method"]: r["view_images_per_s"] for r in results if r["device"] == device and r["path"] == path}
                row[f"{path}_hours"] = project(runs, rates)
            out.append(row)
    return out


# ----------------------------------------------------------------------------- command

def devices(name):
    if name != "auto":
        return [torch.device(name)]
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def run(device="auto", method_names=None, steps=0, warmup=-1, batch=0, workers=0, packed_k=0, classes=10, imb=100,
        config_path="config.yaml"):
    """Everything `ltbench bench` prints, as one dict."""
    method_names = list(method_names or FAMILIES)
    for m in method_names:
        methods.get(m)
    workers = workers or min(8, len(os.sched_getaffinity(0)))
    tables = {"core": grid_runs(CORE, "core")}
    if config_path and os.path.exists(config_path):
        import yaml
        with open(config_path) as f:
            tables["paper"] = grid_runs(yaml.safe_load(f), "paper")
    results, packs = [], []
    with tempfile.TemporaryDirectory(prefix="ltbench-bench-") as folder:
        files = synthetic_files(folder, classes, imb)
        for dev in devices(device):
            d = DEFAULTS["cuda" if dev.type == "cuda" else "cpu"]
            s, w, b = steps or d["steps"], d["warmup"] if warmup < 0 else warmup, batch or d["batch"]
            for m in method_names:
                for path in PATHS:
                    results.append(measure(m, path, dev, files, s, w, b, workers))
            if packed_k > 1:
                packs.append(packed(packed_k, method_names[0], dev, files, s, w, b))
    return {"data": {"shape": [3, 32, 32], "classes": classes, "imb": imb, "n_train": files["n_train"]},
            "torch_threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "results": results, "packed": packs, "projection": projections(results, tables)}


def table(report):
    """The fixed-width text of a `run` report."""
    d = report["data"]
    load = " ".join(f"{v:.1f}" for v in report["load_average"])
    lines = [f"synthetic CIFAR-shaped data: 3x32x32, {d['classes']} classes, IF {d['imb']:g}, "
             f"{d['n_train']} training images; cpu: {report['torch_threads']} torch threads, load average {load}"
             + (f"; gpu: {report['gpu']}" if report["gpu"] else ""),
             "view-images/s of the timed steps (after warm-up); ratio = ltbench / reference", "",
             f"{'device':<8}{'family':<17}{'method':<10}{'views':>5}{'batch':>6}  {'backbone':<12}{'steps':>5}"
             f"{'workers':>8}{'ltbench':>10}{'reference':>11}{'ratio':>7}"]
    rows = {}
    for r in report["results"]:
        rows.setdefault((r["device"], r["method"]), {})[r["path"]] = r
    for (device, method), by_path in rows.items():
        fast, ref = by_path["ltbench"], by_path["reference"]
        lines.append(f"{device:<8}{fast['family']:<17}{method:<10}{fast['views_per_image']:>5}{fast['batch']:>6}  "
                     f"{fast['backbone']:<12}{fast['steps']:>5}{ref['workers']:>8}{fast['view_images_per_s']:>10.1f}"
                     f"{ref['view_images_per_s']:>11.1f}{fast['view_images_per_s'] / ref['view_images_per_s']:>7.2f}")
    for p in report["packed"]:
        one = rows[p["device"], p["method"]]["ltbench"]["view_images_per_s"]
        lines += ["", f"packed: {p['k']} x {p['method']} on {p['device']} at once: {p['view_images_per_s']:.1f} "
                      f"view-images/s in all ({p['view_images_per_s'] / one:.2f} x one run alone)"]
    lines += ["", "projected hours = view-images / measured rate of the family with as many views per image",
              f"{'device':<8}{'table':<8}{'runs':>6}{'view-images':>14}{'ltbench h':>12}{'reference h':>13}"]
    fmt = lambda h: f"{h:.1f}" if h is not None else "n/a"
    for p in report["projection"]:
        lines.append(f"{p['device']:<8}{p['table']:<8}{p['runs']:>6}{p['view_images'] / 1e6:>12.1f} M"
                     f"{fmt(p['ltbench_hours']):>12}{fmt(p['reference_hours']):>13}")
    return "\n".join(lines)


def main(a):
    report = run(a.device, a.methods.split(",") if a.methods else None, a.steps, a.warmup, a.batch, a.workers,
                 a.packed, a.classes, a.imb, a.config)
    print(json.dumps(report, indent=1) if a.json else table(report))
