"""Every augmentation view by name: fn(x_uint8 (B, C, H, W), generator, cfg) -> uint8 batch of the
same shape, computed on the batch's device with per-image randomness from `generator` (on that
device). Methods list the names they need in `Method.views`; the trainer normalises each result.

- standard: RandomCrop(pad cfg.padding) + flip (kaidic/LDAM-DRW@2536330:cifar_train.py).
- plain: the images unchanged.
- autoaugment_cutout: crop + flip, CIFAR10Policy, Cutout 16 - the strong branch of
  LeapLabTHU/ProCo@af9e78e:ProCo_cifar/main.py and BALMS's CIFAR pipeline.
- simaugment: RandomResizedCrop scale (0.08, 1), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) p = 0.8,
  grayscale p = 0.2 (ProCo's contrastive views).
- simaugment_s02: the same with scale (0.2, 1) (LTH14/targeted-supcon@c4f15eb:
  cifar_dirty/main_supcon_imba.py and the BCL-derived CIFAR repos, without their blur).
- standard_gray: crop + flip + grayscale p = 0.2 (Hybrid-SC, as the paper describes it).
"""
from __future__ import annotations

from ltbench.data import augment
from ltbench.data.autoaugment import cifar10_policy
from ltbench.data.cutout import random_cutout
from ltbench.data.simaugment import random_grayscale, simaugment


def autoaugment_cutout(x, generator, cfg):
    x = augment.random_crop_flip(x, generator, cfg.padding)
    return random_cutout(cifar10_policy(x, generator), generator, length=16)


def standard_gray(x, generator, cfg):
    return random_grayscale(augment.random_crop_flip(x, generator, cfg.padding), generator, p=0.2)


class _Registry(dict):
    def __missing__(self, name):
        raise ValueError(f"unknown augmentation view {name!r} (a method's `views`); "
                         f"known: {', '.join(self)}; add new ones to ltbench.data.views.VIEWS")


VIEWS = _Registry({
    **augment.VIEWS,
    "autoaugment_cutout": autoaugment_cutout,
    "simaugment": lambda x, generator, cfg: simaugment(x, generator, scale=(0.08, 1.0)),
    "simaugment_s02": lambda x, generator, cfg: simaugment(x, generator, scale=(0.2, 1.0)),
    "standard_gray": standard_gray,
})
