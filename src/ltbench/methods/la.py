"""Logit-adjusted loss (Menon et al. 2021; google-research/google-research:logit_adjustment/utils.py).

Train on CE(eta + tau * log pi, y); test on the raw logits. Deliberate deviation: the official
runs use a TF bottleneck "ResNet-32" with a 1241-epoch schedule; ltbench trains it on the shared
LDAM ResNet-32 and recipe so the comparison isolates the loss (spec §3.4).
"""
from ltbench import losses
from ltbench.methods import register
from ltbench.methods.base import Method


@register("la")
class LogitAdjusted(Method):
    defaults = {"tau": 1.0}

    def loss(self, views, y, step):
        return losses.logit_adjusted(self(views[0]), y, self.counts, self.p["tau"])
