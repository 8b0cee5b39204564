"""`ltbench` command line: the verbs the Snakemake rules call.

    ltbench prepare  --source fmnist --root /usr/share/datasets/fashion-mnist --out results/data/fmnist.npz
    ltbench split    --data results/data/fmnist.npz --imb 100 --max-per-class 1000 --out results/splits/fmnist/if100.npz
    ltbench train    --data … --split … --dataset fmnist --imb 100 --method la --seed 0 --set epochs=16 --out …
    ltbench eval     --checkpoint results/checkpoints/…/last.pt --data … --split … [--posthoc-tau 1]
    ltbench report   results/runs/**/result.json --tables results/tables --plots results/plots
    ltbench init-tracking --tracking-uri sqlite:///results/mlflow.db

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
    from ltbench.data import sources
    options = {k: parse_value(v) for k, v in (s.split("=", 1) for s in a.option)}
    arrays = sources.load_source(a.source, a.root, download=a.download, image_size=a.image_size, options=options or None)
    sources.save_prepared(arrays, a.out)
    print(f"{a.source}: {len(arrays['train_y'])} train / {len(arrays['test_y'])} test images, "
          f"shape {tuple(arrays['train_x'].shape[1:])}, {len(arrays['classes'])} classes -> {a.out}")


def cmd_split(a):
    from ltbench import metrics
    from ltbench.data import lt, sources
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
    data = train.DeviceData(a.data, a.split, "cpu")
    model = methods.get(cfg.base)(cfg, data.info)
    model.load_state_dict(ck["model"])
    m = train.evaluate(model, data, cfg, a.on)
    out = {k: m[k] for k in ("top1", "many", "medium", "few", "ece", "nll")}
    print(json.dumps({"checkpoint": a.checkpoint, "split": a.on, "posthoc_tau": cfg.posthoc_tau, **out}))


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


def parser():
    p = argparse.ArgumentParser(prog="ltbench", description="Long-tailed recognition, run and compared honestly.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("prepare", help="read a data source once into a checksummed npz")
    s.add_argument("--source", required=True, help="fmnist | cifar10 | cifar100 | imagefolder | synthetic")
    s.add_argument("--root", default="data")
    s.add_argument("--download", action="store_true")
    s.add_argument("--image-size", type=int)
    s.add_argument("--option", action="append", default=[], help="source option key=value (synthetic)")
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

    s = sub.add_parser("report", help="tables and plots from MLflow, runs selected by result.json files")
    s.add_argument("results", nargs="+")
    s.add_argument("--tracking-uri", default=None, help="default: the one each result.json names")
    s.add_argument("--tables", default="results/tables")
    s.add_argument("--plots", default="results/plots")
    s.add_argument("--methods", help="comma-separated row order")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("init-tracking", help="create the MLflow store and experiment once")
    s.add_argument("--tracking-uri", default=DEFAULT_URI)
    s.add_argument("--touch", help="write this marker file when done")
    s.set_defaults(fn=cmd_init_tracking)
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
