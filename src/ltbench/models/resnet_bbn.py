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

from ltbench.models.resnet_cifar import BasicBlock


class ResNetBBNCifar(nn.Module):
    def __init__(self, blocks_per_stage, width=16, in_channels=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            shared = blocks_per_stage - 1 if i == 2 else blocks_per_stage
            for j in range(shared):
                layers.append(BasicBlock(cin, cout, 2 if i > 0 and j == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        stride = 1 if cin == 4 * width else 2
        self.cb_block = BasicBlock(cin, 4 * width, stride)
        self.rb_block = BasicBlock(cin, 4 * width, stride)
        self.branch_dim = 4 * width
        self.out_dim = 2 * self.branch_dim
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

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
