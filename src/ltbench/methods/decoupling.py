"""Decoupled classifier learning: cRT, LWS, tau-norm, NCM (Kang et al., ICLR 2020;
facebookresearch/classifier-balancing@f162ade, spec §3.6).

Stage 1 is the final checkpoint of a one-stage run (`ce`, instance sampling; `crt@ldam_drw` names
another). Stage 2 freezes the backbone and keeps it in eval mode, so neither its weights nor its BN
running statistics move (spec §3.6 (3)). The official code freezes the parameters but calls
`model.train()` on every network each epoch (run_networks.py), so its BN statistics drift on the
class-aware stream; ltbench does not reproduce that drift.

- cRT (`config/ImageNet_LT/cls_crt.yaml`, models/DotProductClassifier.py): a re-initialised linear
  classifier with bias (PyTorch's default nn.Linear init, as there), CE, class-aware sampling (4
  images per class visit).
- LWS (`cls_lws.yaml`, models/TauNormClassifier.py): the stage-1 W and b frozen, one learnable
  scale f_k per class (init 1) on the whole output, f_k (w_k . x + b_k); CE, class-aware sampling.
  As in the official config the weight decay also pulls on f_k.
- tau-norm (tau_norm.py): no training; w_k / |w_k|^tau with the bias dropped, tau swept over
  0, 0.1, ..., 2.0 and chosen here on the balanced validation split (not test; iNat below) by
  class-mean accuracy, the first best on ties. `tau: <number>` fixes it instead. The sweep is logged as
  MLflow metrics `tau` and `val_top1_tau<t>` (step 0) and printed to the run log.
- NCM (models/KNNClassifier.py, run_networks.py:get_knncentroids): features of the un-augmented
  training images are centred by their mean and L2-normalised (the official default `cl2n`); the
  class means of those are the prototypes; logits are the cosine to each mean (`metric: cosine`,
  the paper's rule) or minus the squared Euclidean distance (`metric: euclidean`, the official
  `l2`). The official `cos` option divides an un-normalised dot product by the feature dimension;
  ltbench uses the true cosine. NCM's "logits" are similarities, so its NLL/ECE mean little.

CIFAR recipes are a pipeline choice (the paper has none, spec §3.6 (3)): cls_crt's SGD momentum
0.9, wd 5e-4, cosine to 0 without warm-up, with its lr 0.2 at batch 512 scaled linearly to 0.05 at
CIFAR's batch 128; 10 epochs for cRT, 5 for LWS as in cls_lws. ImageNet-LT and iNat use the official
configs (iNat: 30 / 5 epochs, wd 1e-4). iNat has no validation split (its val is its test, spec §1.4):
tau-norm then sweeps on it, as the authors did (issue facebookresearch/classifier-balancing#5), and
says so in the run log.
The official scheduler is stepped before each epoch, so its first epoch already runs at the cosine's
second value; ltbench's first epoch runs at the base lr.

Stage-1 heads: a linear head (`fc.weight` C x d, `fc.bias`) is used as it is. A cosine head
(`fc.weight` d x C, no bias; LDAM, BCL) is the linear map W = s w_k/|w_k| on the L2-normalised
feature with b = 0, s = `cosine_scale` (30: LDAM's loss scale, BCL/ProCo's layer scale). So LWS on
it learns f_k s cos(x, w_k), and tau-norm on it is a no-op on predictions (every row has norm s: the
sweep is flat and the first tau, 0, is kept). cRT ignores the stage-1 head and trains a fresh
linear one on the raw feature; NCM uses the backbone only.

The stage-2 backbone must be the stage-1 backbone (set `backbone` alike for both runs).
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltbench import losses
from ltbench.methods import register
from ltbench.methods.base import Method

CRT_CIFAR = dict(epochs=10, batch_size=128, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                 warmup_epochs=0)
CRT_IMAGENET = dict(CRT_CIFAR, batch_size=512, lr=0.2)
CRT_INAT = dict(CRT_IMAGENET, epochs=30, weight_decay=1e-4)
LWS_CIFAR = dict(CRT_CIFAR, epochs=5)
LWS_IMAGENET = dict(CRT_IMAGENET, epochs=5)
LWS_INAT = dict(CRT_INAT, epochs=5)
TRAINING_FREE = dict(epochs=0, warmup_epochs=0)
TAUS = tuple(round(0.1 * i, 1) for i in range(21))


class Stage1Head(nn.Module):
    """The stage-1 classifier as a linear map of the (optionally L2-normalised) feature.

    `cosine` is a buffer so a resumed or re-evaluated checkpoint knows which form it holds.
    """

    def __init__(self, in_dim, num_classes):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_classes, in_dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("cosine", torch.tensor(False))

    def load(self, state_dict, cosine_scale, method):
        if "fc.weight" not in state_dict:
            raise ValueError(f"{method}: the stage-1 checkpoint has no classifier `fc.weight`; use a stage 1 with "
                             f"a linear or cosine `fc` head (ce, mixup, ldam_drw, ...), or crt/ncm, which need none")
        w = state_dict["fc.weight"]
        cosine = "fc.bias" not in state_dict
        w = cosine_scale * F.normalize(w.t().float(), dim=1) if cosine else w
        if w.shape != self.weight.shape:
            raise ValueError(f"{method}: the stage-1 classifier maps {w.shape[1]} features to {w.shape[0]} classes, "
                             f"this run has {self.weight.shape[1]} and {self.weight.shape[0]}: use the stage-1 "
                             f"backbone and dataset")
        with torch.no_grad():
            self.weight.copy_(w)
            self.bias.copy_(torch.zeros_like(self.bias) if cosine else state_dict["fc.bias"])
            self.cosine.fill_(cosine)

    def inputs(self, feature):
        return F.normalize(feature, dim=1) if self.cosine else feature

    def forward(self, feature):
        return F.linear(self.inputs(feature), self.weight, self.bias)


class Stage2(Method):
    """A classifier learned on a frozen stage-1 backbone; only parameters with requires_grad train."""
    stage1 = "ce"

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode=True):
        super().train(mode)
        self.encoder.train(False)
        return self

    def load_stage1(self, state_dict):
        try:
            super().load_stage1(state_dict)
        except RuntimeError as err:
            raise ValueError(f"{self.name}: the stage-1 backbone does not fit backbone={self.cfg.backbone!r}; "
                             f"run stage 2 with the stage-1 backbone ({str(err).splitlines()[0]})") from None

    def features(self, x):
        with torch.no_grad():
            return self.encoder(x)

    def forward(self, x):
        return self.fc(self.features(x))

    def param_groups(self):
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def encode(self, data, x):
        """Frozen-backbone features of un-augmented uint8 images `x`, in eval mode."""
        was = self.encoder.training
        self.encoder.eval()
        bs = self.cfg.eval_batch_size
        with torch.no_grad():
            out = torch.cat([self.encoder(data.normalize(x[i:i + bs])) for i in range(0, len(x), bs)])
        self.encoder.train(was)
        return out


@register("crt")
class CRT(Stage2):
    sampler = "class_balanced"
    recipes = {"cifar": CRT_CIFAR, "imagenet": CRT_IMAGENET, "inat": CRT_INAT}

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.fc = nn.Linear(self.encoder.out_dim, info.num_classes)

    def loss(self, views, y, step):
        return losses.cross_entropy(self(views[0]), y)


@register("lws")
class LWS(Stage2):
    sampler = "class_balanced"
    defaults = {"cosine_scale": 30.0}
    recipes = {"cifar": LWS_CIFAR, "imagenet": LWS_IMAGENET, "inat": LWS_INAT}

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.fc = Stage1Head(self.encoder.out_dim, info.num_classes).requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(info.num_classes))

    def load_stage1(self, state_dict):
        super().load_stage1(state_dict)
        self.fc.load(state_dict, self.p["cosine_scale"], self.name)

    def forward(self, x):
        return self.scale * self.fc(self.features(x))

    def loss(self, views, y, step):
        return losses.cross_entropy(self(views[0]), y)


def tau_normalized(weight, tau):
    """Rows w_k / |w_k|^tau."""
    return weight / weight.norm(dim=1, keepdim=True).pow(tau)


def class_mean_accuracy(logits, y, num_classes):
    hit = (logits.argmax(1) == y).double()
    return float(100 * torch.stack([hit[y == k].mean() for k in range(num_classes) if (y == k).any()]).mean())


@register("tau_norm")
class TauNorm(Stage2):
    defaults = {"cosine_scale": 30.0, "tau": None}
    recipes = {"cifar": TRAINING_FREE, "imagenet": TRAINING_FREE, "inat": TRAINING_FREE}

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.fc = Stage1Head(self.encoder.out_dim, info.num_classes).requires_grad_(False)
        self.register_buffer("tau", torch.tensor(0.0))
        self.register_buffer("val_curve", torch.full((len(TAUS),), float("nan")))

    def load_stage1(self, state_dict):
        super().load_stage1(state_dict)
        self.fc.load(state_dict, self.p["cosine_scale"], self.name)

    def forward(self, x):
        return self.fc.inputs(self.features(x)) @ tau_normalized(self.fc.weight, self.tau).t()

    def fit(self, data):
        if self.p["tau"] is not None:
            self.tau.fill_(float(self.p["tau"]))
            return
        if len(data.val_y) == 0:
            raise ValueError("tau_norm chooses tau on the validation split, which is empty: set val_per_class > 0 "
                             "for this dataset in config.yaml, or fix tau with `tau: <number>`")
        f = self.fc.inputs(self.encode(data, data.val_x))
        curve = [class_mean_accuracy(f @ tau_normalized(self.fc.weight, t).t(), data.val_y, self.info.num_classes)
                 for t in TAUS]
        self.val_curve.copy_(torch.tensor(curve))
        self.tau.fill_(TAUS[int(np.argmax(curve))])
        split = "val (= test: this dataset has no separate validation split)" if data.val_is_test else "val"
        print(f"# tau-norm sweep on {split}: " + " ".join(f"{t:.1f}:{a:.2f}" for t, a in zip(TAUS, curve))
              + f" -> tau {float(self.tau):.1f}", flush=True)

    def epoch_log(self):
        sweep = {f"val_top1_tau{t:.1f}": float(a) for t, a in zip(TAUS, self.val_curve) if a == a}
        return {"tau": float(self.tau), **sweep}


@register("ncm")
class NCM(Stage2):
    defaults = {"metric": "cosine"}
    recipes = {"cifar": TRAINING_FREE, "imagenet": TRAINING_FREE, "inat": TRAINING_FREE}

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        if self.p["metric"] not in ("cosine", "euclidean"):
            raise ValueError(f"ncm: metric {self.p['metric']!r} is not known; use cosine or euclidean")
        del self.fc
        d = self.encoder.out_dim
        self.register_buffer("feat_mean", torch.zeros(d))
        self.register_buffer("means", torch.zeros(info.num_classes, d))

    def centred(self, feature):
        return F.normalize(feature - self.feat_mean, dim=1)

    def fit(self, data):
        f = self.encode(data, data.train_x)
        self.feat_mean.copy_(f.mean(0))
        g = self.centred(f)
        self.means.copy_(torch.stack([g[data.train_y == k].mean(0) for k in range(self.info.num_classes)]))

    def forward(self, x):
        g = self.centred(self.features(x))
        if self.p["metric"] == "cosine":
            return g @ F.normalize(self.means, dim=1).t()
        return -torch.cdist(g, self.means).pow(2)
