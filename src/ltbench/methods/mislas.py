"""MiSLAS: mixup-shifted label-aware smoothing (Zhong et al., CVPR 2021; dvlab-research/MiSLAS@dcdc6cf:
train_stage1.py, train_stage2.py, methods.py, config/cifar10/*, config/cifar100/*, config/imagenet/*).

Stage 1, `mislas_stage1`: input mixup (lambda ~ Beta(alpha, alpha) per batch, as `mixup`) with the
official CIFAR schedule: 200 epochs, SGD lr 0.1 momentum 0.9, wd 2e-4, batch 128, linear warm-up over
5 epochs, lr x0.1 after epoch 160 and x0.01 after 180 (`cos: False`), alpha = 1. ImageNet-LT's stage
1 is 180 epochs cosine, lr 0.1, batch 256, wd 5e-4 with alpha = 0.2; alpha is a hyper-parameter, so
that run needs a variant `{base: mislas_stage1, alpha: 0.2}`.

Stage 2, `mislas`: the stage-1 backbone frozen, its linear classifier fine-tuned (not re-initialised)
at lr x `lr_factor`, followed by a learnable per-class scale (LWS, init 1) at the full lr, both with
weight decay; class-aware sampling; cosine lr over 10 epochs (lr 0.1, batch 128, wd 2e-4).
- Label-aware smoothing: the target of an image of class y is (1 - eps_y) onehot(y) + eps_y / C, so
  its loss is (1 - eps_y)(-log p_y) + eps_y mean_k(-log p_k). With n_1 / n_K the largest / smallest
  count and t_k = (n_k - n_K) / (n_1 - n_K):
      concave  eps_k = eps_K + (eps_1 - eps_K) sin(pi t_k / 2)        (the official default)
      linear   eps_k = eps_K + (eps_1 - eps_K) t_k
      convex   eps_k = eps_1 + (eps_1 - eps_K) sin(3 pi / 2 + pi t_k / 2)
  eps_1 = `smooth_head` (most frequent class), eps_K = `smooth_tail`. All classes equal: eps_1.
- Shifted BN (`shift_bn`): the backbone runs in train mode during stage 2 (under no_grad, nothing
  learns), so its BN layers normalise with batch statistics and re-estimate their running statistics
  on the class-balanced stream; conv and BN affine weights stay frozen. Without it the backbone is in
  eval mode and nothing in it changes.
The official CIFAR configs tune eps_1, eps_K, shift_bn and lr_factor per dataset and IF; left at null
they resolve from that table by (number of classes, IF = n_1 / n_K), and from the ImageNet-LT config
for the imagenet family; any other CIFAR-family case takes the CIFAR-100-LT IF-100 row. The resolved
values are logged each epoch.

Deliberate deviations: the official class-aware sampler visits one image per class draw (its default;
ltbench's `class_balanced` draws 4), and its epoch runs ceil(N / B) + 1 batches (ltbench: N images).
The `exp` smoothing shape (used by no official config) is not offered. A cosine stage-1 head is
fine-tuned as the linear map it equals on the normalised feature (see `decoupling`).
"""
import math

import torch
import torch.nn.functional as F

from ltbench import losses
from ltbench.methods import register
from ltbench.methods.base import LDAM_CIFAR
from ltbench.methods.decoupling import LWS
from ltbench.methods.mixup import Mixup

MISLAS_STAGE1_CIFAR = dict(LDAM_CIFAR, lr_factors=(0.1, 0.01))
MISLAS_STAGE1_IMAGENET = dict(epochs=180, batch_size=256, lr=0.1, momentum=0.9, weight_decay=5e-4,
                              schedule="cosine", warmup_epochs=0)
MISLAS_CIFAR = dict(epochs=10, batch_size=128, lr=0.1, momentum=0.9, weight_decay=2e-4, schedule="cosine",
                    warmup_epochs=0)
MISLAS_IMAGENET = dict(MISLAS_CIFAR, batch_size=256, weight_decay=5e-4)

