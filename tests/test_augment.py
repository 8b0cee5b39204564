from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from scipy.stats import binomtest, chisquare

from ltbench.data.augment import VIEWS, crop_flip_with_params, normalize, random_crop_flip

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference(img, dy, dx, flip, padding):
    """torchvision's RandomCrop(padding) + RandomHorizontalFlip with the draws fixed, one image."""
    h, w = img.shape[1:]
    out = TF.crop(TF.pad(img, [padding]), int(dy), int(dx), h, w)
    return TF.hflip(out) if flip else out


@pytest.mark.parametrize("shape,padding", [((3, 32, 32), 4), ((1, 20, 24), 2), ((3, 8, 8), 0)])
def test_crop_flip_matches_torchvision(shape, padding):
    g = torch.Generator().manual_seed(0)
    b = 64
    x = torch.randint(0, 256, (b, *shape), generator=g, dtype=torch.uint8)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    # the corners of the offset range are always covered
    dy[:4] = torch.tensor([0, 0, 2 * padding, 2 * padding])
    dx[:4] = torch.tensor([0, 2 * padding, 0, 2 * padding])
    out = crop_flip_with_params(x, dy, dx, flip, padding)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for i in range(b):
        assert torch.equal(out[i], reference(x[i], dy[i], dx[i], flip[i], padding)), i


def test_identity_params_leave_images_unchanged():
    x = torch.randint(0, 256, (5, 3, 10, 10), dtype=torch.uint8)
    same = crop_flip_with_params(x, torch.full((5,), 4), torch.full((5,), 4), torch.zeros(5, dtype=torch.bool), 4)
    assert torch.equal(same, x)
    mirrored = crop_flip_with_params(x, torch.full((5,), 4), torch.full((5,), 4), torch.ones(5, dtype=torch.bool), 4)
    assert torch.equal(mirrored, x.flip(3))


def coordinate_images(b, h, w):
    """Channel 0 holds row+1, channel 1 holds col+1, so a crop reveals where it was taken."""
    rows = torch.arange(1, h + 1, dtype=torch.uint8).view(h, 1).expand(h, w)
    cols = torch.arange(1, w + 1, dtype=torch.uint8).view(1, w).expand(h, w)
    return torch.stack([rows, cols]).expand(b, 2, h, w).contiguous()


def recover_params(out, padding):
    """Invert a crop of coordinate images: each output row/column shows the source row/column."""
    b, _, h, w = out.shape
    rows, cols = out[:, 0].long(), out[:, 1].long()
    i = torch.arange(h).view(1, h)
    j = torch.arange(w).view(1, w)
    row_src = rows.amax(dim=2)                            # (b, h): source row + 1, or 0 in the padding
    col_src = cols.amax(dim=1)                            # (b, w)
    dy = torch.where(row_src > 0, row_src - 1 + padding - i, -1).amax(dim=1)
    inside = col_src > 0
    step = torch.where(inside[:, 1:] & inside[:, :-1], col_src[:, 1:] - col_src[:, :-1], 0).sum(dim=1)
    flip = step < 0
    jj = torch.where(flip.view(b, 1), w - 1 - j, j)
    dx = torch.where(inside, col_src - 1 + padding - jj, -1).amax(dim=1)
    return dy, dx, flip


@pytest.mark.parametrize("device", DEVICES)
def test_random_crop_flip_offsets_uniform_and_flip_fair(device):
    padding, n = 4, 12_000
    x = coordinate_images(n, 32, 32).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    out = random_crop_flip(x, g, padding)
    assert out.device.type == device and out.dtype == torch.uint8
    dy, dx, flip = recover_params(out.cpu(), padding)
    for offsets in (dy, dx):
        assert offsets.min() >= 0 and offsets.max() <= 2 * padding
        assert chisquare(np.bincount(offsets.numpy(), minlength=2 * padding + 1)).pvalue > 1e-3
    assert binomtest(int(flip.sum()), n, 0.5).pvalue > 1e-3
    # the recovered draws reproduce the output exactly
    assert torch.equal(crop_flip_with_params(x.cpu(), dy, dx, flip, padding), out.cpu())


def test_random_crop_flip_draws_per_image_and_is_seeded():
    x = torch.randint(0, 256, (256, 3, 16, 16), dtype=torch.uint8)
    a = random_crop_flip(x, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    dy, dx, flip = recover_params(random_crop_flip(coordinate_images(256, 16, 16), torch.Generator().manual_seed(1)), 4)
    assert len(set(zip(dy.tolist(), dx.tolist(), flip.tolist()))) > 50


def test_normalize_matches_formula():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32
    for c in range(3):
        expected = (x[:, c].double() / 255 - mean[c]) / std[c]
        torch.testing.assert_close(out[:, c].double(), expected, rtol=1e-6, atol=1e-6)
    np_out = normalize(x, np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32))
    torch.testing.assert_close(np_out, out)


def test_views():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    cfg = SimpleNamespace(padding=4)
    assert VIEWS["plain"](x, torch.Generator().manual_seed(0), cfg) is x
    standard = VIEWS["standard"](x, torch.Generator().manual_seed(0), cfg)
    assert torch.equal(standard, random_crop_flip(x, torch.Generator().manual_seed(0), 4))
    # without padding the only randomness left is the flip
    flips = VIEWS["standard"](x, torch.Generator().manual_seed(0), SimpleNamespace(padding=0))
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(2)) for f, i in zip(flips, x))
