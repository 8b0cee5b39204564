"""ProCo, probabilistic contrastive learning (Du et al., TPAMI 2024; LeapLabTHU/ProCo@af9e78e:
ProCo_cifar/main.py, ProCo_cifar/loss/proco.py, ProCo_cifar/models/resnet_cifar.py).

Views and network as BCL's (`ClassifierAndHead`): v1 (AutoAugment + Cutout) -> classifier,
v2 and v3 (SimAugment, RandomResizedCrop scale (0.08, 1)) -> head 64 -> 512 -> BN -> ReLU -> 128,
L2-normalised, one encoder pass over all 3B images. Head and classifier keep PyTorch's default
init, as the official `Model` does. Each class's head features are modelled as a vMF whose
running estimate lives in `ltbench.vmf.ProCoState` (buffers, so a resume is exact); the
contrastive logits s(z) are the closed-form expected SupCon logits against those estimates:

    L = LA-CE(eta(v1), y) + alpha * 1/2 [ LA-CE(s(z2), y) + LA-CE(s(z3), y) ]

alpha = 1, temperature 0.1. The state is called on v2 then v3, as the official loop does, so
each call folds its batch into both estimators before reading the `old` one. At every epoch
start (the first included) `old` takes over `new` and `new` restarts from a random draw; that
draw uses a generator seeded from (seed, epoch), so a resumed run redraws it identically.
Inference uses the raw classifier logits.

CIFAR (sh/ProCo_CIFAR.sh and main.py defaults): batch 256 on one GPU, drop_last, SGD lr 0.3,
wd 2e-4, 200 epochs, warm-up 5, x0.1 after 160 and 180. ImageNet-LT / iNat (sh/*.sh, ProCo/main.py):
cosine classifier s = 30, head d -> d -> BN -> ReLU -> 1024, 90 epochs, batch 256, cosine without
warm-up, lr 0.1 / wd 5e-4 (ImageNet-LT) and lr 0.2 / wd 1e-4 (iNat); their temperature 0.07 is
not the default here: set it with a config variant.

Deliberate deviations: Bessel functions by the Debye expansion instead of the official Miller
recurrence (see ltbench.vmf); estimators in float64; one process, so no all-gather; the
large-scale cosine is ltbench's per-epoch cosine from the full rate.
"""
import numpy as np
import torch

from ltbench import losses
from ltbench.methods import register
from ltbench.methods.bcl import CONTRASTIVE_CIFAR, ClassifierAndHead
from ltbench.vmf import ProCoState


def seeded_generator(*key):
    """A CPU generator seeded from non-negative integers, on a stream of its own: NumPy's
    SeedSequence keeps it apart from the trainer's generators seeded from (seed, epoch)."""
    state = np.random.SeedSequence(key).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


@register("proco")
class ProCo(ClassifierAndHead):
    views = ("autoaugment_cutout", "simaugment", "simaugment")
    defaults = {"alpha": 1.0, "temperature": 0.1}
    recipes = {
        "cifar": dict(CONTRASTIVE_CIFAR, lr=0.3, weight_decay=2e-4, drop_last=True),
        "imagenet": dict(epochs=90, batch_size=256, lr=0.1, momentum=0.9, weight_decay=5e-4,
                         schedule="cosine", warmup_epochs=0, drop_last=True),
        "inat": dict(epochs=90, batch_size=256, lr=0.2, momentum=0.9, weight_decay=1e-4,
                     schedule="cosine", warmup_epochs=0, drop_last=True),
    }

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.state = ProCoState(info.num_classes, self.head[-1].out_features, seeded_generator(cfg.seed))

    def start_epoch(self, epoch, epochs):
        self.state.start_epoch(seeded_generator(self.cfg.seed, epoch))

    def loss(self, views, y, step):
        logits, z2, z3 = self.branches(views)
        tau = self.p["temperature"]
        s2 = self.state(z2, y, tau)
        s3 = self.state(z3, y, tau)
        ce = losses.logit_adjusted(logits, y, self.counts)
        scl = 0.5 * (losses.logit_adjusted(s2, y, self.counts) + losses.logit_adjusted(s3, y, self.counts))
        return ce + self.p["alpha"] * scl
