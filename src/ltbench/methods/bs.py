"""Balanced Softmax, end to end (Ren et al. 2020;
jiawei-ren/BalancedMetaSoftmax-Classification@34a61e4:loss/BalancedSoftmaxLoss.py).

CE(eta + log n_k, y) in training, raw logits at test. Deliberate deviation: the official CIFAR
configs (IF 200 only) train 13,000 iterations at batch 512 with AutoAugment; ltbench uses the
shared LDAM recipe so that only the loss differs from `ce`.
"""
from ltbench import losses
from ltbench.methods import register
from ltbench.methods.base import Method


@register("bs")
class BalancedSoftmax(Method):
    def loss(self, views, y, step):
        return losses.balanced_softmax(self(views[0]), y, self.counts)
