"""Hybrid-SC and Hybrid-PSC (Wang et al., "Contrastive learning based hybrid networks for
long-tailed image classification", CVPR 2021).

No official code exists. This is a best-effort reading of the paper as quoted by the
CENG502-Projects/CENG502-Spring2022 reproduction README; every detail the paper leaves open is a
guess, listed below, and results must be reported as such.

A shared backbone feeds two branches:
  feature branch     z = normalize(MLP(f)), trained by SupCon over two views (`hybrid_sc`,
                     temperature 0.1) or by the prototype loss PSC against one learnable
                     prototype per class (`hybrid_psc`);
  classifier branch  a linear layer on f, trained by cross-entropy.

    L = alpha * L_SC|PSC(B_SC) + (1 - alpha) * CE(B_CE),   alpha = 1 - (epoch / E)^2, epoch 0-indexed

B_SC is the instance-sampled batch; B_CE is a class-balanced batch of the same size drawn
alongside it (`paired_sampler`: classifier-balancing's class-aware sampler). Both branches see
random crop + flip + grayscale (p = 0.2). Inference uses the classifier branch.
Recipe (paper, as quoted): ResNet-32, batch 512, SGD momentum 0.9, wd 1e-4, lr 0.5, 200 epochs,
x0.1 after epochs 120 and 160.

Guesses:
- MLP: SupContrast's head (HobbitLong/SupContrast:networks/resnet_big.py), d -> d -> ReLU -> 128
  without BatchNorm; the paper only says one hidden layer, and the method builds on SupContrast.
- Warm-up: 10 epochs, SupContrast's rule for batches above 256 (main_supcon.py); the paper states none.
- SupCon without SupContrast's temperature / base_temperature factor (1.43 at 0.1 / 0.07): the
  paper's formula has none.
- PSC: prototypes are free parameters (C x 128) trained by the same loss, L2-normalised at use;
  the z of both views are anchors; temperature 0.1 is the paper's CIFAR-100 value (CIFAR-10: 1.0,
  set it with a config variant).
- B_CE uses its first view only; one encoder pass over [v1, v2, B_CE] so BatchNorm sees all 3B images.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ltbench import contrastive, losses
from ltbench.methods import register
from ltbench.methods.base import Method
from ltbench.methods.glmc import parabolic_alpha
from ltbench.models import heads

FEAT_DIM = 128


class Hybrid(Method):
    """The two-branch network; subclasses define `feature_loss(z1, z2, y)`."""
    views = ("standard_gray", "standard_gray")
    paired_sampler = "class_balanced"
    recipes = {"cifar": dict(epochs=200, batch_size=512, lr=0.5, momentum=0.9, weight_decay=1e-4, schedule="step",
                             warmup_epochs=10, milestones=(120, 160), lr_factors=(0.1, 0.01))}

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        d = self.encoder.out_dim
        self.head = heads.mlp(d, d, FEAT_DIM, bn=False)
        self.alpha = 1.0

    def start_epoch(self, epoch, epochs):
        self.alpha = parabolic_alpha(epoch, epochs)

    def loss(self, views, y, step):
        b = len(y)
        (x_ce, _), y_ce = step.paired
        feat = self.encoder(torch.cat([views[0], views[1], x_ce]))
        z = F.normalize(self.head(feat[:2 * b]), dim=1)
        alpha = parabolic_alpha(step.epoch, step.epochs)
        return (alpha * self.feature_loss(z[:b], z[b:], y)
                + (1 - alpha) * losses.cross_entropy(self.fc(feat[2 * b:]), y_ce))

    def epoch_log(self):
        return {"alpha": self.alpha}


@register("hybrid_sc")
class HybridSC(Hybrid):
    defaults = {"temperature": 0.1}

    def feature_loss(self, z1, z2, y):
        return contrastive.supcon(torch.stack([z1, z2], 1), y, self.p["temperature"])


@register("hybrid_psc")
class HybridPSC(Hybrid):
    defaults = {"temperature": 0.1}

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.prototypes = nn.Parameter(F.normalize(torch.randn(info.num_classes, FEAT_DIM), dim=1))

    def feature_loss(self, z1, z2, y):
        return contrastive.psc(torch.cat([z1, z2]), F.normalize(self.prototypes, dim=1), torch.cat([y, y]),
                               self.p["temperature"])
