"""LDAM loss with deferred re-weighting (Cao et al. 2019; kaidic/LDAM-DRW@2536330:losses.py, cifar_train.py).

The head is a cosine classifier returning raw cosines; the per-class margin
Delta_k = c / n_k^(1/4) (max Delta = max_m) is subtracted from the true-class cosine, then the
scale s = 30 applies. DRW: class-balanced weights (beta = 0.9999) switch on at the first lr
decay (epoch 160 of 200); before that every weight is 1. `drw_start` is that point as a fraction
of training, so a scaled-down schedule defers in proportion.
"""
import torch

from ltbench import losses
from ltbench.methods import register
from ltbench.methods.base import Method


@register("ldam_drw")
class LDAMDRW(Method):
    classifier = "cosine"
    defaults = {"max_m": 0.5, "s": 30.0, "beta": 0.9999, "drw_start": 0.8}

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.register_buffer("weight", torch.ones(info.num_classes), persistent=False)

    def start_epoch(self, epoch, epochs):
        beta = self.p["beta"] if epoch >= round(self.p["drw_start"] * epochs) else 0.0
        self.weight = losses.class_balanced_weights(self.info.counts, beta).float().to(self.weight.device)

    def loss(self, views, y, step):
        return losses.ldam(self(views[0]), y, self.counts, self.p["max_m"], self.p["s"], weight=self.weight)

    def epoch_log(self):
        return {"drw_on": float(self.weight.std() > 0)}
