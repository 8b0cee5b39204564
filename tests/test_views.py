"""Batched augmentation views against the per-image Pillow / torchvision path, and their samplers
against the reference laws (chi-square, binomial and KS tests at alpha = 0.001, fixed seeds)."""
import random
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.stats import binomtest, chi2, chi2_contingency, chisquare, kstest
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from ltbench.data import autoaugment as aa
from ltbench.data import cutout, pil_ops
from ltbench.data import simaugment as sa
from ltbench.data.views import VIEWS

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPES = [(3, 32), (1, 28)]          # CIFAR ("RGB") and Fashion-MNIST ("L")
ALPHA = 1e-3
JITTER_REF = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def images(n, c, side, seed):
    """Uniform noise, narrow-range noise (so autocontrast and equalize have work to do) and smooth
    waves, a third each."""
    g = torch.Generator().manual_seed(seed)
    k = n // 3
    noise = torch.randint(0, 256, (k, c, side, side), generator=g)
    low = torch.randint(0, 200, (k, 1, 1, 1), generator=g)
    span = torch.randint(1, 56, (k, 1, 1, 1), generator=g)
    narrow = low + torch.randint(0, 10 ** 6, (k, c, side, side), generator=g) % span
    t = torch.linspace(0, 1, side)
    phase = 6 * torch.rand(n - 2 * k, c, 1, 1, generator=g)
    wave = (127.5 + 127.5 * torch.sin(6 * t.view(side, 1) + 4 * t.view(1, side) + phase)).floor()
    return torch.cat([noise, narrow, wave.long()]).to(torch.uint8)


def to_pil(img):
    a = img.cpu().permute(1, 2, 0).numpy()
    return Image.fromarray(a[:, :, 0], "L") if a.shape[2] == 1 else Image.fromarray(a, "RGB")


def from_pil(im):
    a = np.array(im)
    return torch.from_numpy(a.reshape(a.shape[0], a.shape[1], -1)).permute(2, 0, 1)


def per_image(x, fn):
    """fn(PIL image, index) on every image, back to a uint8 batch."""
    return torch.stack([from_pil(fn(to_pil(x[i]), i)) for i in range(len(x))])


def generator(device, seed):
    return torch.Generator(device).manual_seed(seed)


# ----------------------------------------------------------------------------- exact outputs

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c,side", SHAPES)
@pytest.mark.parametrize("op", aa.OPS)
def test_policy_operation_equals_pil_at_every_magnitude_and_sign(op, c, side, device):
    x = images(60, c, side, seed=1)
    k = torch.arange(60) % 10
    sign = torch.where(torch.arange(60) // 10 % 2 == 0, 1.0, -1.0).to(torch.float64)
    m = torch.tensor(aa.MAGNITUDES[op], dtype=torch.float64)[k]
    out = aa.BATCHED[op](x.to(device), m.to(device), sign.to(device)).cpu()
    expected = per_image(x, lambda im, i: aa.pil_op(im, op, aa.MAGNITUDES[op][k[i]], int(sign[i])))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, expected)


@pytest.mark.parametrize("c,side", SHAPES)
def test_reference_rotation_is_the_official_rgba_composite(c, side):
    """The official code rotates an RGBA copy and pastes it on grey through its own alpha; the
    reference (and the batched op) use Image.rotate(fillcolor=grey): the pixels are the same."""
    x = images(30, c, side, seed=2)

    def official(im, angle):
        turned = im.convert("RGBA").rotate(angle)
        return Image.composite(turned, Image.new("RGBA", turned.size, (128,) * 4), turned).convert(im.mode)

    for i, angle in enumerate(aa.MAGNITUDES["rotate"].tolist() * 3):
        im = to_pil(x[i])
        assert torch.equal(from_pil(official(im, angle)), from_pil(aa.pil_op(im, "rotate", angle)))


