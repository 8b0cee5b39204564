"""Softmax cross-entropy, the ERM baseline (kaidic/LDAM-DRW@2536330:cifar_train.py, `--loss_type CE`).

Standard ResNet-32 with a linear classifier, natural (instance) sampling, LDAM's CIFAR recipe.
Post-hoc logit adjustment (Menon et al. 2021) is an evaluation option of any run, `posthoc_tau`.
"""
from ltbench import losses
from ltbench.methods import register
from ltbench.methods.base import Method


@register("ce")
class CE(Method):
    def loss(self, views, y, step):
        return losses.cross_entropy(self(views[0]), y)
