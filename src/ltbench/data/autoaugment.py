"""The CIFAR-10 AutoAugment policy as the LT repos run it, batched, plus its per-image PIL reference.

Source: the DeepVoltaire `CIFAR10Policy`, copied into LeapLabTHU/ProCo@af9e78e:ProCo_cifar/autoaug.py
and used by ProCo_cifar/main.py and jiawei-ren/BalancedMetaSoftmax-Classification@34a61e4:
data/ImbalanceCIFAR.py after RandomCrop + flip. Per image: pick one of 25 sub-policies uniformly;
each of its two operations runs with its own probability, at a magnitude taken from one of 10 bins;
shear, translate and the enhance operations get a random sign when they run; geometric operations
fill with grey 128 (rotation gets its grey through an RGBA composite in the official code, which
gives exactly `Image.rotate(fillcolor=128)`).

`cifar10_policy` draws every per-image choice on the generator's device and applies the operations
grouped by kind (`pil_ops`, equal to Pillow's output bit for bit); `CIFAR10PolicyPIL` is the
official per-image path on a PIL image and the reference for tests and benchmarks.
"""
from __future__ import annotations

import functools
import random

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from ltbench.data import pil_ops

FILL = 128

# (operation, probability, magnitude bin) pairs, in the official order
POLICY = (
    (("invert", 0.1, 7), ("contrast", 0.2, 6)),
    (("rotate", 0.7, 2), ("translateX", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
    (("shearY", 0.5, 8), ("translateY", 0.7, 9)),
    (("autocontrast", 0.5, 8), ("equalize", 0.9, 2)),
    (("shearY", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)),
    (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, 5), ("equalize", 0.5, 1)),
    (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translateX", 0.5, 8)),
    (("equalize", 0.3, 7), ("autocontrast", 0.4, 8)),
    (("translateY", 0.4, 3), ("sharpness", 0.2, 6)),
    (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, 3)),
    (("equalize", 0.2, 0), ("autocontrast", 0.6, 0)),
    (("equalize", 0.2, 8), ("equalize", 0.6, 4)),
    (("color", 0.9, 9), ("equalize", 0.6, 6)),
    (("autocontrast", 0.8, 4), ("solarize", 0.2, 8)),
    (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("autocontrast", 0.9, 3)),
    (("translateY", 0.9, 9), ("translateY", 0.7, 9)),
    (("autocontrast", 0.9, 2), ("solarize", 0.8, 3)),
    (("equalize", 0.8, 8), ("invert", 0.1, 3)),
    (("translateY", 0.7, 9), ("autocontrast", 0.9, 1)),
)

# magnitude of each bin; translations are a fraction of the image side
_enhance_bins = np.linspace(0.0, 0.9, 10)
MAGNITUDES = {
    "shearY": np.linspace(0, 0.3, 10),
    "translateX": np.linspace(0, 150 / 331, 10),
    "translateY": np.linspace(0, 150 / 331, 10),
    "rotate": np.linspace(0, 30, 10),
    "color": _enhance_bins,
    "contrast": _enhance_bins,
    "sharpness": _enhance_bins,
    "brightness": _enhance_bins,
    "posterize": np.round(np.linspace(8, 4, 10), 0).astype(int),
    "solarize": np.linspace(256, 0, 10),
    "autocontrast": np.zeros(10),
    "equalize": np.zeros(10),
    "invert": np.zeros(10),
}
SIGNED = {"shearY", "translateX", "translateY", "color", "contrast", "sharpness", "brightness"}


def _enhance(op):
    return lambda x, m, sign: op(x, 1 + m * sign)


# batched operations: (uint8 batch, magnitude, sign) -> uint8 batch, all per image
BATCHED = {
    "shearY": lambda x, m, sign: pil_ops.shear_y(x, m * sign, FILL),
    "translateX": lambda x, m, sign: pil_ops.translate(x, m * x.shape[3] * sign, torch.zeros_like(m), FILL),
    "translateY": lambda x, m, sign: pil_ops.translate(x, torch.zeros_like(m), m * x.shape[2] * sign, FILL),
    "rotate": lambda x, m, sign: pil_ops.rotate(x, m, FILL),
    "color": _enhance(pil_ops.saturation),
    "contrast": _enhance(pil_ops.contrast),
    "sharpness": _enhance(pil_ops.sharpness),
    "brightness": _enhance(pil_ops.brightness),
    "posterize": lambda x, m, sign: pil_ops.posterize(x, m.round().to(torch.int64)),
    "solarize": lambda x, m, sign: pil_ops.solarize(x, m),
    "autocontrast": lambda x, m, sign: pil_ops.autocontrast(x),
    "equalize": lambda x, m, sign: pil_ops.equalize(x),
    "invert": lambda x, m, sign: pil_ops.invert(x),
}
OPS = tuple(BATCHED)
_OP = torch.tensor([[OPS.index(op) for op, _, _ in sub] for sub in POLICY])
_PROB = torch.tensor([[p for _, p, _ in sub] for sub in POLICY], dtype=torch.float64)
_MAG = torch.tensor([[float(MAGNITUDES[op][k]) for op, _, k in sub] for sub in POLICY], dtype=torch.float64)


@functools.lru_cache(maxsize=None)
def _tables(device):
    # (operation index, probability, magnitude) per (sub-policy, slot), kept on the device
    return _OP.to(device), _PROB.to(device), _MAG.to(device)


def sample_policy(b, generator):
    """Per-image draws of the official sampler: sub-policy index (b,) uniform over 25, which of
    its two operations run (b, 2) bool with their probabilities, and a sign (b, 2) of +-1."""
    dev = generator.device
    sub = torch.randint(len(POLICY), (b,), generator=generator, device=dev)
    runs = torch.rand(b, 2, generator=generator, device=dev, dtype=torch.float64) < _tables(dev)[1][sub]
    heads = torch.rand(b, 2, generator=generator, device=dev) < 0.5
    sign = torch.where(heads, -1.0, 1.0).to(torch.float64)
    return sub, runs, sign


def apply_policy(x, sub, runs, sign):
    """Apply sub-policy `sub` with the given `runs` and `sign` draws to each image of the batch."""
    sub, runs, sign = sub.to(x.device), runs.to(x.device), sign.to(x.device)
    op_of, _, magnitude_of = _tables(x.device)
    fns = [BATCHED[op] for op in OPS]
    for k in range(2):
        op = torch.where(runs[:, k], op_of[sub, k], -1)
        x = pil_ops.apply_grouped(x, op, fns, magnitude_of[sub, k], sign[:, k])
    return x


def cifar10_policy(x, generator):
    """CIFAR10Policy on a uint8 batch (B, C, H, W), randomness from `generator`."""
    return apply_policy(x, *sample_policy(x.shape[0], generator))


# ----------------------------------------------------------------------------- per-image reference

def _affine(img, coeffs, resample=Image.NEAREST):
    return img.transform(img.size, Image.AFFINE, coeffs, resample, fillcolor=(FILL,) * len(img.getbands()))


PIL_OPS = {
    "shearY": lambda img, m: _affine(img, (1, 0, 0, m, 1, 0), Image.BICUBIC),
    "translateX": lambda img, m: _affine(img, (1, 0, m * img.size[0], 0, 1, 0)),
    "translateY": lambda img, m: _affine(img, (1, 0, 0, 0, 1, m * img.size[1])),
    "rotate": lambda img, m: img.rotate(m, fillcolor=(FILL,) * len(img.getbands())),
    "color": lambda img, m: ImageEnhance.Color(img).enhance(1 + m),
    "contrast": lambda img, m: ImageEnhance.Contrast(img).enhance(1 + m),
    "sharpness": lambda img, m: ImageEnhance.Sharpness(img).enhance(1 + m),
    "brightness": lambda img, m: ImageEnhance.Brightness(img).enhance(1 + m),
    "posterize": lambda img, m: ImageOps.posterize(img, int(m)),
    "solarize": lambda img, m: ImageOps.solarize(img, m),
    "autocontrast": lambda img, m: ImageOps.autocontrast(img),
    "equalize": lambda img, m: ImageOps.equalize(img),
    "invert": lambda img, m: ImageOps.invert(img),
}


def pil_op(img, op, magnitude, sign=1):
    """One AutoAugment operation on a PIL image ("RGB" or "L"), official semantics."""
    return PIL_OPS[op](img, magnitude * sign if op in SIGNED else magnitude)


class CIFAR10PolicyPIL:
    """The official per-image policy on a PIL image. Draws come from `rng` (anything with
    randint/random/choice, e.g. `random.Random(seed)`) in the official order: sub-policy, then per
    operation the coin and, if it runs and is signed, the sign."""

    def __init__(self, rng=random):
        self.rng = rng

    def __call__(self, img):
        for op, p, k in POLICY[self.rng.randint(0, len(POLICY) - 1)]:
            if self.rng.random() < p:
                sign = self.rng.choice((-1, 1)) if op in SIGNED else 1
                img = pil_op(img, op, MAGNITUDES[op][k], sign)
        return img

    def apply(self, img, sub, runs, sign):
        """Sub-policy `sub` with fixed draws (runs, sign: two entries each), as `apply_policy`."""
        for (op, _, k), run, s in zip(POLICY[sub], runs, sign):
            if run:
                img = pil_op(img, op, MAGNITUDES[op][k], s)
        return img
