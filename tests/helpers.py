"""Helpers several test files share (plain functions; the fixtures live in conftest.py)."""
import json
import os
import sys
from pathlib import Path

import torch
import yaml

from ltbench import methods, models, train
from ltbench.config import build
from ltbench.methods.base import DataInfo

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# the workflow tests' dataset: 4 synthetic classes of 12x12 images, n_max 150
SYNTH_DATA = {"source": "synthetic", "family": "cifar", "max_per_class": 150, "val_per_class": 10,
              "options": {"num_classes": 4, "per_class": 200, "test_per_class": 30, "size": 12}}


def snakemake_command(workdir, config):
    """Write `config` to workdir/config.yaml; return the argv that runs the real Snakefile on it in
    `workdir` (no workflow profile) and the environment, whose PATH holds `ltbench` for the rules."""
    path = Path(workdir) / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(path), "--workflow-profile", "none"]
    return argv, tool_env()


def tool_env():
    """This environment with the test Python's scripts (snakemake, ltbench) first on PATH."""
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}


def make(method, counts=(30, 10, 3), family="cifar", **over):
    """A method on a resnet8 for 8x8 RGB images of len(counts) classes with these training counts."""
    info = DataInfo(num_classes=len(counts), counts=counts, in_channels=3, image_size=8)
    cfg = build("synth", 10, method, 0, family=family, overrides={"backbone": "resnet8", **over})
    return methods.get(method)(cfg, info)


def stage1_state(weight, bias=None):
    """A stage-1 state_dict: a fresh resnet8 backbone and the given `fc` head (bias None: cosine head)."""
    sd = {f"encoder.{k}": v for k, v in models.create("resnet8", 3).state_dict().items()}
    sd["fc.weight"] = weight
    if bias is not None:
        sd["fc.bias"] = bias
    return sd


def train_on_synth(synth, root, method, overrides, name=None, family="cifar", uri=None):
    """Train `method` for real on the `synth` fixture's split; returns the run folder
    (result.json, ckpt/), named `name` (default: the method) under `root`."""
    out = Path(root) / (name or method)
    cfg = build("synth", 10, method, 0, family=family, overrides=overrides)
    train.run(cfg, synth["data"], synth["split"], out, out / "ckpt", uri or f"sqlite:///{root}/mlflow.db")
    return out


def assert_same_ending(whole, resumed, atol=1e-6):
    """An uninterrupted run and an interrupted-then-resumed one end with the same weights (within
    `atol`) and the same last-epoch top-1; returns both result.json contents."""
    a = torch.load(Path(whole) / "ckpt" / "last.pt", weights_only=False)["model"]
    b = torch.load(Path(resumed) / "ckpt" / "last.pt", weights_only=False)["model"]
    for key in a:
        assert torch.allclose(a[key].double(), b[key].double(), atol=atol, rtol=0), key
    ra, rb = (json.loads((Path(p) / "result.json").read_text()) for p in (whole, resumed))
    assert rb["top1_last"] == ra["top1_last"]
    return ra, rb
