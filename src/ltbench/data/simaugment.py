"""SimAugment on uint8 batches: RandomResizedCrop, flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with
p = 0.8, RandomGrayscale(p = 0.2), every draw per image, no loop over images.

Sources: LeapLabTHU/ProCo@af9e78e:ProCo_cifar/main.py `augmentation_sim_cifar` (crop scale
(0.08, 1), torchvision's default) and LTH14/targeted-supcon@c4f15eb:cifar_dirty/main_supcon_imba.py
(scale (0.2, 1)). Both run torchvision on PIL images, and every step here gives that path's
output bit for bit: the crop boxes are distributed as `RandomResizedCrop.get_params` (10 tries,
then the central fallback), the crop is resized with Pillow's own fixed-point bilinear filter
(a crop never exceeds the image, so this is always an up-scale and antialiasing never applies),
and the colour operations are `pil_ops`'s. torchvision's tensor `resized_crop` (and a plain
bilinear `grid_sample`) round differently and are one level off on about 1 pixel in 6.
"""
from __future__ import annotations

import functools
import math

import torch

from ltbench.data import pil_ops

RATIO = (3 / 4, 4 / 3)
_PRECISION = 22          # Pillow Resample.c PRECISION_BITS for 8-bit images
JITTER = (pil_ops.brightness, pil_ops.contrast, pil_ops.saturation, pil_ops.hue)


