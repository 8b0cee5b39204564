"""GLMC, global and local mixture consistency cumulative learning (Du et al., CVPR 2023;
ynu-yangpeng/GLMC@2c0261c: GLMC-2023/Trainer.py, utils/util.py, main.py, model/ResNet_cifar.py).

Each step takes a uniform batch (x1, x2: two "standard" crops of the same images) and, at the
same positions, a batch from the re-sampled stream (x~1, x~2). With lam ~ Beta(1, 1):

    global MixUp   x_g = lam x1 + (1 - lam) x~1
    local CutMix   x_l = x2 with one box of side ceil(sqrt(1 - lam) * size), clipped to the
                   image, pasted from x~2 (one box for the whole batch)
    soft labels    t = lam e_y + (1 - lam) e_y~ for both (CutMix's label is not corrected for
                   the clipped area), and the re-weighted t_w = v * t, v_k ∝ n_k^-omega, sum_k v_k = C

    L = alpha [softCE(fc(x_g), t) + softCE(fc(x_l), t)]
      + (1 - alpha) [softCE(fc_cb(x_g), t_w) + softCE(fc_cb(x_l), t_w)]
      + contrast_weight [-cos(u_g, sg(h_l)) - cos(u_l, sg(h_g))]

with alpha = 1 - (epoch / E)^2 (epoch 0-indexed), h = projection(f) (one Linear to 128),
u = predictor(h) (one Linear 128 -> 128) and sg the stop-gradient. `util.GLMC_mixed` draws lam
from Beta(1, 1) whatever the `--beta 0.5` flag says. The two mixed batches go through the
network separately, as the official two forward calls do (BatchNorm statistics per batch).
Every linear layer gets Kaiming-normal weights, as the official `_weights_init`. Inference uses
`fc_cb` alone.

Re-sampling (`resample_weighting` q, main.py's WeightedRandomSampler): each image is drawn with
replacement with weight n_{y}^-q, so class k is drawn with probability n_k^(1-q) / sum_j n_j^(1-q),
not n_k^-q: q = 0 is instance sampling with replacement, q = 1 class-balanced sampling.

CIFAR recipe (README commands): GLMC's wide ResNet-32 (`resnet32_w4`, 64/128/256), 200 epochs,
batch 64, SGD lr 0.01, wd 5e-3, CosineAnnealingLR(T_max = 200) stepped per epoch, no warm-up.
Left unset (None), the three weights come from the README's table by (classes, IF); another
dataset takes the nearest IF of the CIFAR-10 table (C <= 10) or the CIFAR-100 one:

    dataset       IF   resample_weighting  label_weighting  contrast_weight
    CIFAR-10-LT   100  0.0                 1.2              1   (README update text: 4)
    CIFAR-10-LT    50  0.0                 1.2              1
    CIFAR-10-LT    10  0.2                 1.0              2
    CIFAR-100-LT  100  0.0                 1.2              4
    CIFAR-100-LT   50  0.2                 1.2              6
    CIFAR-100-LT   10  0.2                 1.2              4

ImageNet-LT (135 epochs, batch 120, lr 0.1, wd 2e-4) and iNat (120 epochs, batch 128, lr 0.1,
wd 1e-4) use a 256-d projection, 10 warm-up epochs then cosine, and q 0.2, omega 1.0,
contrast_weight 10 (the imagenet / inat rows of OFFICIAL).

`glmc_maxnorm` adds the MaxNorm projected-gradient constraint of GLMC-2023/utils/regularizers.py
(`MaxNorm_via_PGD`, not enabled in main.py) on `fc_cb`: after every step, each weight row whose
L2 norm exceeds min + thresh (max - min) of the row norms is scaled back to that bound; the bias
is unconstrained (its bound is infinite there). The bound is fixed once, from `fc_cb` before
training, as the MaxNorm call sites do (ShadeAlsha/LTR-weight-balancing calls
`setPerLayerThresh` before its loop); thresh 1.0 is that file's default (those call sites use 0.1).

Deliberate deviations: the large-scale schedule is ltbench's warm-up + cosine, not
`paco_adjust_learning_rate` (11 warm-up epochs up to 1.1 lr, cosine over E - 9); the dataset
subset is ltbench's, not GLMC's seed-3407 one.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ltbench import losses
from ltbench.methods import register
from ltbench.methods.base import Method


def parabolic_alpha(epoch, epochs):
    """Cumulative-learning weight 1 - (epoch / epochs)^2, epoch 0-indexed (GLMC, Hybrid-SC/PSC)."""
    return 1.0 - (epoch / epochs) ** 2


def label_weights(counts, omega):
    """v_k = n_k^-omega, rescaled so that sum_k v_k = C (Trainer.update_weight)."""
    w = torch.as_tensor(counts, dtype=torch.float64).pow(-omega)
    return w * (len(w) / w.sum())


def cutmix_box(height, width, lam, cy, cx):
    """Rows r1:r2 and columns c1:c2 of `util.rand_bbox`: a box of side ceil(sqrt(1 - lam) * size)
    centred on (cy, cx), whose half-sides are floored and whose ends are clipped to the image."""
    cut_h = math.ceil(height * math.sqrt(1.0 - lam))
    cut_w = math.ceil(width * math.sqrt(1.0 - lam))
    clip = lambda v, hi: min(max(v, 0), hi)
    return (clip(cy - cut_h // 2, height), clip(cy + cut_h // 2, height),
            clip(cx - cut_w // 2, width), clip(cx + cut_w // 2, width))


def consistency(u_g, u_l, h_g, h_l):
    """SimSiam-style mixture consistency -cos(u_g, sg(h_l)) - cos(u_l, sg(h_g)), batch means."""
    return -F.cosine_similarity(u_g, h_l.detach(), dim=1).mean() - F.cosine_similarity(u_l, h_g.detach(), dim=1).mean()


# (resample_weighting q, label_weighting omega, contrast_weight) per (classes, IF), GLMC's README
OFFICIAL = {(10, 100): (0.0, 1.2, 1.0), (10, 50): (0.0, 1.2, 1.0), (10, 10): (0.2, 1.0, 2.0),
            (100, 100): (0.0, 1.2, 4.0), (100, 50): (0.2, 1.2, 6.0), (100, 10): (0.2, 1.2, 4.0),
            "imagenet": (0.2, 1.0, 10.0), "inat": (0.2, 1.0, 10.0)}
WEIGHTS = ("resample_weighting", "label_weighting", "contrast_weight")


def official_weights(family, num_classes, imb):
    if family != "cifar":
        return dict(zip(WEIGHTS, OFFICIAL[family]))
    c = 10 if num_classes <= 10 else 100
    nearest = min((10, 50, 100), key=lambda i: abs(math.log(imb / i)))
    return dict(zip(WEIGHTS, OFFICIAL[(c, nearest)]))


@register("glmc")
class GLMC(Method):
    views = ("standard", "standard")
    paired_sampler = "weighted"      # n_y^-q per image, with replacement: see `paired_order`
    defaults = {"resample_weighting": None, "label_weighting": None, "contrast_weight": None}
    recipes = {
        "cifar": dict(backbone="resnet32_w4", epochs=200, batch_size=64, lr=0.01, momentum=0.9, weight_decay=5e-3,
                      schedule="cosine", warmup_epochs=0, milestones=(), lr_factors=()),
        "imagenet": dict(epochs=135, batch_size=120, lr=0.1, momentum=0.9, weight_decay=2e-4,
                         schedule="cosine", warmup_epochs=10, milestones=(), lr_factors=()),
        "inat": dict(epochs=120, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4,
                     schedule="cosine", warmup_epochs=10, milestones=(), lr_factors=()),
    }

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        official = official_weights(cfg.family, info.num_classes, cfg.imb)
        self.p.update({k: official[k] for k in WEIGHTS if self.p[k] is None})
        d, proj = self.encoder.out_dim, (128 if cfg.family == "cifar" else 256)
        self.fc_cb = nn.Linear(d, info.num_classes)
        self.projection = nn.Linear(d, proj)
        self.predictor = nn.Linear(proj, proj)
        for m in (self.fc, self.fc_cb, self.projection, self.predictor):
            nn.init.kaiming_normal_(m.weight)
        self.register_buffer("label_weight", label_weights(info.counts, self.p["label_weighting"]).float(),
                             persistent=False)
        self.alpha = 1.0

    def forward(self, x):
        return self.fc_cb(self.encoder(x))

    def paired_order(self, labels, epoch, epochs, generator, n):
        weight = torch.bincount(labels).double()[labels].pow(-self.p["resample_weighting"])
        return torch.multinomial(weight, n, replacement=True, generator=generator)

    def start_epoch(self, epoch, epochs):
        self.alpha = parabolic_alpha(epoch, epochs)

    def mix(self, views, y, paired, rng):
        """(x_g, x_l, t, t_w) of one step; `rng` a NumPy generator for lam and the box centre."""
        (x1, x2), ((r1, r2), yr) = views, paired
        lam = float(rng.beta(1.0, 1.0))
        height, width = x2.shape[-2:]
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        top, bottom, left, right = cutmix_box(height, width, lam, cy, cx)
        x_l = x2.clone()
        x_l[..., top:bottom, left:right] = r2[..., top:bottom, left:right]
        t = lam * F.one_hot(y, self.info.num_classes).float() + (1 - lam) * F.one_hot(yr, self.info.num_classes).float()
        return lam * x1 + (1 - lam) * r1, x_l, t, t * self.label_weight

    def loss(self, views, y, step):
        x_g, x_l, t, t_w = self.mix(views, y, step.paired, step.numpy_rng())
        f_g, f_l = self.encoder(x_g), self.encoder(x_l)
        h_g, h_l = self.projection(f_g), self.projection(f_l)
        alpha = parabolic_alpha(step.epoch, step.epochs)
        balanced = losses.soft_cross_entropy(self.fc(f_g), t) + losses.soft_cross_entropy(self.fc(f_l), t)
        rebalanced = losses.soft_cross_entropy(self.fc_cb(f_g), t_w) + losses.soft_cross_entropy(self.fc_cb(f_l), t_w)
        return (alpha * balanced + (1 - alpha) * rebalanced
                + self.p["contrast_weight"] * consistency(self.predictor(h_g), self.predictor(h_l), h_g, h_l))

    def epoch_log(self):
        return {"alpha": self.alpha, **{k: float(self.p[k]) for k in WEIGHTS}}


@register("glmc_maxnorm")
class GLMCMaxNorm(GLMC):
    defaults = {**GLMC.defaults, "maxnorm_thresh": 1.0}

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.register_buffer("maxnorm_bound", torch.tensor(math.inf))

    @torch.no_grad()
    def fit(self, data):
        norms = self.fc_cb.weight.norm(dim=1)
        self.maxnorm_bound.copy_(norms.min() + self.p["maxnorm_thresh"] * (norms.max() - norms.min()))

    @torch.no_grad()
    def after_step(self):
        norms = self.fc_cb.weight.norm(dim=1, keepdim=True)
        self.fc_cb.weight.mul_((self.maxnorm_bound / norms).clamp(max=1.0))
