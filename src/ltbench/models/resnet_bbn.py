"""The split-block CIFAR ResNet of BBN, also the backbone of causal TDE on CIFAR.

As Megvii-Nanjing/BBN@7992e90:lib/backbone/resnet_cifar.py (`BBN_ResNet_Cifar`) and
KaihuaTang/Long-Tailed-Recognition.pytorch@5c916d0:classification/models/ResNet32Feature.py:
the CIFAR ResNet of `resnet_cifar.py` (option-A shortcuts, Kaiming-normal init) whose last
stage keeps n - 1 shared blocks, followed by two parallel blocks, `cb_block` (conventional
branch) and `rb_block` (re-balancing branch). Each branch is pooled on its own; the feature
is the concatenation [GAP(cb_block(h)), GAP(rb_block(h))], so resnet32_bbn (n = 5) has a
128-d feature and about 0.54 M parameters (one 64-wide block more than resnet32).

With n = 1 (resnet8_bbn, the demo's small sibling) the stage has no shared block and the two
branch blocks carry the stride-2 widening themselves.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ltbench.models.resnet_cifar import BasicBlock, build_stages, kaiming_init


class ResNetBBNCifar(nn.Module):
    def __init__(self, blocks_per_stage, width=16, in_channels=3):
        super().__init__()
        n = blocks_per_stage
        cin = build_stages(self, (n, n, n - 1), width, in_channels)
        stride = 1 if cin == 4 * width else 2
        self.cb_block = BasicBlock(cin, 4 * width, stride)
        self.rb_block = BasicBlock(cin, 4 * width, stride)
        self.branch_dim = 4 * width
        self.out_dim = 2 * self.branch_dim
        kaiming_init(self)

    def trunk(self, x):
        """The shared layers: images -> the feature map both branches start from."""
        return self.layers(F.relu(self.bn1(self.conv1(x))))

    @staticmethod
    def pooled(h, block):
        """One branch's feature: `block` on the trunk's map, then global average pooling."""
        return F.adaptive_avg_pool2d(block(h), 1).flatten(1)

    def forward(self, x):
        h = self.trunk(x)
        return torch.cat([self.pooled(h, self.cb_block), self.pooled(h, self.rb_block)], 1)
