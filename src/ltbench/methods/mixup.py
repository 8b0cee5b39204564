"""Input mixup (Zhang et al. 2018) as the LT baseline of the TDE/BBN tables.

lambda ~ Beta(alpha, alpha) once per batch, x = lambda x_i + (1 - lambda) x_perm(i), loss
lambda CE(y_i) + (1 - lambda) CE(y_perm(i)); alpha = 1 as in facebookresearch/mixup-cifar10.
"""
import torch

from ltbench import losses
from ltbench.methods import register
from ltbench.methods.base import Method


@register("mixup")
class Mixup(Method):
    defaults = {"alpha": 1.0}

    def loss(self, views, y, step):
        x = views[0]
        lam = float(step.numpy_rng().beta(self.p["alpha"], self.p["alpha"])) if self.p["alpha"] > 0 else 1.0
        perm = torch.randperm(len(x), generator=step.generator, device=step.generator.device).to(x.device)
        return losses.mixup_cross_entropy(self(lam * x + (1 - lam) * x[perm]), y, y[perm], lam)
