"""`ltbench` command line: the verbs the Snakemake rules call.

    ltbench prepare  --source fmnist --root /usr/share/datasets/fashion-mnist --out results/data/fmnist.npz
    ltbench split    --data results/data/fmnist.npz --imb 100 --max-per-class 1000 --out results/splits/fmnist/if100.npz
    ltbench train    --data … --split … --dataset fmnist --imb 100 --method la --seed 0 --set epochs=16 --out …
    torchrun --standalone --nproc_per_node 4 -m ltbench.cli train …   (the same run on 4 GPUs, one process each)
    ltbench eval     --checkpoint results/checkpoints/…/last.pt --data … --split … [--posthoc-tau 1]
    ltbench targets  --classes 100 --dim 128 --out results/targets/c100_d128.npy --checks results/targets/c100_d128.json
    ltbench assign   --checkpoint …/tsc_warmup/seed0/ckpt/last.pt --data … --split … --targets … --out …
    ltbench report   results/runs/**/result.json --tables results/tables --plots results/plots
    ltbench init-tracking --tracking-uri sqlite:///results/mlflow.db
    ltbench bench    [--device cuda] [--methods ce,bcl] [--steps 50] [--packed 4] [--json]
    ltbench sync results/runs        # send what jobs kept in their journals while MLflow was away
    ltbench tracking-server --backend-store-uri sqlite:///$HOME/mlflow/mlflow.db \
        --artifacts-destination $HOME/mlflow/artifacts --host 127.0.0.1 --port 5000

Every bad input ends in one line on stderr naming what and how to fix it, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ltbench.config import parse_value

DEFAULT_URI = "sqlite:///results/mlflow.db"


def cmd_prepare(a):
    from ltbench.data import filelist, sources
    options = {k: parse_value(v) for k, v in (s.split("=", 1) for s in a.option)}
    if a.source in filelist.SOURCES:
        prepare_filelist(a, options)
        return
    arrays = sources.load_source(a.source, a.root, download=a.download, image_size=a.image_size, options=options or None)
    sources.save_prepared(arrays, a.out)
    print(f"{a.source}: {len(arrays['train_y'])} train / {len(arrays['test_y'])} test images, "
          f"shape {tuple(arrays['train_x'].shape[1:])}, {len(arrays['classes'])} classes -> {a.out}")


def prepare_filelist(a, options):
    """ImageNet-LT / iNat: check the split files and the images, write an index (no pixels)."""
    from ltbench.data import filelist
    if a.download:
        raise ValueError(f"source {a.source} cannot download: set download: false and put the images under {a.root}")
    unknown = set(options) - {"lists"}
    if unknown:
        raise ValueError(f"source {a.source} takes only the option lists (got {', '.join(sorted(unknown))}): remove them")
    index, notes = filelist.prepare(a.source, a.root, options.get("lists"), a.image_size)
    filelist.save_index(index, a.out)
    for note in notes:
        print(note)
    print(f"{a.source}: {len(index['train_y'])} train / {len(index['val_y'])} val / {len(index['test_y'])} test images "
          f"listed under {index['root']}, {len(index['classes'])} classes, read from disk at {index['image_size']}px -> {a.out}")


def split_filelist(a):
    """The lists as given: no subsampling; counts, groups and the measured IF recorded."""
    from ltbench import metrics
    from ltbench.data import filelist, lt
    split = filelist.make_split(filelist.load_index(a.data), a.imb, a.val_per_class, a.max_per_class, a.test_per_class)
    lt.save_split(split, a.out)
    counts = split["counts"]
    val = "the test set (no separate val list)" if split["val_is_test"] else f"{len(split['val_idx'])}"
    print(f"IF {split['imb']:g} as listed (n_max {counts.max()}, n_min {counts.min()}, {len(counts)} classes): "
          f"{len(split['train_idx'])} train, val {val}, {len(split['test_idx'])} test; "
          f"groups {metrics.group_sizes(counts, a.many, a.few)}; lists sha256 {split['lists_sha256'][:12]} -> {a.out}")


def cmd_split(a):
    from ltbench import metrics
    from ltbench.data import filelist, lt, sources
    if filelist.is_index(a.data):
        split_filelist(a)
        return
    arrays = sources.load_prepared(a.data)
    split = lt.make_split(arrays["train_y"], arrays["test_y"], a.imb, profile=a.profile,
                          max_per_class=a.max_per_class, val_per_class=a.val_per_class,
                          test_per_class=a.test_per_class, seed=a.seed)
    lt.save_split(split, a.out)
    sizes = metrics.group_sizes(split["counts"], a.many, a.few)
    print(f"IF {a.imb:g}: {len(split['train_idx'])} train, {len(split['val_idx'])} val, {len(split['test_idx'])} test; "
          f"counts {list(map(int, split['counts']))}; groups {sizes}; sha256 {split['sha256'][:12]} -> {a.out}")


def cmd_train(a):
    from ltbench import train
    from ltbench.config import build
    overrides = {}
    for s in a.set:
        if "=" not in s:
            raise ValueError(f"--set {s!r}: expected key=value, e.g. --set epochs=16")
        k, v = s.split("=", 1)
        overrides[k] = parse_value(v)
    cfg = build(a.dataset, a.imb, a.method, a.seed, base=a.base, family=a.family, overrides=overrides)
    train.run(cfg, a.data, a.split, a.out, a.ckpt_dir or str(Path(a.out) / "ckpt"), a.tracking_uri)


def cmd_eval(a):
    import dataclasses

    import torch

    from ltbench import methods, train
    from ltbench.config import from_dict
    ck = torch.load(a.checkpoint, map_location="cpu", weights_only=False)
    cfg = from_dict(ck["config"])
    if a.posthoc_tau is not None:
        cfg = dataclasses.replace(cfg, posthoc_tau=a.posthoc_tau)
    data = train.open_data(a.data, a.split, torch.device("cpu"), cfg)
    model = methods.get(cfg.base)(cfg, data.info)
    model.load_state_dict(ck["model"])
    m = train.evaluate(model, data, cfg, a.on)
    out = {k: m[k] for k in ("top1", "many", "medium", "few", "ece", "nll")}
    print(json.dumps({"checkpoint": a.checkpoint, "split": a.on, "posthoc_tau": cfg.posthoc_tau, **out}))


def _device(name):
    import torch
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)


def cmd_targets(a):
    from ltbench import targets
    U, info = targets.generate_targets(a.classes, a.dim, tau=a.tau, iters=a.iters, lr=a.lr, seed=a.seed,
                                       device=_device(a.device))
    targets.save_targets(U, info, a.out, a.checks)
    simplex = "" if info["simplex_ok"] is None else (
        f"; regular simplex {'yes' if info['simplex_ok'] else 'NO'} (max |cos + 1/(C-1)| {info['simplex_max_dev']:.1e})")
    print(f"{a.classes} targets in R^{a.dim}: loss {info['loss']:.6f}, max pairwise cosine {info['max_cos']:.4f}"
          f"{simplex} -> {a.out}")


def cmd_assign(a):
    import numpy as np
    import torch

    from ltbench import methods, train
    from ltbench.config import from_dict
    from ltbench.methods.kcl_tsc import centroid_assignment
    device = _device(a.device)
    ck = torch.load(a.checkpoint, map_location=device, weights_only=False)
    cfg = from_dict(ck["config"])
    data = train.open_data(a.data, a.split, device, cfg)
    model = methods.get(cfg.base)(cfg, data.info).to(device)
    if not hasattr(model, "embed"):
        raise ValueError(f"{a.checkpoint} is a {cfg.base} run, which has no projection head; the assignment "
                         "needs a contrastive representation run (e.g. tsc_warmup)")
    model.load_state_dict(ck["model"])
    U = np.load(a.targets)
    if U.shape != (data.info.num_classes, model.p["feat_dim"]):
        raise ValueError(f"targets {a.targets} have shape {U.shape}, the run has {data.info.num_classes} classes "
                         f"and feat_dim {model.p['feat_dim']}; pass the matching c{{C}}_d{{dim}}.npy")
    perm, info = centroid_assignment(model, data, U)
    out = {"assignment": perm.tolist(), "checkpoint": a.checkpoint, "targets": a.targets, "view": "plain", **info}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".tmp").write_text(json.dumps(out, indent=1))
    Path(a.out + ".tmp").replace(a.out)
    moved = int((perm != np.arange(len(perm))).sum())
    print(f"{cfg.method} centroids -> targets: mean cosine {info['mean_cos']:.4f} "
          f"(identity {info['identity_mean_cos']:.4f}), {moved} of {len(perm)} classes off the identity -> {a.out}")


def cmd_bench(a):
    from ltbench import bench
    bench.main(a)


def cmd_report(a):
    from ltbench.report import report
    methods_order = a.methods.split(",") if a.methods else None
    report(a.results, a.tracking_uri, a.tables, a.plots, methods_order)


def cmd_init_tracking(a):
    from ltbench.tracking import ensure_experiment
    if a.tracking_uri.startswith("sqlite:///"):
        Path(a.tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    exp = ensure_experiment(a.tracking_uri)
    print(f"MLflow store {a.tracking_uri}: experiment ltbench ({exp})")
    if a.touch:
        Path(a.touch).write_text(a.tracking_uri + "\n")


def cmd_sync(a):
    from ltbench.tracking import Busy, journals, sync
    folders, left = journals(a.paths), 0
    if not folders:
        raise FileNotFoundError(f"no journal.jsonl under {' '.join(a.paths)}: give run folders (results/runs/…) "
                                f"or their ckpt folders")
    for folder in folders:
        try:
            run_id, sent, pending = sync(folder, a.tracking_uri, a.patience)
        except Busy as e:
            print(f"{folder}: skipped, {e}")
            left += 1
            continue
        left += pending > 0
        state = f"{pending} records still pending (MLflow unreachable)" if pending else "in sync"
        print(f"{folder}: {sent} records sent, {state}; MLflow run {run_id}")
    if left:
        sys.exit(1)


def cmd_tracking_server(a):
    import os

    from ltbench.tracking import server_argv
    argv = server_argv(a.backend_store_uri, a.artifacts_destination, a.host, a.port, a.workers, a.allowed_hosts)
    where = a.host if a.host not in ("0.0.0.0", "::") else "<this node's address>"
    print(f"MLflow tracking server for ltbench: set tracking_uri: http://{where}:{a.port} in config.yaml", flush=True)
    os.execv(argv[0], argv)


def parser():
    p = argparse.ArgumentParser(prog="ltbench", description="Long-tailed recognition, run and compared honestly.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("prepare", help="read a data source once into a checksummed npz")
    s.add_argument("--source", required=True,
                   help="fmnist | cifar10 | cifar100 | imagefolder | synthetic | imagenet_lt | inat2018")
    s.add_argument("--root", default="data")
    s.add_argument("--download", action="store_true")
    s.add_argument("--image-size", type=int)
    s.add_argument("--option", action="append", default=[],
                   help="source option key=value (synthetic; lists=<folder of split files> for imagenet_lt, inat2018)")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_prepare)

    s = sub.add_parser("split", help="build the LT training subset, the balanced val set and the test subset")
    s.add_argument("--data", required=True)
    s.add_argument("--imb", type=float, required=True, help="IF = n_max / n_min >= 1")
    s.add_argument("--profile", default="exp", choices=["exp", "step"])
    s.add_argument("--max-per-class", type=int)
    s.add_argument("--val-per-class", type=int, default=0)
    s.add_argument("--test-per-class", type=int)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--many", type=int, default=100)
    s.add_argument("--few", type=int, default=20)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_split)

    s = sub.add_parser("train", help="train one (method, dataset, IF, seed) run")
    s.add_argument("--data", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--dataset", required=True)
    s.add_argument("--imb", type=float, required=True)
    s.add_argument("--method", required=True, help="registry or variant name (the table row)")
    s.add_argument("--base", help="registry name when --method is a variant")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--family", default="cifar", help="which paper recipe: cifar | imagenet | inat")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    s.add_argument("--out", required=True, help="run folder: result.json is written here last")
    s.add_argument("--ckpt-dir", help="checkpoints and the MLflow run id; not a declared output (default: <out>/ckpt)")
    s.add_argument("--tracking-uri", default=DEFAULT_URI)
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("eval", help="evaluate a checkpoint (optionally with post-hoc logit adjustment)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--on", default="test", choices=["test", "val"])
    s.add_argument("--posthoc-tau", type=float)
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("targets", help="TSC targets: C unit vectors spread for uniformity, plus JSON checks")
    s.add_argument("--classes", type=int, required=True)
    s.add_argument("--dim", type=int, required=True, help="the projection's dimension (feat_dim)")
    s.add_argument("--tau", type=float, default=0.07, help="temperature of the uniformity loss")
    s.add_argument("--iters", type=int, default=10000)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--out", required=True, help=".npy of the C x dim targets")
    s.add_argument("--checks", required=True, help=".json of the run settings and quality checks")
    s.set_defaults(fn=cmd_targets)

    s = sub.add_parser("assign", help="TSC static assignment: Hungarian match of a run's class centroids to targets")
    s.add_argument("--checkpoint", required=True, help="a representation run's last.pt (the KCL warm-up)")
    s.add_argument("--data", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--targets", required=True)
    s.add_argument("--device", default="auto")
    s.add_argument("--out", required=True, help=".json with the permutation (assignment[class] = target row)")
    s.set_defaults(fn=cmd_assign)

    s = sub.add_parser("report", help="tables and plots from MLflow, runs selected by result.json files")
    s.add_argument("results", nargs="+")
    s.add_argument("--tracking-uri", default=None, help="default: the one each result.json names")
    s.add_argument("--tables", default="results/tables")
    s.add_argument("--plots", default="results/plots")
    s.add_argument("--methods", help="comma-separated row order")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("bench", help="training view-images/s of the batched path and of the per-image reference path")
    s.add_argument("--device", default="auto", help="auto (the CPU, then the GPU if there is one) | cpu | cuda | cuda:K")
    s.add_argument("--methods", help="comma-separated (default: ce,bcl,proco,glmc,kcl_repr, one per family)")
    s.add_argument("--steps", type=int, default=0, help="timed steps (default: 2 on a CPU, 20 on a GPU)")
    s.add_argument("--warmup", type=int, default=-1, help="untimed steps first (default: 1 on a CPU, 5 on a GPU)")
    s.add_argument("--batch", type=int, default=0, help="batch size of every method (default: 16 on a CPU, the recipe's on a GPU)")
    s.add_argument("--workers", type=int, default=0, help="DataLoader workers of the reference path (default: min(8, CPUs))")
    s.add_argument("--packed", type=int, default=0, metavar="K", help="also train K runs of the first method on one device at once")
    s.add_argument("--classes", type=int, default=10, choices=[10, 100])
    s.add_argument("--imb", type=float, default=100)
    s.add_argument("--config", default="config.yaml", help="config.yaml whose paper preset is projected (skipped if absent)")
    s.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("init-tracking", help="create the MLflow store and experiment once")
    s.add_argument("--tracking-uri", default=DEFAULT_URI)
    s.add_argument("--touch", help="write this marker file when done")
    s.set_defaults(fn=cmd_init_tracking)

    s = sub.add_parser("sync", help="send the records runs kept in their journals while MLflow was unreachable")
    s.add_argument("paths", nargs="+", help="run folders, their ckpt folders, or trees of them (results/runs)")
    s.add_argument("--tracking-uri", help="default: the store each run trained against; another URI replays the run there")
    s.add_argument("--patience", type=float, help="seconds to retry a busy or unreachable store (default 60)")
    s.set_defaults(fn=cmd_sync)

    s = sub.add_parser("tracking-server", help="run an MLflow tracking server for the cluster's jobs (mlflow server)")
    s.add_argument("--backend-store-uri", required=True, help="sqlite:///… on this node's local disk, or a database URL")
    s.add_argument("--artifacts-destination", required=True, help="folder for the runs' artifacts")
    s.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (then tunnel) or the address compute nodes reach")
    s.add_argument("--port", type=int, default=5000)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--allowed-hosts", help="Host headers the server accepts (mlflow default: localhost and private IPs), e.g. login1:5000")
    s.set_defaults(fn=cmd_tracking_server)
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    try:
        a.fn(a)
    except (ValueError, FileNotFoundError, KeyError, FloatingPointError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ltbench {a.cmd}: {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
