"""Backbones by name. Each returns an nn.Module with `out_dim` mapping images to features."""
from ltbench.models import heads
from ltbench.models.resnet_bbn import ResNetBBNCifar
from ltbench.models.resnet_cifar import ResNetCifar

def torchvision_net(name):
    """ImageNet-size backbones (ResNet-50, ResNeXt-50 32x4d) from torchvision, randomly initialised
    as in the LT papers, with the final fc removed: the method owns its heads."""
    def make(in_channels):
        import torchvision
        from torch import nn
        net = getattr(torchvision.models, name)(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        net.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        return net
    return make


BACKBONES = {
    "resnet8": lambda c: ResNetCifar(1, 16, c),       # the demo preset's small sibling (75 k params)
    "resnet20": lambda c: ResNetCifar(3, 16, c),
    "resnet32": lambda c: ResNetCifar(5, 16, c),      # the LDAM-family standard (0.46 M params)
    "resnet32_w4": lambda c: ResNetCifar(5, 64, c),   # GLMC's wide "resnet32" (64/128/256)
    "resnet8_w4": lambda c: ResNetCifar(1, 64, c),    # its demo-sized sibling
    "resnet32_bbn": lambda c: ResNetBBNCifar(5, 16, c),   # BBN/TDE split last block, 128-d feature
    "resnet8_bbn": lambda c: ResNetBBNCifar(1, 16, c),    # its demo-sized sibling
    "resnet50": torchvision_net("resnet50"),
    "resnext50": torchvision_net("resnext50_32x4d"),
}


def create(name, in_channels=3):
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}: known backbones are {', '.join(BACKBONES)}")
    return BACKBONES[name](in_channels)


__all__ = ["BACKBONES", "create", "heads"]
