"""Classifier heads on a backbone feature, by name, and the projection MLP of contrastive methods."""
import torch
import torch.nn.functional as F
from torch import nn


class NormedLinear(nn.Module):
    """Cosine classifier: s * <f/|f|, w_k/|w_k|>, no bias.

    s = 1 returns the raw cosine, as LDAM's head does (the scale is applied in the loss,
    kaidic/LDAM-DRW@2536330:models/resnet_cifar.py); BCL and ProCo use s = 30 inside the layer.
    Init: uniform(-1, 1), renormalised per column, as in that code.
    """

    def __init__(self, in_dim, num_classes, scale=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_dim, num_classes).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5))
        self.scale = scale

    def forward(self, x):
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)

    def class_weights(self):
        """One row per class (C x d), the shape prototype-making heads expect."""
        return self.weight.t()


class Linear(nn.Linear):
    """Linear classifier with bias, Kaiming-normal weights as LDAM's ResNet-32 initialises it
    (kaidic/LDAM-DRW@2536330:models/resnet_cifar.py, `_weights_init`)."""

    def __init__(self, in_dim, num_classes):
        super().__init__(in_dim, num_classes)
        nn.init.kaiming_normal_(self.weight)

    def class_weights(self):
        return self.weight


HEADS = {
    "linear": lambda d, c: Linear(d, c),
    "cosine": lambda d, c: NormedLinear(d, c, scale=1.0),
    "cosine30": lambda d, c: NormedLinear(d, c, scale=30.0),
}


def create(kind, in_dim, num_classes):
    if kind not in HEADS:
        raise ValueError(f"unknown classifier head {kind!r}: known heads are {', '.join(HEADS)}")
    return HEADS[kind](in_dim, num_classes)


def mlp(in_dim, hidden, out_dim, bn=True):
    """Projection head in -> hidden -> (BN) -> ReLU -> out, as BCL/ProCo's `head` (spec §3.11)."""
    mid = [nn.BatchNorm1d(hidden)] if bn else []
    return nn.Sequential(nn.Linear(in_dim, hidden), *mid, nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))