def test_reference_draws_in_the_official_order():
    """Sub-policy index, then per operation a coin and, only when a signed operation runs, a sign."""
    class Scripted:
        def __init__(self, sub, coins, signs):
            self.sub, self.coins, self.signs = sub, list(coins), list(signs)

        def randint(self, lo, hi):
            assert (lo, hi) == (0, 24)
            return self.sub

        def random(self):
            return self.coins.pop(0)

        def choice(self, options):
            assert tuple(options) == (-1, 1)
            return self.signs.pop(0)

    im = to_pil(images(3, 3, 32, seed=3)[2])
    # sub-policy 3: shearY (p .5, signed) then translateY (p .7, signed)
    rng = Scripted(3, coins=[0.4, 0.8], signs=[-1])
    out = aa.CIFAR10PolicyPIL(rng)(im)
    assert rng.coins == [] and rng.signs == []
    assert torch.equal(from_pil(out), from_pil(aa.CIFAR10PolicyPIL().apply(im, 3, [True, False], [-1, 1])))
    # sub-policy 4: autocontrast and equalize take no sign
    rng = Scripted(4, coins=[0.1, 0.1], signs=[])
    out = aa.CIFAR10PolicyPIL(rng)(im)
    assert torch.equal(from_pil(out), from_pil(aa.CIFAR10PolicyPIL().apply(im, 4, [True, True], [1, 1])))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c,side", SHAPES)
