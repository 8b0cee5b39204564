"""SSP: self-supervised pre-training, then standard training from it (Yang & Xu 2020,
"Rethinking the value of labels for improving class-imbalanced learning"; YyzHarry/imbalanced-semi-self).

Two runs. `ssp_rotation` (YyzHarry/imbalanced-semi-self@920fe01:pretrain_rot.py) learns to
predict rotations on the long-tailed training images without their labels: each augmented image
of a batch is turned by k x 90 degrees, the k drawn as the first B entries of a shuffled
[0, 1, 2, 3] x (B // 4 + 1), and a 4-way linear head on the backbone feature is trained with CE.
`ssp` (@28e6258:train.py) starts from that backbone (the rotation head is dropped, as the
official loader drops `fc` keys) and trains a fresh linear classifier and the whole network with
plain softmax CE on instance-sampled batches, the README's "CE(Uniform) + SSP" default
(`--loss_type CE --train_rule None`).

Recipe, both stages (both scripts' defaults on CIFAR with `-a resnet32`; @1c4df99:utils.py):
200 epochs, batch 128, SGD lr 0.1, momentum 0.9, wd 2e-4, linear warm-up over 5 epochs, x0.01
after epoch 160. The official `adjust_learning_rate` tests `epoch > 160` before `epoch > 180`,
so its x1e-4 step never fires; that is mirrored (one milestone). train.py at 1c4df99 has batch
256 for stage 2; 28e6258 has 128, the pre-training's batch. Standard ResNet-32.
Deliberate deviation: the stage-2 classifier keeps PyTorch's default Linear init, as every
ltbench linear head does; the official net re-draws it Kaiming-normal with the rest of the model.

The rotation run's class-label evaluation scores a class head it never trains (chance level): the
run exists to initialise `ssp`. Its training-batch rotation accuracy is logged as `rot_acc`.
ImageNet-LT/iNat's MoCo pre-training is not provided.
"""
import torch
from torch import nn

from ltbench import losses
from ltbench.methods import register
from ltbench.methods.base import Method

SSP_CIFAR = dict(epochs=200, batch_size=128, lr=0.1, momentum=0.9, weight_decay=2e-4, schedule="step",
                 warmup_epochs=5, milestones=(160,), lr_factors=(0.01,))


def rotate_batch(x, generator):
    """(rotated x, k): image i turned by k_i quarter turns (torch.rot90 over H, W), k balanced per batch."""
    b = len(x)
    k = torch.arange(4, device=generator.device).repeat(b // 4 + 1)
    k = k[torch.randperm(len(k), generator=generator, device=generator.device)][:b].to(x.device)
    out = x.clone()
    for r in (1, 2, 3):
        out[k == r] = torch.rot90(x[k == r], r, (2, 3))
    return out, k


@register("ssp_rotation")
class SSPRotation(Method):
    recipes = {"cifar": SSP_CIFAR}

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.rot_head = nn.Linear(self.encoder.out_dim, 4)
        nn.init.kaiming_normal_(self.rot_head.weight)   # the official net applies this to every Linear
        self.hits, self.seen = 0, 0

    def start_epoch(self, epoch, epochs):
        self.hits, self.seen = 0, 0

    def loss(self, views, y, step):
        x, k = rotate_batch(views[0], step.generator)
        out = self.rot_head(self.encoder(x))
        self.hits = self.hits + (out.detach().argmax(1) == k).sum()
        self.seen += len(k)
        return losses.cross_entropy(out, k)

    def epoch_log(self):
        return {"rot_acc": 100.0 * float(self.hits) / max(self.seen, 1)}


@register("ssp")
class SSP(Method):
    stage1 = "ssp_rotation"
    recipes = {"cifar": SSP_CIFAR}

    def loss(self, views, y, step):
        return losses.cross_entropy(self(views[0]), y)
