"""Focal loss as LDAM's code applies it (kaidic/LDAM-DRW@2536330:losses.py, `FocalLoss`).

p is exp(-ce) of the per-sample (class-weighted, when weighted) CE, gamma = 1 in that repo's runs.
"""
from ltbench import losses
from ltbench.methods import register
from ltbench.methods.base import Method


@register("focal")
class Focal(Method):
    defaults = {"gamma": 1.0}

    def loss(self, views, y, step):
        return losses.focal(self(views[0]), y, self.p["gamma"])
