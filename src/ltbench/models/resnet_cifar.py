"""CIFAR ResNets with option-A shortcuts (He et al. 2016, §4.2).

As in kaidic/LDAM-DRW@2536330:models/resnet_cifar.py: 3x3 stem of w channels, three stages of n
BasicBlocks at widths w, 2w, 4w with strides 1, 2, 2, zero-padded subsampled identity shortcuts,
global average pooling, Kaiming-normal init. resnet32 (n=5, w=16) has 0.46 M parameters.
GLMC's "resnet32" is the same net at w=64 (ynu-yangpeng/GLMC@2c0261c:model/ResNet_cifar.py), a
separate backbone name here because it has ~16x the parameters.
"""
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if stride != 1 or cin != cout else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # option A: subsample and zero-pad the channels, no parameters
        sc = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + sc)


def build_stages(net, blocks, width, in_channels):
    """Give `net` the 3x3 stem (conv1, bn1) and three stages (`layers`) of blocks[i] BasicBlocks at
    widths w, 2w, 4w, strides 1, 2, 2; return the channel count at the end."""
    net.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    layers, cin = [], width
    for i, (cout, n) in enumerate(zip((width, 2 * width, 4 * width), blocks)):
        for j in range(n):
            layers.append(BasicBlock(cin, cout, 2 if i > 0 and j == 0 else 1))
            cin = cout
    net.layers = nn.Sequential(*layers)
    return cin


def kaiming_init(net):
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)


class ResNetCifar(nn.Module):
    def __init__(self, blocks_per_stage, width=16, in_channels=3):
        super().__init__()
        self.out_dim = build_stages(self, (blocks_per_stage,) * 3, width, in_channels)
        kaiming_init(self)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)