def crop_params(b, height, width, scale, ratio, generator, tries=10):
    """Boxes (top, left, h, w), one per image, distributed as RandomResizedCrop.get_params: the
    first of `tries` (area fraction, log aspect ratio) draws whose rounded box fits, else the
    central fallback box."""
    dev = generator.device
    area = torch.rand(b, tries, generator=generator, device=dev) * (scale[1] - scale[0]) + scale[0]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.rand(b, tries, generator=generator, device=dev) * (log_hi - log_lo) + log_lo)
    target = area.to(torch.float64) * (height * width)
    aspect = aspect.to(torch.float64)
    w = torch.round(torch.sqrt(target * aspect)).to(torch.int64)
    h = torch.round(torch.sqrt(target / aspect)).to(torch.int64)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    fall_h, fall_w = _fallback(height, width, ratio)
    h = torch.where(found, h.gather(1, first).squeeze(1), fall_h)
    w = torch.where(found, w.gather(1, first).squeeze(1), fall_w)
    u = torch.rand(b, 2, generator=generator, device=dev, dtype=torch.float64)
    top = torch.where(found, (u[:, 0] * (height - h + 1)).floor().to(torch.int64), (height - h) // 2)
    left = torch.where(found, (u[:, 1] * (width - w + 1)).floor().to(torch.int64), (width - w) // 2)
    return top, left, h, w


def _fallback(height, width, ratio):
    in_ratio = width / height
    if in_ratio < min(ratio):
        return round(width / min(ratio)), width
    if in_ratio > max(ratio):
        return height, round(height * max(ratio))
    return height, width


def _bilinear_taps(start, size, out):
    """Pillow's bilinear coefficients (Resample.c precompute_coeffs + normalize_coeffs_8bpc) for
    resizing `size` input pixels starting at `start` to `out` pixels, one table per image, for
    size <= out. An up-scale has support 1: Pillow reserves 3 taps but the third always gets weight
    0, so 2 are kept. Returns the source index (B, out, 2) and 22-bit fixed-point weight (B, out, 2)."""
    dev = size.device
    size = size.to(torch.float64).view(-1, 1, 1)
    scale = pil_ops.exact_div(size, out)
    centre = (torch.arange(out, device=dev, dtype=torch.float64).view(1, -1, 1) + 0.5) * scale
    first = (centre - 1.0 + 0.5).trunc().clamp(min=0)
    count = torch.minimum((centre + 1.0 + 0.5).trunc(), size) - first
    taps = torch.arange(2, device=dev, dtype=torch.float64)
    weight = (1.0 - ((taps + first) - centre + 0.5).abs()).clamp(min=0)
    weight = torch.where(taps < count, weight, 0.0)
    weight = weight / (weight[..., 0] + weight[..., 1]).unsqueeze(-1)
    fixed = torch.floor(0.5 + weight * (1 << _PRECISION)).to(torch.int32)
    index = torch.minimum(taps + first, size - 1).to(torch.int64) + start.to(dev).view(-1, 1, 1)
    return index, fixed


def _resample(v, index, weight, dim):
    """One Pillow resampling pass along `dim` (2: rows, 3: columns), rounded back to 8 bits."""
    b, c = v.shape[:2]
    out = index.shape[1]
    if dim == 3:
        taps = v.gather(3, index.view(b, 1, 1, -1).expand(b, c, v.shape[2], -1)).view(b, c, v.shape[2], out, 2)
        acc = (taps * weight.view(b, 1, 1, out, 2)).sum(-1, dtype=torch.int32)
    else:
        taps = v.gather(2, index.view(b, 1, -1, 1).expand(b, c, -1, v.shape[3])).view(b, c, out, 2, v.shape[3])
        acc = (taps * weight.view(b, 1, out, 2, 1)).sum(3, dtype=torch.int32)
    return ((acc + (1 << (_PRECISION - 1))) >> _PRECISION).clamp_(0, 255)


def resized_crop(x, top, left, h, w, flip):
    """Crop box (top, left, h, w) of each image, resize it to the input size with Pillow's
    bilinear filter (horizontal pass, 8-bit rounding, vertical pass), mirror where `flip` is true.
    Boxes must fit in the image (so the resize never shrinks), as `crop_params` guarantees."""
    _, _, height, width = x.shape
    cols, wx = _bilinear_taps(left, w, width)
    flip = flip.to(x.device).view(-1, 1, 1)
    cols, wx = torch.where(flip, cols.flip(1), cols), torch.where(flip, wx.flip(1), wx)
    rows, wy = _bilinear_taps(top, h, height)
    v = _resample(x.to(torch.int32), cols, wx, dim=3)
    return _resample(v, rows, wy, dim=2).to(torch.uint8)


def jitter_params(b, generator, strength=(0.4, 0.4, 0.4, 0.1), p=0.8):
    """ColorJitter draws inside RandomApply(p): whether it runs (b,), the order of the four
    operations (b, 4) (a uniform permutation of brightness, contrast, saturation, hue), and the
    factors (b, 4) uniform on [1 - s, 1 + s] (brightness, contrast, saturation) and [-s, s] (hue)."""
    dev = generator.device
    runs = torch.rand(b, generator=generator, device=dev) < p
    order = torch.rand(b, 4, generator=generator, device=dev).argsort(dim=1)
    lo, span = _jitter_range(tuple(strength), dev)
    factors = lo + span * torch.rand(b, 4, generator=generator, device=dev)
    return runs, order, factors


@functools.lru_cache(maxsize=None)
def _jitter_range(strength, device):
    # ColorJitter's ranges [max(0, 1 - s), 1 + s] (x3) and [-s, s], kept on the device
    s = torch.tensor(strength, dtype=torch.float32)
    lo = torch.cat([(1 - s[:3]).clamp(min=0), -s[3:]])
    hi = torch.cat([1 + s[:3], s[3:]])
    return lo.to(device), (hi - lo).to(device)


def color_jitter(x, runs, order, factors):
    """Apply the four jitter operations in each image's order (positions one at a time, images
    grouped by operation), skipping the images where `runs` is false."""
    runs, order, factors = runs.to(x.device), order.to(x.device), factors.to(x.device)
    for k in range(4):
        op = order[:, k]
        x = pil_ops.apply_grouped(x, torch.where(runs, op, -1), JITTER, factors.gather(1, op.view(-1, 1)).view(-1))
    return x


def random_grayscale(x, generator, p=0.2):
    """RandomGrayscale(p): the "L" conversion replicated to every channel, per image with prob p."""
    gray = torch.rand(x.shape[0], generator=generator, device=generator.device) < p
    return torch.where(gray.to(x.device).view(-1, 1, 1, 1), pil_ops.grayscale(x), x)


def simaugment(x, generator, scale=(0.08, 1.0)):
    """RandomResizedCrop(input size, scale) + flip + jitter (p = 0.8) + grayscale (p = 0.2)."""
    b, _, height, width = x.shape
    box = crop_params(b, height, width, scale, RATIO, generator)
    flip = torch.rand(b, generator=generator, device=generator.device) < 0.5
    x = resized_crop(x, *box, flip)
    x = color_jitter(x, *jitter_params(b, generator))
    return random_grayscale(x, generator, 0.2)