def test_policy_equals_reference_with_the_same_draws(c, side, device):
    x = images(300, c, side, seed=4)
    sub, runs, sign = aa.sample_policy(300, generator(device, 4))
    out = aa.apply_policy(x.to(device), sub, runs, sign).cpu()
    ref = aa.CIFAR10PolicyPIL()
    sub, runs, sign = sub.cpu(), runs.cpu(), sign.cpu()
    expected = per_image(x, lambda im, i: ref.apply(im, int(sub[i]), runs[i].tolist(), sign[i].tolist()))
    assert torch.equal(out, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c,side", SHAPES)
@pytest.mark.parametrize("k", range(4))
def test_jitter_operation_equals_torchvision_on_pil(k, c, side, device):
    x = images(60, c, side, seed=5)
    factor = sa.jitter_params(60, torch.Generator().manual_seed(5))[2][:, k]
    out = sa.JITTER[k](x.to(device), factor.to(device)).cpu()
    assert torch.equal(out, per_image(x, lambda im, i: JITTER_REF[k](im, float(factor[i]))))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c,side", SHAPES)
def test_color_jitter_equals_torchvision_with_the_same_draws(c, side, device):
    x = images(150, c, side, seed=6)
    runs, order, factors = sa.jitter_params(150, generator(device, 6))
    out = sa.color_jitter(x.to(device), runs, order, factors).cpu()
    runs, order, factors = runs.cpu(), order.cpu(), factors.cpu()

    def reference(im, i):
        if runs[i]:
            for k in order[i].tolist():
                im = JITTER_REF[k](im, float(factors[i, k]))
        return im

    assert torch.equal(out, per_image(x, reference))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c,side", SHAPES)
def test_grayscale_equals_torchvision_and_colour_ops_leave_one_channel_alone(c, side, device):
    x = images(30, c, side, seed=7).to(device)
    out = pil_ops.grayscale(x).cpu()
    assert torch.equal(out, per_image(x, lambda im, i: TF.rgb_to_grayscale(im, num_output_channels=c)))
    if c == 1:
        ones = torch.full((30,), 0.6, device=device)
        for op in (pil_ops.grayscale, lambda v: pil_ops.saturation(v, ones), lambda v: pil_ops.hue(v, ones / 10)):
            assert torch.equal(op(x), x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c,side", SHAPES)
def test_resized_crop_equals_pil_and_is_within_a_level_of_torchvision_tensors(c, side, device):
    n = 120
    x = images(n, c, side, seed=8)
    g = torch.Generator().manual_seed(8)
    top, left, h, w = sa.crop_params(n, side, side, (0.08, 1.0), sa.RATIO, g)
    # the whole image, one pixel, one row, one column
    top[:4] = torch.tensor([0, side - 1, 5, 0])
    left[:4] = torch.tensor([0, side - 1, 0, 7])
    h[:4] = torch.tensor([side, 1, 1, side])
    w[:4] = torch.tensor([side, 1, side, 1])
    flip = torch.rand(n, generator=g) < 0.5
    out = sa.resized_crop(*(v.to(device) for v in (x, top, left, h, w, flip))).cpu()

    def reference(img, i):
        img = TF.resized_crop(img, int(top[i]), int(left[i]), int(h[i]), int(w[i]), [side, side],
                              InterpolationMode.BILINEAR, antialias=True)
        return TF.hflip(img) if flip[i] else img

    assert torch.equal(out, per_image(x, reference))
    # torchvision's tensor resize rounds its own way (measured: ~1 pixel in 6 one level off)
    tensor_path = torch.stack([reference(x[i], i) for i in range(n)])
    assert (out.int() - tensor_path.int()).abs().max() <= 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c,side", SHAPES)
def test_cutout_equals_the_official_mask(c, side, device):
    x = images(60, c, side, seed=9)
    cy, cx = cutout.sample_centres(60, side, side, torch.Generator().manual_seed(9))
    cy[:4], cx[:4] = torch.tensor([0, 0, side - 1, side - 1]), torch.tensor([0, side - 1, 0, side - 1])
    out = cutout.cutout(x.to(device), cy.to(device), cx.to(device), 16).cpu()
    for i in range(60):
        mask = torch.ones(side, side, dtype=torch.uint8)
        y0, y1 = np.clip([int(cy[i]) - 8, int(cy[i]) + 8], 0, side)
        x0, x1 = np.clip([int(cx[i]) - 8, int(cx[i]) + 8], 0, side)
        mask[y0:y1, x0:x1] = 0
        assert torch.equal(out[i], x[i] * mask), i


# ----------------------------------------------------------------------------- sampled parameters

def test_subpolicy_choice_is_uniform_over_25():
    sub, _, _ = aa.sample_policy(20000, torch.Generator().manual_seed(10))
    assert chisquare(torch.bincount(sub, minlength=25).numpy()).pvalue > ALPHA


def test_operations_run_with_their_probability_and_signs_are_fair():
    """Pooled over the (sub-policy, slot) cells with 0 < p < 1: sum (k - n p)^2 / (n p (1 - p)) is
    chi-square with one degree of freedom per cell; p = 0 never runs."""
    sub, runs, sign = aa.sample_policy(40000, torch.Generator().manual_seed(11))
    stat, df = 0.0, 0
    for s, pair in enumerate(aa.POLICY):
        chosen = sub == s
        n = int(chosen.sum())
        for slot, (_, p, _) in enumerate(pair):
            k = int(runs[chosen, slot].sum())
            if p == 0:
                assert k == 0
                continue
            stat += (k - n * p) ** 2 / (n * p * (1 - p))
            df += 1
    assert df == 49 and chi2.sf(stat, df) > ALPHA
    assert binomtest(int((sign > 0).sum()), sign.numel(), 0.5).pvalue > ALPHA


def two_sample_p(a, b, pool_below=10):
    """Chi-square test that two samples of tuples come from one distribution; cells with fewer
    than `pool_below` draws in both samples together are pooled into one."""
    ca, cb = Counter(map(tuple, a)), Counter(map(tuple, b))
    cells = set(ca) | set(cb)
    big = sorted(k for k in cells if ca[k] + cb[k] >= pool_below)
    small = [k for k in cells if ca[k] + cb[k] < pool_below]
    table = np.array([[ca[k] for k in big] + [sum(ca[k] for k in small)],
                      [cb[k] for k in big] + [sum(cb[k] for k in small)]])
    return chi2_contingency(table[:, table.sum(0) > 0]).pvalue


def binned_p(a, b, bins=20):
    """Chi-square test that two samples of a scalar come from one distribution, on `bins` bins
    cut at the quantiles of both samples together."""
    edges = np.unique(np.quantile(np.concatenate([a, b]), np.linspace(0, 1, bins + 1)[1:-1]))
    table = np.array([np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1)
                      for v in (a, b)])
    return chi2_contingency(table[:, table.sum(0) > 0]).pvalue


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.2, 1.0)])
def test_crop_boxes_follow_torchvision_get_params(scale):
    """Same law as RandomResizedCrop.get_params: area fraction, aspect ratio and position within
    the free range (binned), and the joint (h, w), (h, top), (w, left) cells."""
    n = 10000
    boxes = sa.crop_params(n, 32, 32, scale, sa.RATIO, torch.Generator().manual_seed(12))
    ours = np.stack([v.numpy() for v in boxes], 1)
    img = torch.zeros(1, 32, 32)
    with torch.random.fork_rng():
        torch.manual_seed(12)
        ref = np.array([RandomResizedCrop.get_params(img, list(scale), list(sa.RATIO)) for _ in range(n)])
    for stat in (lambda t, l, h, w: h * w / 1024, lambda t, l, h, w: w / h,
                 lambda t, l, h, w: (t + 0.5) / (33 - h), lambda t, l, h, w: (l + 0.5) / (33 - w)):
        assert binned_p(stat(*ours.T), stat(*ref.T)) > ALPHA
    top, left, h, w = range(4)
    for cols in ([h, w], [h, top], [w, left]):
        assert two_sample_p(ours[:, cols], ref[:, cols]) > ALPHA


