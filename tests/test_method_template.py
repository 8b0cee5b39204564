"""The template every new method's test starts from: the loss against its equation written per
sample, then two real epochs of training on synthetic data."""
import math

import pytest
import torch

from ltbench import train
from ltbench.config import build
from ltbench.methods import METHODS
from ltbench.methods._template import Template
from ltbench.methods.base import DataInfo


def test_loss_matches_its_equation_per_sample():
    torch.manual_seed(0)
    counts = (50, 20, 5)
    cfg = build("synth", 10, "la", 0, overrides={"backbone": "resnet8"})
    m = Template(cfg, DataInfo(num_classes=3, counts=counts, in_channels=3, image_size=12))
    logits, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1, 0])
    m.forward = lambda x: x                     # feed logits straight to the loss
    total = 0.0
    for i in range(6):
        z = [logits[i, k].item() + math.log(counts[k] / sum(counts)) for k in range(3)]
        total += -(z[y[i]] - math.log(sum(math.exp(v) for v in z)))
    assert m.loss([logits], y, None).item() == pytest.approx(total / 6, rel=1e-10)


def test_two_epochs_of_real_training(synth, tmp_path):
    assert METHODS["template"] is Template      # importing the file registered it
    cfg = build("synth", 10, "template", 0, overrides={"epochs": 2, "backbone": "resnet8", "batch_size": 64})
    train.run(cfg, synth["data"], synth["split"], tmp_path / "run", tmp_path / "run" / "ckpt",
              f"sqlite:///{tmp_path}/mlflow.db")
    assert (tmp_path / "run" / "result.json").exists()
