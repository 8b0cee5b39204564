"""Augmentation of whole uint8 batches on the batch's device, with per-image randomness.

The "standard" CIFAR view is RandomCrop(32, padding=4) then RandomHorizontalFlip, as in
kaidic/LDAM-DRW@2536330:cifar_train.py, done here as one gather over the batch instead of
per-image PIL calls. A view is a function (x_uint8, generator, cfg) -> uint8 batch, found by
name in `VIEWS`; methods list the views they need.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip_with_params(x, dy, dx, flip, padding):
    """Zero-pad each image by `padding`, crop HxW at row dy / column dx of the padded image,
    then mirror left-right where `flip` is true. dy, dx, flip: one entry per image."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dev = x.device
    rows = dy.to(dev).view(b, 1) + torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev).expand(b, w)
    cols = torch.where(flip.to(dev).view(b, 1), w - 1 - cols, cols) + dx.to(dev).view(b, 1)
    batch = torch.arange(b, device=dev).view(b, 1, 1, 1)
    channel = torch.arange(x.shape[1], device=dev).view(1, -1, 1, 1)
    return padded[batch, channel, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def random_crop_flip(x, generator, padding=4):
    """Random crop with zero padding and a horizontal flip with p = 0.5, independently per image.
    Offsets are uniform over 0..2*padding; randomness comes from `generator` on its own device."""
    b = x.shape[0]
    dev = generator.device
    dy = torch.randint(2 * padding + 1, (b,), generator=generator, device=dev)
    dx = torch.randint(2 * padding + 1, (b,), generator=generator, device=dev)
    flip = torch.rand(b, generator=generator, device=dev) < 0.5
    return crop_flip_with_params(x, dy, dx, flip, padding)


def normalize(x, mean, std):
    """uint8 batch -> float32 (x/255 - mean) / std, with per-channel mean/std on the [0, 1] scale."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255 - mean) / std


VIEWS = {
    "standard": lambda x, generator, cfg: random_crop_flip(x, generator, cfg.padding),
    "plain": lambda x, generator, cfg: x,
}
