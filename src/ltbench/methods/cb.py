"""Class-balanced loss (Cui et al. 2019; richardaecn/class-balanced-loss@1d78572:src/cifar_main.py).

w_k = (1 - beta) / (1 - beta^n_k), normalised to sum to C, multiplies the softmax CE (`cb_ce`) or
the focal loss (`cb_focal`). Deliberate deviation: the official TF code's focal variant is the
sigmoid one-vs-all focal with a -log(C-1) bias init; ltbench's `cb_focal` weights LDAM's softmax
focal, as the PyTorch ports in LDAM-DRW do, so that every method here shares the ResNet-32 of
kaidic/LDAM-DRW and its recipe.
"""
from ltbench import losses
from ltbench.methods import register
from ltbench.methods.base import Method


class _ClassBalanced(Method):
    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.register_buffer("weight", losses.class_balanced_weights(info.counts, self.p["beta"]).float(),
                             persistent=False)


@register("cb_ce")
class CBCE(_ClassBalanced):
    defaults = {"beta": 0.9999}

    def loss(self, views, y, step):
        return losses.cross_entropy(self(views[0]), y, weight=self.weight)


@register("cb_focal")
class CBFocal(_ClassBalanced):
    defaults = {"beta": 0.9999, "gamma": 1.0}

    def loss(self, views, y, step):
        return losses.focal(self(views[0]), y, self.p["gamma"], weight=self.weight)
