"""PIL's image operations, re-done on whole uint8 batches (B, C, H, W) on the batch's device.

The official LT repos augment PIL images one at a time (AutoAugment through ImageOps /
ImageEnhance / Image.transform, SimAugment through torchvision's PIL functional). These are the
same operations with one parameter per image, written so that the integer output equals Pillow's
bit for bit: the same luma weights, the same float32 blend with truncation, the same 16.16
fixed-point nearest-neighbour rotation, the same a = -1 bicubic kernel for shears, the same HSV
round trip. torchvision's tensor functionals are not used for these because they differ
from Pillow by a level here and there (other grey weights, rounding instead of truncation, a
bicubic with a = -0.75). Channel count follows PIL's modes: 3 channels is "RGB", 1 is "L"; colour
operations are the identity on "L" images, as in Pillow/torchvision.

Per-image parameters are 1-D tensors of length B on the batch's device.
"""
from __future__ import annotations

import functools
import math

import torch


def _per_image(v, x, dtype):
    return v.to(device=x.device, dtype=dtype).view(-1, 1, 1, 1)


@functools.lru_cache(maxsize=None)
def _const(value, device):
    # kept on the device: a Python number sent there on every call is a blocking copy
    return torch.tensor(value, dtype=torch.float64, device=device)


def exact_div(a, b):
    """a / b in float64, rounded once as in C. torch turns `number / tensor` (and, on CUDA,
    `tensor / number`) into a multiplication by a reciprocal, an ulp off often enough to move a
    truncation, so a number operand becomes a tensor on the other operand's device first."""
    dev = (a if torch.is_tensor(a) else b).device
    a, b = (v.to(torch.float64) if torch.is_tensor(v) else _const(float(v), dev) for v in (a, b))
    return a / b


# ----------------------------------------------------------------------------- colour

def luma(x):
    """Image.convert("L"): (B, 1, H, W) uint8, ITU-R 601-2 weights in 16-bit fixed point, rounded."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.to(torch.int32).unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8).unsqueeze(1)


def grayscale(x):
    """torchvision's rgb_to_grayscale on a PIL image: "L" conversion replicated to every channel."""
    return luma(x).expand_as(x).contiguous()


def blend(degenerate, x, factor):
    """Image.blend(degenerate, x, factor): degenerate + factor * (x - degenerate) in float32,
    clipped to [0, 255] and truncated, as Pillow's Blend.c. degenerate broadcasts against x."""
    a = degenerate.to(torch.float32)
    out = a + _per_image(factor, x, torch.float32) * (x.to(torch.float32) - a)
    return out.clamp_(0, 255).to(torch.uint8)


def brightness(x, factor):
    """ImageEnhance.Brightness: blend with a black image."""
    return blend(torch.zeros((), dtype=torch.uint8, device=x.device), x, factor)


def contrast(x, factor):
    """ImageEnhance.Contrast: blend with a flat image at the rounded mean of the "L" image."""
    gray = luma(x)
    total = gray.sum(dim=(1, 2, 3), dtype=torch.int64).to(torch.float64)
    mean = torch.floor(exact_div(total, gray[0].numel()) + 0.5)
    return blend(mean.view(-1, 1, 1, 1), x, factor)


def saturation(x, factor):
    """ImageEnhance.Color: blend with the "L" image (identity on 1-channel images)."""
    if x.shape[1] == 1:
        return x
    return blend(luma(x), x, factor)


