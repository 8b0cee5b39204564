"""BCL, Balanced Contrastive Learning (Zhu et al., CVPR 2022; FlamieZhu/BCL@f72d070).

BCL released no CIFAR code; the CIFAR model and loss follow the re-implementation that the
BCL issue #7 thread reports as reproducing the paper (sumyeongahn/CUDA_LTR@f4c8d35:
cifar/models/resnet_bcl.py, cifar/losses/bcl.py) and the BCL hyper-parameters of
YuMJie/ConCutMix@ef8523f:run_files/cifar100_imb100.sh.

Three views per image. v1 (AutoAugment + Cutout) feeds the classifier; v2 and v3 (SimAugment,
RandomResizedCrop scale (0.2, 1) as in those repos) feed the MLP `head`, L2-normalised. The
class prototypes c_k = normalize(head_fc(w_k)) are made from the classifier's weight rows by a
second MLP of the same shape, so the contrastive loss also trains the classifier:

    L = ce_weight * LA-CE(eta(v1), y) + scl_weight * balanced_supcon([z2, z3], c, y, temperature)

LA-CE adds log pi (tau = 1) to the logits during training only; test-time logits are raw.
All three views go through the encoder and `head` as one batch of 3B images, as the official
forward does, so BatchNorm sees the statistics of all 3B.

Every linear layer gets Kaiming-normal weights (CUDA_LTR's `_weights_init`).
CIFAR: linear classifier; `head` and `head_fc` 64 -> 512 -> BN -> ReLU -> 128; ce_weight 2,
scl_weight 0.6, temperature 0.1; 200 epochs, batch 256, SGD lr 0.15, wd 5e-4, linear warm-up over
5 epochs, x0.1 after epochs 160 and 180.
ImageNet-LT / iNat (FlamieZhu/BCL@f72d070:main.py, README): cosine classifier with s = 30, heads
d -> d -> BN -> ReLU -> 1024. Their loss settings (temperature 0.07, ce_weight 1, scl_weight 0.35)
are not the defaults here: set them with a config variant.

Deliberate deviations: the large-scale cosine is ltbench's per-epoch cosine from the full rate,
not the official 0.5 (1 + cos(pi (e + 1) / (E + 1))); the large-scale RandAugment branch of v1
is not available, v1 stays AutoAugment + Cutout.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ltbench import contrastive, losses
from ltbench.methods import register
from ltbench.methods.base import Method
from ltbench.models import heads

# warm-up 5 epochs, then x0.1 after 160 and x0.01 after 180 (ProCo_cifar/main.py; ConCutMix)
CONTRASTIVE_CIFAR = dict(epochs=200, batch_size=256, momentum=0.9, schedule="step", warmup_epochs=5,
                         milestones=(160, 180), lr_factors=(0.1, 0.01))


class ClassifierAndHead(Method):
    """The shared shape of BCL and ProCo: v1 -> classifier, v2 and v3 -> normalised MLP head,
    one encoder pass over the 3B images. Linear classifier and a 512-wide, 128-d head on CIFAR;
    cosine classifier (s = 30) and a d-wide, 1024-d head on the large-scale families."""

    @property
    def classifier(self):
        return "linear" if self.cfg.family == "cifar" else "cosine30"

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.head = self.make_head()

    def make_head(self):
        d = self.encoder.out_dim
        hidden, out = (512, 128) if self.cfg.family == "cifar" else (d, 1024)
        return heads.mlp(d, hidden, out)

    def branches(self, views):
        """Classifier logits of v1 and the normalised head outputs z2, z3 of v2, v3."""
        b = len(views[0])
        feat = self.encoder(torch.cat(views))
        z = F.normalize(self.head(feat), dim=1)
        return self.fc(feat[:b]), z[b:2 * b], z[2 * b:]


@register("bcl")
class BCL(ClassifierAndHead):
    views = ("autoaugment_cutout", "simaugment_s02", "simaugment_s02")
    defaults = {"ce_weight": 2.0, "scl_weight": 0.6, "temperature": 0.1}
    recipes = {
        "cifar": dict(CONTRASTIVE_CIFAR, lr=0.15, weight_decay=5e-4),
        "imagenet": dict(epochs=90, batch_size=256, lr=0.1, momentum=0.9, weight_decay=5e-4,
                         schedule="cosine", warmup_epochs=0),
        "inat": dict(epochs=100, batch_size=256, lr=0.2, momentum=0.9, weight_decay=1e-4,
                     schedule="cosine", warmup_epochs=0),
    }

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.head_fc = self.make_head()
        for m in [*self.head.modules(), *self.head_fc.modules(), self.fc]:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def prototypes(self):
        """c_k = normalize(head_fc(w_k)), C x feat_dim; differentiable in the classifier weights."""
        return F.normalize(self.head_fc(self.fc.class_weights()), dim=1)

    def loss(self, views, y, step):
        logits, z2, z3 = self.branches(views)
        ce = losses.logit_adjusted(logits, y, self.counts)
        scl = contrastive.balanced_supcon(torch.stack([z2, z3], 1), self.prototypes(), y, self.p["temperature"])
        return self.p["ce_weight"] * ce + self.p["scl_weight"] * scl
