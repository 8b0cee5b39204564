"""DisAlign: distribution alignment on a frozen stage-1 model (Zhang et al., CVPR 2021;
Megvii-BaseDetection/DisAlign@ead1da2:classification/imagenetlt/resnext50/
resx50.scratch.imagenet_lt.224size.90e.disalign.10e/{net.py,config.py}, whose layer and loss live in
Megvii-BaseDetection/cvpods@9627788:cvpods/layers/wrappers.py (`DisAlignLinear`,
`DisAlignNormalizedLinear`) and cvpods@2deea5d:cvpods/modeling/losses/grw_loss.py).

Adaptive calibration: with z = W x + b the frozen stage-1 logits and sigma(x) = sigmoid(v . x + c) a
learned confidence of the feature, the calibrated logits are
    s_k(x) = (1 + sigma(x) alpha_k) z_k + sigma(x) beta_k,
alpha initialised to 1, beta to 0, v to the constant 0.1 and c as nn.Linear does. Only alpha, beta,
v and c train; backbone and W, b are frozen (backbone in eval mode, see `decoupling`). On a cosine
stage-1 head the confidence reads the L2-normalised feature, as `DisAlignNormalizedLinear` does.

Generalized re-weighting: the loss aligns the calibrated prediction with the reference distribution
re-weighted by w_k = (1 / pi_k)^rho, normalised so that sum_k w_k = C; with one-hot targets that is
the weighted cross-entropy sum_i w_{y_i} CE_i / sum_i w_{y_i} (PyTorch's weighted mean, as the
official loss calls it). rho = 1.2 is the official ImageNet-LT `GRW_SCALE`; sampling stays
instance-balanced (the re-weighting replaces re-sampling).

Recipes: ImageNet-LT as the official config (10 epochs, SGD lr 0.1 momentum 0.9, wd 5e-4, batch 256,
cosine to 0, no warm-up). CIFAR is a pipeline choice (the paper has no CIFAR runs): stage 1 = `ce`,
stage 2 the ImageNet-LT recipe with lr scaled linearly to 0.05 at CIFAR's batch 128.
Deliberate deviation: the official base config leaves the backbone's BatchNorm in train mode
(`FREEZE_AT=-1`, `NORM="BN"`) while its parameters are frozen, so its running statistics follow the
stage-2 stream; ltbench freezes them with the rest of the backbone.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ltbench import losses
from ltbench.methods import register
from ltbench.methods.decoupling import Stage1Head, Stage2

DISALIGN_IMAGENET = dict(epochs=10, batch_size=256, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                         warmup_epochs=0)
DISALIGN_CIFAR = dict(DISALIGN_IMAGENET, batch_size=128, lr=0.05)


def grw_weights(counts, rho):
    """Generalized re-weighting: (1 / pi_k)^rho, normalised to sum to C."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    w = (n / n.sum()).pow(-rho)
    return w / w.sum() * len(n)


def calibrate(z, sigma, alpha, beta):
    """(1 + sigma alpha_k) z_k + sigma beta_k; sigma is B x 1."""
    return (1 + sigma * alpha) * z + sigma * beta


@register("disalign")
class DisAlign(Stage2):
    defaults = {"cosine_scale": 30.0, "rho": 1.2}
    recipes = {"cifar": DISALIGN_CIFAR, "imagenet": DISALIGN_IMAGENET}

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        d, c = self.encoder.out_dim, info.num_classes
        self.fc = Stage1Head(d, c).requires_grad_(False)
        self.confidence = nn.Linear(d, 1)
        nn.init.constant_(self.confidence.weight, 0.1)
        self.alpha = nn.Parameter(torch.ones(c))
        self.beta = nn.Parameter(torch.zeros(c))
        self.register_buffer("weight", grw_weights(info.counts, self.p["rho"]).float(), persistent=False)

    def load_stage1(self, state_dict):
        super().load_stage1(state_dict)
        self.fc.load(state_dict, self.p["cosine_scale"], self.name)

    def forward(self, x):
        g = self.fc.inputs(self.features(x))
        z = F.linear(g, self.fc.weight, self.fc.bias)
        return calibrate(z, torch.sigmoid(self.confidence(g)), self.alpha, self.beta)

    def loss(self, views, y, step):
        return losses.cross_entropy(self(views[0]), y, weight=self.weight)
