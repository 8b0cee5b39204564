"""Cutout (DeVries & Taylor 2017) on uint8 batches: one square hole per image, zeroed.

As LeapLabTHU/ProCo@af9e78e:ProCo_cifar/autoaug.py `Cutout(n_holes=1, length=16)`: the centre is
uniform over all pixels, the hole spans rows [cy - length//2, cy + length//2) (likewise columns),
clipped at the border. The official code zeroes the float image after ToTensor and before
Normalize; a zero there is a zero here, so normalising afterwards gives the same tensor.
"""
from __future__ import annotations

import torch


def sample_centres(b, height, width, generator):
    """Hole centres (cy, cx), each uniform over the rows / columns, one pair per image."""
    dev = generator.device
    cy = torch.randint(height, (b,), generator=generator, device=dev)
    cx = torch.randint(width, (b,), generator=generator, device=dev)
    return cy, cx


def cutout(x, cy, cx, length=16):
    """Zero a length x length square centred at (cy, cx) in each image, clipped at the border."""
    _, _, h, w = x.shape
    half = length // 2
    cy, cx = cy.to(x.device).view(-1, 1), cx.to(x.device).view(-1, 1)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= (cy - half).clamp(0, h)) & (rows < (cy + half).clamp(0, h))
    in_cols = (cols >= (cx - half).clamp(0, w)) & (cols < (cx + half).clamp(0, w))
    hole = in_rows.unsqueeze(2) & in_cols.unsqueeze(1)
    return x.masked_fill(hole.unsqueeze(1), 0)


def random_cutout(x, generator, length=16):
    """Cutout with a fresh centre per image drawn from `generator`."""
    return cutout(x, *sample_centres(x.shape[0], x.shape[2], x.shape[3], generator), length)
