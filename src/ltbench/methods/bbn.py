"""BBN: bilateral-branch network with cumulative learning (Zhou et al. 2020; Megvii-Nanjing/BBN@7992e90).

Every step sees two batches: the conventional branch an instance-sampled batch (x_c, y_c), the
re-balancing branch a batch from the reversed sampler (class k with probability proportional to
n_max / n_k, then an image uniformly within it; `lib/dataset/imbalance_cifar.py`). Both pass the
shared trunk of the split-block ResNet separately (`resnet32_bbn`, `ltbench.models.resnet_bbn`);
f_c is pooled from `cb_block`, f_r from `rb_block`. With alpha = 1 - ((T - 1) / T_div)^2, T the
1-indexed epoch, one linear classifier with bias sees [2 alpha f_c, 2 (1 - alpha) f_r] and the loss
is alpha CE(out, y_c) + (1 - alpha) CE(out, y_r) (`lib/core/combiner.py:bbn_mix`). T_div is the
number of epochs, except 100 (epochs // 100 + 1) for 90 or 180 epochs, as `Combiner` sets it.
At test time both branches run on the same image and the classifier sees [f_c, f_r] unscaled
(`lib/core/function.py:valid_model`), the training input at alpha = 1/2.

Recipe (`configs/cifar10.yaml`, `lib/utils/utils.py`, `lib/utils/lr_scheduler.py`): 200 epochs,
batch 128 with the last partial batch dropped, SGD lr 0.1 with Nesterov momentum 0.9, wd 2e-4.
`WarmupMultiStepLR` is stepped before each epoch, so 1-indexed epoch e trains at
0.1 x 0.01^#{m in (120, 160): m <= e}: 1e-3 from epoch 120 and 1e-5 from epoch 160, which are
milestones (119, 159) in ltbench's `e > m` rule.
Deliberate deviation: its warm-up is linear from lr/3 (lr (1/3 + 2e/15) for e < 5); ltbench's
trainer warms up linearly from 0 (lr e/5), so epochs 1-4 train at 0.02-0.08 instead of 0.047-0.087.
"""
import torch

from ltbench import losses
from ltbench.methods import register
from ltbench.methods.base import Method

BBN_CIFAR = dict(epochs=200, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=2e-4,
                 schedule="step", warmup_epochs=5, milestones=(119, 159), lr_factors=(0.01, 1e-4),
                 drop_last=True, backbone="resnet32_bbn")


def cumulative_alpha(epoch, epochs):
    """BBN's parabolic decay, epoch 1-indexed; T_div has the official 90/180-epoch exception."""
    div = 100 * (epochs // 100 + 1) if epochs in (90, 180) else epochs
    return 1.0 - ((epoch - 1) / div) ** 2


def bbn_mix_loss(classifier, f_c, f_r, y_c, y_r, alpha):
    """alpha CE(W [2 alpha f_c, 2 (1 - alpha) f_r] + b, y_c) + (1 - alpha) CE(same logits, y_r)."""
    out = classifier(2 * torch.cat([alpha * f_c, (1 - alpha) * f_r], 1))
    return alpha * losses.cross_entropy(out, y_c) + (1 - alpha) * losses.cross_entropy(out, y_r)


@register("bbn")
class BBN(Method):
    paired_sampler = "reversed"
    recipes = {"cifar": BBN_CIFAR}

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        if not hasattr(self.encoder, "cb_block"):
            raise ValueError(f"bbn needs a split-block backbone, got {cfg.backbone!r}: "
                             "set backbone=resnet32_bbn (or resnet8_bbn for a small run)")
        self.alpha = 1.0

    def start_epoch(self, epoch, epochs):
        self.alpha = cumulative_alpha(epoch + 1, epochs)

    def loss(self, views, y, step):
        views_r, y_r = step.paired
        alpha = cumulative_alpha(step.epoch + 1, step.epochs)
        enc = self.encoder
        f_c = enc.pooled(enc.trunk(views[0]), enc.cb_block)
        f_r = enc.pooled(enc.trunk(views_r[0]), enc.rb_block)
        return bbn_mix_loss(self.fc, f_c, f_r, y, y_r, alpha)

    def epoch_log(self):
        return {"alpha": self.alpha}