# (smooth_head, smooth_tail, shift_bn, lr_factor) of config/<dataset>/<dataset>_imb<1/IF>_stage2_mislas.yaml
OFFICIAL_CIFAR = {
    (10, 100): (0.3, 0.0, False, 0.5),
    (10, 50): (0.2, 0.0, False, 0.2),
    (10, 10): (0.1, 0.0, False, 0.2),
    (100, 100): (0.4, 0.1, True, 0.2),
    (100, 50): (0.3, 0.0, True, 0.1),
    (100, 10): (0.2, 0.0, True, 0.1),
}
OFFICIAL_IMAGENET = (0.3, 0.0, True, 0.05)
SETTINGS = ("smooth_head", "smooth_tail", "shift_bn", "lr_factor")


@register("mislas_stage1")
class MiSLASStage1(Mixup):
    recipes = {"cifar": MISLAS_STAGE1_CIFAR, "imagenet": MISLAS_STAGE1_IMAGENET}


def official_settings(family, counts):
    """The official stage-2 row for this dataset family and class counts."""
    if family == "imagenet":
        return OFFICIAL_IMAGENET
    key = (len(counts), round(max(counts) / min(counts)))
    return OFFICIAL_CIFAR.get(key, OFFICIAL_CIFAR[(100, 100)])


def label_aware_epsilon(counts, smooth_head, smooth_tail, shape="concave"):
    """Per-class smoothing eps_k from the class counts (see the module docstring)."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    n1, nk = n.max(), n.min()
    if n1 == nk:
        return torch.full_like(n, smooth_head)
    t = (n - nk) / (n1 - nk)
    if shape == "concave":
        return smooth_tail + (smooth_head - smooth_tail) * torch.sin(math.pi * t / 2)
    if shape == "linear":
        return smooth_tail + (smooth_head - smooth_tail) * t
    if shape == "convex":
        return smooth_head + (smooth_head - smooth_tail) * torch.sin(1.5 * math.pi + math.pi * t / 2)
    raise ValueError(f"mislas: shape {shape!r} is not known; use concave, linear or convex")


def label_aware_smoothing(logits, y, eps):
    """mean_i (1 - eps_{y_i})(-log p_{y_i}) + eps_{y_i} mean_k(-log p_k), in float32 (bf16 would round eps)."""
    logits = logits.float()
    e = eps.float()[y].unsqueeze(1)
    target = (1 - e) * F.one_hot(y, logits.shape[1]).float() + e / logits.shape[1]
    return losses.soft_cross_entropy(logits, target)


@register("mislas")
class MiSLAS(LWS):
    stage1 = "mislas_stage1"
    sampler = "class_balanced"
    defaults = {"smooth_head": None, "smooth_tail": None, "shape": "concave", "shift_bn": None, "lr_factor": None,
                "cosine_scale": 30.0}
    recipes = {"cifar": MISLAS_CIFAR, "imagenet": MISLAS_IMAGENET}

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        official = dict(zip(SETTINGS, official_settings(cfg.family, info.counts)))
        self.settings = {k: official[k] if self.p[k] is None else self.p[k] for k in SETTINGS}
        eps = label_aware_epsilon(info.counts, self.settings["smooth_head"], self.settings["smooth_tail"],
                                  self.p["shape"])
        self.register_buffer("eps", eps.float(), persistent=False)
        self.fc.requires_grad_(True)   # unlike LWS, the classifier itself is re-trained
        self.train()

    def train(self, mode=True):
        super().train(mode)
        self.encoder.train(mode and bool(self.settings["shift_bn"]))
        return self

    def loss(self, views, y, step):
        return label_aware_smoothing(self(views[0]), y, self.eps)

    def param_groups(self):
        return [{"params": list(self.fc.parameters()), "lr_scale": float(self.settings["lr_factor"])},
                {"params": [self.scale]}]

    def epoch_log(self):
        return {k: float(v) for k, v in self.settings.items()}