def smooth(x):
    """ImageFilter.SMOOTH (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, divisor 13, rounded half up);
    the one-pixel border is copied unchanged, as Pillow's Filter.c does."""
    xi = x.to(torch.int32)
    h, w = x.shape[2:]
    s = 4 * xi[:, :, 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            s = s + xi[:, :, dy:dy + h - 2, dx:dx + w - 2]
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = torch.div(2 * s + 13, 26, rounding_mode="floor").to(torch.uint8)
    return out


def sharpness(x, factor):
    """ImageEnhance.Sharpness: blend with the SMOOTH-filtered image."""
    return blend(smooth(x), x, factor)


def posterize(x, bits):
    """ImageOps.posterize: keep the top `bits` bits of every channel."""
    keep = 256 - torch.pow(2, 8 - bits.to(device=x.device, dtype=torch.int64))
    return x & keep.to(torch.uint8).view(-1, 1, 1, 1)


def solarize(x, threshold):
    """ImageOps.solarize: invert the values at or above `threshold` (a float, as in AutoAugment)."""
    return torch.where(x.to(torch.float64) < _per_image(threshold, x, torch.float64), x, 255 - x)


def invert(x):
    """ImageOps.invert."""
    return 255 - x


def autocontrast(x):
    """ImageOps.autocontrast(cutoff=0), per channel: v -> int(v * scale + offset) with
    scale = 255 / (hi - lo) and offset = -lo * scale in float64, as Pillow's Python code computes it;
    channels with a single value are left alone."""
    lo = x.amin(dim=(2, 3), keepdim=True).to(torch.float64)
    hi = x.amax(dim=(2, 3), keepdim=True).to(torch.float64)
    scale = exact_div(255.0, (hi - lo).clamp(min=1))
    offset = -lo * scale
    out = (x.to(torch.float64) * scale + offset).floor_().clamp_(0, 255).to(torch.uint8)
    return torch.where(hi > lo, out, x)


def equalize(x):
    """ImageOps.equalize, per channel: lut[i] = (step // 2 + #pixels below i) // step with
    step = (#pixels - #pixels at the highest value) // 255, clipped to 255; identity when the
    channel has one value or step is 0."""
    b, c = x.shape[:2]
    flat = x.reshape(b * c, -1).to(torch.int64)
    n = flat.shape[1]
    hist = torch.zeros(b * c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    top = hist.gather(1, flat.amax(dim=1, keepdim=True))
    step = (n - top) // 255
    below = hist.cumsum(dim=1) - hist
    lut = torch.div(step // 2 + below, step.clamp(min=1), rounding_mode="floor").clamp_(max=255)
    keep = ((hist > 0).sum(dim=1, keepdim=True) <= 1) | (step == 0)
    out = torch.where(keep, flat, lut.gather(1, flat))
    return out.to(torch.uint8).view_as(x)


# ----------------------------------------------------------------------------- hue

def _rgb_to_hsv(x):
    """Pillow's RGB -> HSV conversion (Convert.c rgb2hsv_row): float32 quotients, the float64
    steps where C promotes, truncation to 8 bits. Returns h, s, v as int64 (B, H, W)."""
    f32, f64 = torch.float32, torch.float64
    rgb = x.to(f32)
    maxc, minc = rgb.amax(dim=1), rgb.amin(dim=1)
    cr = maxc - minc
    gray = cr == 0
    cr = cr.masked_fill(gray, 1.0)
    rc, gc, bc = ((maxc.unsqueeze(1) - rgb) / cr.unsqueeze(1)).to(f64).unbind(1)
    h = torch.where(rgb[:, 0] == maxc, bc - gc, torch.where(rgb[:, 1] == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.fmod(exact_div(h.to(f32), 6.0) + 1.0, 1.0).to(f32)
    s = cr / maxc.clamp(min=1)
    uh = (h.to(f64) * 255.0).to(torch.int64).masked_fill(gray, 0)
    us = (s.to(f64) * 255.0).to(torch.int64).masked_fill(gray, 0)
    return uh, us, maxc.to(torch.int64)


@functools.lru_cache(maxsize=None)
def _hsv_tables(device):
    """Pillow's hsv2rgb as tables: the channel pick (3, h) and the factors 1 - fs (s,), 1 - fs*f
    (h*256 + s,), 1 - fs*(1 - f) (h*256 + s,) with Convert.c's float32/float64 mix, so that
    p, q, t = round(v * factor)."""
    f32, f64 = torch.float32, torch.float64
    levels = torch.arange(256, dtype=f64, device=device)
    hf = exact_div(levels * 6.0, 255.0)
    sextant = hf.floor()
    f = (hf - sextant).to(f32).view(-1, 1)
    fs = exact_div(levels, 255.0).to(f32).view(1, -1)
    p = 1.0 - fs.to(f64).view(-1)
    q = (1.0 - (fs * f).to(f64)).view(-1)
    t = (1.0 - fs.to(f64) * (1.0 - f.to(f64))).view(-1)
    # which of (v, p, q, t) goes to R, G, B in each sextant 0..5 (Convert.c's switch)
    pick = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=device)
    return pick[:, sextant.to(torch.int64) % 6], p, q, t


def _hsv_to_rgb(h, s, v):
    """Pillow's HSV -> RGB conversion (Convert.c hsv2rgb), rounding half away from zero. A zero
    saturation gives factors of 1, i.e. grey (v, v, v), as in the C special case."""
    pick, p_of, q_of, t_of = _hsv_tables(h.device)
    vd = v.to(torch.float64)
    hs = h * 256 + s
    p = torch.floor(vd * p_of[s] + 0.5)
    q = torch.floor(vd * q_of[hs] + 0.5)
    t = torch.floor(vd * t_of[hs] + 0.5)
    cand = torch.stack([vd, p, q, t]).to(torch.uint8)                  # (4, B, H, W)
    return cand.gather(0, pick[:, h]).transpose(0, 1)


def hue(x, factor):
    """torchvision's adjust_hue on a PIL image: to HSV, H += int(factor * 255) modulo 256, back to
    RGB (identity on 1-channel images)."""
    if x.shape[1] == 1:
        return x
    h, s, v = _rgb_to_hsv(x)
    shift = (factor.to(device=x.device, dtype=torch.float64) * 255).trunc().to(torch.int64)
    return _hsv_to_rgb((h + shift.view(-1, 1, 1)) % 256, s, v).contiguous()


# ----------------------------------------------------------------------------- geometry

def _gather(x, rows, cols, fill):
    """out[b, :, i, j] = x[b, :, rows[b, i, j], cols[b, i, j]], or `fill` outside the image."""
    b, c, h, w = x.shape
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(b, 1, -1).expand(b, c, -1)
    out = x.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)
    return torch.where(inside.unsqueeze(1), out, fill)


def rotate(x, degrees, fill):
    """Image.rotate(degrees) (counter-clockwise about the centre, nearest neighbour) with the
    uncovered corners set to `fill`. Pillow rounds the matrix to 15 decimals and samples with
    16.16 fixed-point arithmetic (Geometry.c affine_fixed); both are reproduced."""
    b, _, h, w = x.shape
    dev = x.device
    angle = -degrees.to(device=dev, dtype=torch.float64) * (math.pi / 180.0)
    cos = exact_div(torch.round(torch.cos(angle) * 1e15), 1e15)
    sin = exact_div(torch.round(torch.sin(angle) * 1e15), 1e15)
    cx, cy = w / 2, h / 2
    a = torch.stack([cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy], 1)
    a2 = a[:, 2] + a[:, 0] * 0.5 + a[:, 1] * 0.5
    a5 = a[:, 5] + a[:, 3] * 0.5 + a[:, 4] * 0.5
    fixed = torch.floor(torch.stack([a[:, 0], a[:, 1], a2, a[:, 3], a[:, 4], a5], 1) * 65536.0 + 0.5)
    a0, a1, a2, a3, a4, a5 = (v.to(torch.int64).view(b, 1, 1) for v in fixed.unbind(1))
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    cols = (a2 + ys * a1 + xs * a0) >> 16
    rows = (a5 + ys * a4 + xs * a3) >> 16
    return _gather(x, rows, cols, fill)


def translate(x, dx, dy, fill):
    """img.transform(size, AFFINE, (1, 0, dx, 0, 1, dy), NEAREST, fillcolor=fill): output pixel
    (i, j) shows input (i + floor(dy + 0.5), j + floor(dx + 0.5))."""
    b, _, h, w = x.shape
    dev = x.device
    shift_x = torch.floor(dx.to(device=dev, dtype=torch.float64) + 0.5).to(torch.int64).view(b, 1, 1)
    shift_y = torch.floor(dy.to(device=dev, dtype=torch.float64) + 0.5).to(torch.int64).view(b, 1, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w) + shift_x
    rows = torch.arange(h, device=dev).view(1, h, 1) + shift_y
    return _gather(x, rows.expand(b, h, w), cols.expand(b, h, w), fill)


def _cubic(v1, v2, v3, v4, d):
    """Pillow's BICUBIC macro (Geometry.c): cubic convolution with a = -1, same operation order."""
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def shear_y(x, m, fill):
    """img.transform(size, AFFINE, (1, 0, 0, m, 1, 0), BICUBIC, fillcolor=fill): output pixel
    centre (j + .5, i + .5) samples the input at column j, row m (j + .5) + i + .5, with Pillow's
    a = -1 cubic across 4 rows clamped at the border, clipped and truncated; sources outside the
    image get `fill`. The horizontal offset is exactly 0, so Pillow's horizontal pass returns the
    pixel itself and only the vertical taps are needed."""
    b, c, h, w = x.shape
    dev = x.device
    m = m.to(device=dev, dtype=torch.float64).view(b, 1, 1)
    xs = torch.arange(w, device=dev, dtype=torch.float64).view(1, 1, w) + 0.5
    ys = torch.arange(h, device=dev, dtype=torch.float64).view(1, h, 1) + 0.5
    yin = m * xs + ys
    inside = (yin >= 0) & (yin < h)
    y0 = torch.floor(yin - 0.5)
    fy = (yin - 0.5 - y0).unsqueeze(1)                                       # (B, 1, H, W)
    rows = (y0.to(torch.int64).unsqueeze(1) + torch.arange(-1, 3, device=dev).view(1, 4, 1, 1)).clamp(0, h - 1)
    taps = x.gather(2, rows.view(b, 1, 4 * h, w).expand(b, c, -1, -1)).view(b, c, 4, h, w)
    out = _cubic(*taps.to(torch.float64).unbind(2), fy).clamp_(0, 255).to(torch.uint8)
    return torch.where(inside.unsqueeze(1), out, fill)


# ----------------------------------------------------------------------------- batching

def apply_grouped(x, group, fns, *params):
    """Apply fns[k](x_k, *params_k) to the images whose group is k (group -1: left unchanged).
    One host sync for the group sizes; no loop over images."""
    order = torch.argsort(group, stable=True)
    sizes = (group.unsqueeze(1) == torch.arange(-1, len(fns), device=group.device)).sum(0).tolist()
    out = x.clone()
    start = sizes[0]
    for fn, n in zip(fns, sizes[1:]):
        if n:
            idx = order[start:start + n]
            out[idx] = fn(x[idx], *(p[idx] for p in params))
        start += n
    return out
