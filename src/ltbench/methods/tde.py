"""Causal TDE, "de-confound" training with total-direct-effect inference (Tang et al. 2020;
KaihuaTang/Long-Tailed-Recognition.pytorch@5c916d0:classification/).

Training (`models/CausalNormClassifier.py`, `run_networks.py`): a K-head normalised classifier
splits the feature x and every class row w_c into K chunks and scores

    y_c = (tau / K) sum_k < x_k / |x_k| , w_{c,k} / (|w_{c,k}| + gamma) >

with K = 2, tau = 16, gamma = 1/32, trained with plain softmax CE on instance-sampled batches.
Each training batch also updates the moving-average feature x_bar <- mu x_bar + mean_batch(x)
(mu = 0.9 on CIFAR; no (1 - mu) factor, harmless since x_bar is only used normalised). It is a
buffer, so checkpoints and resumes carry it, as the official checkpoints carry `embed`.

Inference (`forward`): with c_k = x_bar_k / |x_bar_k| and x_k normalised, the confounder's
projection is removed, scaled by the test-time alpha:

    y_c = (tau / K) sum_k < x_k - alpha cos(x_k, c_k) c_k , w_{c,k} / (|w_{c,k}| + gamma) >

alpha is not used in training. Official values (`config/CIFAR*_LT/causal_norm_32.yaml`):
CIFAR-10-LT 1.0, CIFAR-100-LT 1.5 (ImageNet-LT 3.0); the default here is 1.0, so CIFAR-100 runs
set alpha=1.5. alpha = 0 gives the plain causal-norm ("de-confound", no TDE) logits.

Backbone: BBN's split-block ResNet-32 with both blocks concatenated (128-d; `resnet32_bbn`), no
pre-training (`models/ResNet32Feature.py`, `pretrain: false`). Classifier rows start
uniform(-1/sqrt(d), 1/sqrt(d)). Recipe: 200 epochs, batch 256 with the partial last batch
dropped (`epoch_steps = int(N / batch)`), SGD lr 0.2, momentum 0.9, wd 5e-4, BBN's
`WarmupMultiStepLR` (x0.01 from epoch 120, x1e-4 from 160: milestones (119, 159) here).
Deliberate deviation, as in `bbn`: the warm-up rises linearly from 0, not from lr/3. Only the
CIFAR recipe is provided (ImageNet-LT also scales mu with the lr).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ltbench import losses
from ltbench.methods import register
from ltbench.methods.base import Method

TDE_CIFAR = dict(epochs=200, batch_size=256, lr=0.2, momentum=0.9, weight_decay=5e-4, schedule="step",
                 warmup_epochs=5, milestones=(119, 159), lr_factors=(0.01, 1e-4), drop_last=True,
                 backbone="resnet32_bbn")


def causal_logits(x, weight, num_head, tau, gamma, embed=None, alpha=0.0):
    """Multi-head causal-norm logits (B x C) of features x (B x d) and class rows weight (C x d);
    with `embed` (d) and alpha != 0, minus alpha times each head's projection on the normalised embed."""
    b, d = x.shape
    xk = F.normalize(x.reshape(b, num_head, d // num_head), dim=-1)
    w = weight.reshape(len(weight), num_head, d // num_head)
    wk = w / (w.norm(dim=-1, keepdim=True) + gamma)
    if embed is not None and alpha:
        ck = F.normalize(embed.reshape(1, num_head, d // num_head), dim=-1)
        cos = (xk * ck).sum(-1, keepdim=True)
        xk = xk - alpha * cos * ck
    return (tau / num_head) * torch.einsum("bkd,ckd->bc", xk, wk)


class CausalNormClassifier(nn.Module):
    """`causal_logits` with its own class rows, initialised uniform(-1/sqrt(d), 1/sqrt(d))."""

    def __init__(self, in_dim, num_classes, num_head, tau, gamma):
        super().__init__()
        bound = 1 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim).uniform_(-bound, bound))
        self.num_head, self.tau, self.gamma = num_head, tau, gamma

    def forward(self, x, embed=None, alpha=0.0):
        return causal_logits(x, self.weight, self.num_head, self.tau, self.gamma, embed, alpha)


@register("tde")
class TDE(Method):
    defaults = {"num_head": 2, "tau": 16.0, "gamma": 1 / 32, "mu": 0.9, "alpha": 1.0}
    recipes = {"cifar": TDE_CIFAR}

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        d, k = self.encoder.out_dim, self.p["num_head"]
        if d % k:
            raise ValueError(f"tde: num_head={k} does not divide the {d}-d feature of {cfg.backbone!r}; "
                             "choose num_head dividing it (the official value is 2)")
        self.fc = CausalNormClassifier(d, info.num_classes, k, self.p["tau"], self.p["gamma"])
        self.register_buffer("embed_mean", torch.zeros(d))

    def forward(self, x):
        return self.fc(self.encoder(x), self.embed_mean, self.p["alpha"])

    def loss(self, views, y, step):
        feat = self.encoder(views[0])
        with torch.no_grad():
            self.embed_mean.mul_(self.p["mu"]).add_(feat.mean(0))
        return losses.cross_entropy(self.fc(feat), y)