def test_crop_fallback_is_the_central_box():
    """With no try fitting (scale far above 1), get_params returns the central box."""
    top, left, h, w = sa.crop_params(5, 20, 30, (50.0, 60.0), sa.RATIO, torch.Generator().manual_seed(13))
    ref = RandomResizedCrop.get_params(torch.zeros(1, 20, 30), [50.0, 60.0], list(sa.RATIO))
    assert all(tuple(map(int, box)) == ref for box in zip(top, left, h, w))


def test_jitter_draws():
    n = 20000
    runs, order, factors = sa.jitter_params(n, torch.Generator().manual_seed(14))
    assert binomtest(int(runs.sum()), n, 0.8).pvalue > ALPHA
    perms = Counter(map(tuple, order.tolist()))
    assert len(perms) == 24 and chisquare(list(perms.values())).pvalue > ALPHA
    for k, (lo, hi) in enumerate([(0.6, 1.4)] * 3 + [(-0.1, 0.1)]):
        assert kstest(factors[:, k].numpy(), "uniform", args=(lo, hi - lo)).pvalue > ALPHA


@pytest.mark.parametrize("name", ["simaugment", "simaugment_s02", "standard_gray"])
def test_views_turn_one_image_in_five_grey(name):
    """Images whose channels always differ (0, 100, 200); grey outputs have equal channels."""
    n = 10000
    x = torch.tensor([0, 100, 200], dtype=torch.uint8).view(1, 3, 1, 1).expand(n, 3, 4, 4).contiguous()
    out = VIEWS[name](x, torch.Generator().manual_seed(15), SimpleNamespace(padding=1))
    grey = (out == out[:, :1]).flatten(1).all(1)
    assert binomtest(int(grey.sum()), n, 0.2).pvalue > ALPHA


def test_cutout_centres_are_uniform():
    cy, cx = cutout.sample_centres(20000, 32, 32, torch.Generator().manual_seed(16))
    assert chisquare(torch.bincount(cy * 32 + cx, minlength=1024).numpy()).pvalue > ALPHA


# ----------------------------------------------------------------------------- the registry

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c,side", SHAPES)
@pytest.mark.parametrize("name", list(VIEWS))
def test_view_keeps_shape_dtype_device_and_is_deterministic(name, c, side, device):
    x = images(48, c, side, seed=17).to(device)
    cfg = SimpleNamespace(padding=4)
    a, b, other = (VIEWS[name](x, generator(device, seed), cfg) for seed in (0, 0, 1))
    assert a.shape == x.shape and a.dtype == torch.uint8 and a.device == x.device
    assert torch.equal(a, b)
    assert torch.equal(a, x) if name == "plain" else not torch.equal(a, other)


def test_autoaugment_cutout_leaves_a_hole_in_every_image():
    """A hole is at least 8x8 (a 16x16 square clipped at the border): some 8x8 window is all zero,
    which never happens in images with no zero pixel."""
    x = images(64, 3, 32, seed=18).clamp(min=1)
    out = VIEWS["autoaugment_cutout"](x, torch.Generator().manual_seed(18), SimpleNamespace(padding=4))
    window_max = F.max_pool2d(out.amax(1, keepdim=True).float(), 8, stride=1)
    assert (window_max.flatten(1).amin(1) == 0).all()


def test_unknown_view_name_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown augmentation view 'simaug'.*ltbench.data.views.VIEWS"):
        VIEWS["simaug"]


def test_reference_policy_runs_on_both_modes():
    rng = random.Random(19)
    for c, side in SHAPES:
        out = aa.CIFAR10PolicyPIL(rng)(to_pil(images(3, c, side, seed=19)[0]))
        assert out.size == (side, side) and out.mode == ("RGB" if c == 3 else "L")
