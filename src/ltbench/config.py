"""Run configuration: one frozen dataclass per training run, built one way.

config.yaml -> Snakemake params -> `ltbench train` flags -> `RunConfig`.

A run's settings are layered, later layers winning:
  1. the method's paper recipe for the dataset family (`Method.recipes[family]`),
  2. the method's hyper-parameter defaults (`Method.defaults`),
  3. the variant's overrides (config `variants: {la_tau2: {base: la, tau: 2.0}}`),
  4. the preset's `train:` block and the dataset's `train:` block (e.g. demo epochs),
     where `epoch_scale` and `batch_scale` shrink every recipe in proportion,
  5. `--set key=value` flags given on the command line.
Epoch-valued recipe entries (milestones, warm-up) are rescaled when `epochs` is overridden,
so the demo preset runs the paper schedule in proportion; `batch_scale` shrinks the batch with the
lr (linear scaling rule, Goyal et al. 2017) unless a batch size is given outright.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import yaml

FAMILIES = ("cifar", "imagenet", "inat")


@dataclass(frozen=True)
class RunConfig:
    # what is trained
    dataset: str
    imb: float
    method: str                      # registry or variant name: the string the tables show
    base: str                        # registry name of the implementation
    seed: int
    family: str = "cifar"            # which paper recipe applies
    params: dict = field(default_factory=dict)   # method hyper-parameters (after overrides)
    # model
    backbone: str = "resnet32"
    # optimisation (per-epoch schedule, epochs 1-indexed as in the official code)
    epochs: int = 200
    epoch_scale: float = 1.0         # scales the recipe's epochs (and with them milestones, warm-up)
    batch_scale: float = 1.0         # scales the recipe's batch size and, by the linear rule, its lr
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 2e-4
    schedule: str = "step"           # step | cosine
    warmup_epochs: int = 5           # lr = base * e / warmup for e <= warmup
    milestones: tuple = (160, 180)   # step schedule: after milestone k the lr is base * lr_factors[k]
    lr_factors: tuple = (0.01, 1e-4)
    drop_last: bool = False
    sampler: str = ""                # "" = the method's own sampler
    epoch_samples: int = 0           # samples per epoch; 0 = N (training set size)
    init_from: str = ""              # stage-1 checkpoint (two-stage methods; set by the DAG)
    # augmentation
    padding: int = 4
    augment_path: str = "batched"    # batched: views of uint8 batches on the device (ltbench.data.views);
                                     # reference: per-image PIL views in DataLoader workers, as the
                                     # official repos (ltbench.data.reference); on-disk data is per-image
    # evaluation
    posthoc_tau: float = 0.0         # post-hoc logit adjustment at test time (0 = off)
    many: int = 100                  # many: > many training images
    few: int = 20                    # few: < few training images
    eval_batch_size: int = 1024
    # system
    device: str = "auto"
    threads: int = 0                 # torch intra-op threads; 0 = torch's default
    deterministic: bool = True
    channels_last: bool = True       # NHWC activations: faster convolutions on CPU (oneDNN) and GPU
    amp: bool = True                 # bf16 autocast on CUDA and on CPUs with native bf16 (train.bf16_native)
    compile: bool = False            # torch.compile the model (pays off on GPU for long runs)
    workers: int = 0                 # image-decoding processes per GPU for on-disk datasets (ImageNet-LT,
                                     # iNat); 0 = the job's CPUs shared among the processes on the node

    def to_dict(self):
        return dataclasses.asdict(self)

    def dump(self):
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
_IDENTITY = {"dataset", "imb", "method", "base", "seed"}
_EPOCH_KEYS = ("milestones",)


def parse_value(text):
    """`--set key=value` values are YAML scalars or flow sequences (`[160, 180]`)."""
    return yaml.safe_load(text)


def _scale_epochs(recipe, epochs):
    """Rescale the epoch-valued entries of a paper recipe to `epochs` total epochs."""
    old = recipe["epochs"]
    if epochs == old:
        return recipe
    r = dict(recipe, epochs=epochs)
    r["milestones"] = tuple(max(1, round(m * epochs / old)) for m in recipe.get("milestones", ()))
    if recipe.get("warmup_epochs", 0):
        r["warmup_epochs"] = max(1, round(recipe["warmup_epochs"] * epochs / old))
    return r


def build(dataset, imb, method, seed, base=None, family="cifar", overrides=None):
    """Resolve the full RunConfig of one run. Unknown keys fail with one line naming them."""
    from ltbench import methods

    base = base or method
    cls = methods.get(base)
    if family not in cls.recipes:
        raise ValueError(f"method {base!r} has no recipe for dataset family {family!r} "
                         f"(it has: {', '.join(cls.recipes) or 'none'})")
    if imb < 1:
        raise ValueError(f"imbalance factor {imb} < 1: ltbench uses IF = n_max / n_min >= 1 (e.g. 100, not 0.01)")
    recipe = dict(cls.recipes[family])
    params = dict(cls.defaults)
    run = {}
    for key, value in (overrides or {}).items():
        if key in _IDENTITY:
            raise ValueError(f"override {key!r} is part of the run's identity; pass it as its own flag")
        if key in cls.defaults:
            params[key] = value
        elif key in _FIELDS and key != "params":
            run[key] = value
        else:
            raise ValueError(f"unknown setting {key!r} for method {base!r}: it is neither a run setting "
                             f"({', '.join(sorted(set(_FIELDS) - _IDENTITY - {'params'}))}) nor a "
                             f"hyper-parameter of {base!r} ({', '.join(sorted(cls.defaults)) or 'none'})")
    if isinstance(run.get("backbone"), dict):   # a preset maps recipe backbones to smaller siblings
        run["backbone"] = run["backbone"].get(recipe.get("backbone", RunConfig.backbone),
                                              recipe.get("backbone", RunConfig.backbone))
    if "epochs" not in run and run.get("epoch_scale", 1.0) != 1.0:
        # a preset shrinks every recipe by one factor: 200 -> 16 and a 10-epoch stage 2 -> 1 at 0.08
        run["epochs"] = max(1, round(recipe["epochs"] * run["epoch_scale"]))
    if run.get("batch_scale", 1.0) != 1.0 and "batch_size" not in run:
        # a small dataset at the recipe's batch gets few steps per epoch; lr / batch stays the recipe's
        batch = recipe.get("batch_size", RunConfig.batch_size)
        run["batch_size"] = max(1, round(batch * run["batch_scale"]))
        run.setdefault("lr", recipe.get("lr", RunConfig.lr) * run["batch_size"] / batch)
    if "epochs" in run:
        if recipe["epochs"] == 0:    # training-free (tau-norm, NCM): a preset must not make it train
            del run["epochs"]
        else:
            recipe = _scale_epochs(recipe, int(run["epochs"]))
    merged = {**recipe, **run}
    for key in ("milestones", "lr_factors"):
        if key in merged:
            merged[key] = tuple(merged[key])
    return RunConfig(dataset=dataset, imb=float(imb), method=method, base=base, seed=int(seed),
                     family=family, params=params, **merged)


def from_dict(d):
    d = dict(d)
    for key in ("milestones", "lr_factors"):
        if key in d:
            d[key] = tuple(d[key])
    return RunConfig(**d)


def to_json(cfg):
    return json.dumps(cfg.to_dict(), sort_keys=True)
