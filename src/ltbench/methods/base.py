"""What every method is: an nn.Module that owns its network, heads, views, sampler and loss.

The trainer knows nothing about any method. Per batch it produces the augmented views the
method declares (`views`, names from `ltbench.data.augment.VIEWS`), calls `loss`, and at test
time calls `forward` (the test-time logits, including any test-time adjustment). State that
must survive a resume (estimators, EMA centroids) lives in registered buffers, so the
checkpoint's state_dict carries it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ltbench import models


@dataclass(frozen=True)
class DataInfo:
    num_classes: int
    counts: tuple          # training images per class (after LT subsampling)
    in_channels: int
    image_size: int


@dataclass(frozen=True)
class Step:
    epoch: int             # 0-indexed
    epochs: int
    step: int              # global step, 0-indexed
    steps_per_epoch: int
    generator: torch.Generator = None   # the epoch's generator on the data's device: draw all randomness from it
    paired: tuple = None   # (views, y) of the second batch, for methods that set `paired_sampler`

    def numpy_rng(self):
        """A NumPy generator derived from the epoch's stream (for Beta draws and the like)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.generator.device))
        return np.random.default_rng(seed)


# The CIFAR recipe of the LDAM family (kaidic/LDAM-DRW@2536330:cifar_train.py): SGD 0.1, batch 128,
# wd 2e-4, linear warm-up over 5 epochs, x0.01 after epoch 160 and x1e-4 after 180, 200 epochs.
LDAM_CIFAR = dict(epochs=200, batch_size=128, lr=0.1, momentum=0.9, weight_decay=2e-4, schedule="step",
                  warmup_epochs=5, milestones=(160, 180), lr_factors=(0.01, 1e-4))


class Method(nn.Module):
    name = ""                      # set by @register
    views = ("standard",)          # one augmented view per name, per image, per batch
    sampler = "instance"           # default training sampler (config `sampler:` overrides)
    paired_sampler = ""            # if set, each step also gets a batch from this sampler (BBN, GLMC)
    stage1 = ""                    # method whose final checkpoint initialises this one (`crt@ldam_drw` overrides)
    classifier = "linear"          # head kind on the backbone feature (see ltbench.models.heads)
    defaults: dict = {}            # hyper-parameters, overridable by name from config
    recipes: dict = {"cifar": LDAM_CIFAR}

    def __init__(self, cfg, info: DataInfo):
        super().__init__()
        self.cfg = cfg
        self.p = dict(cfg.params)
        self.info = info
        self.register_buffer("counts", torch.tensor(info.counts, dtype=torch.float64), persistent=False)
        self.encoder = models.create(cfg.backbone, in_channels=info.in_channels)
        self.fc = models.heads.create(self.classifier, self.encoder.out_dim, info.num_classes)

    @property
    def log_prior(self):
        """log pi_k of the training set, float32, on the module's device."""
        return (self.counts / self.counts.sum()).log().float()

    def forward(self, x):
        """Test-time logits."""
        return self.fc(self.encoder(x))

    def loss(self, views, y, step: Step):
        """Training loss of one batch: `views` is a list of tensors, one per name in `views`."""
        raise NotImplementedError

    def paired_order(self, labels, epoch, epochs, generator, n):
        """Index stream of the second batch; by default the named sampler of `ltbench.data.samplers`."""
        from ltbench.data import samplers
        return samplers.epoch_indices(self.paired_sampler, labels, epoch, epochs, generator, n)

    def load_stage1(self, state_dict):
        """Initialise from a stage-1 checkpoint; by default its backbone weights, strictly."""
        enc = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
        self.encoder.load_state_dict(enc)

    def fit(self, data):
        """Called once before training (after any stage-1 init) with the trainer's `DeviceData`:
        e.g. NCM's class means or tau-norm's choice of tau on the validation split."""

    def start_epoch(self, epoch, epochs):
        """Hook called before each epoch (0-indexed); e.g. DRW switches weights here."""

    def after_step(self):
        """Hook called right after each optimizer step; e.g. a projection of weights onto a constraint set."""

    def epoch_log(self):
        """Extra per-epoch scalars to log (e.g. a schedule's alpha)."""
        return {}

