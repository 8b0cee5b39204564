"""The per-image reference path: every view of every image made from a PIL image in DataLoader
workers and handed to the training process as a normalised float32 tensor.

This is how the official CIFAR-LT code feeds its models (kaidic/LDAM-DRW@2536330:cifar_train.py,
LeapLabTHU/ProCo@af9e78e:ProCo_cifar/main.py, LTH14/targeted-supcon@c4f15eb:
cifar_dirty/main_supcon_imba.py): a torchvision transform per view on each PIL image, ToTensor,
Normalize, batches collated in worker processes. `ltbench.data.views` makes the same views on
whole uint8 batches on the device; this path stays as the reference for that claim (train the same
run with `augment_path: reference` and compare) and as the fallback. Views by name, as `VIEWS`:

  standard            RandomCrop(size, padding) + RandomHorizontalFlip
  plain               the image as it is
  autoaugment_cutout  crop + flip, CIFAR10PolicyPIL, ToTensor, Cutout 16 (on the float image,
                      before Normalize, as the official Cutout)
  simaugment          RandomResizedCrop scale (0.08, 1), flip, RandomApply(ColorJitter(0.4, 0.4,
                      0.4, 0.1), p 0.8), RandomGrayscale(0.2)
  simaugment_s02      the same with scale (0.2, 1)
  standard_gray       crop + flip + RandomGrayscale(0.2)

each followed by ToTensor and Normalize with the dataset's mean and std.

Randomness: the views of the image at position p of an epoch's order come from torch's and
Python's generators seeded with (seed, epoch, stream) + p, so a batch does not depend on the
number of workers and a resumed epoch repeats exactly. The draws are not those of the batched
path: the two paths give the same distribution of views, not the same views.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from ltbench import dist
from ltbench.data.autoaugment import CIFAR10PolicyPIL
from ltbench.data.cutout import cutout
from ltbench.data.loader import sample_seed, stack_views
from ltbench.train import DeviceData

PATHS = ("batched", "reference")


class Cutout16:
    """One 16 x 16 hole of zeros in a float image (C, H, W), centre uniform over the pixels."""

    def __call__(self, x):
        cy, cx = torch.randint(x.shape[1], (1,)), torch.randint(x.shape[2], (1,))
        return cutout(x.unsqueeze(0), cy, cx, length=16)[0]


def view_transform(name, size, padding, mean, std, rng):
    """The torchvision transform of view `name`; `rng` (random.Random) drives the AutoAugment policy."""
    crop = [T.RandomCrop(size, padding=padding), T.RandomHorizontalFlip()]
    jitter = T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)
    sim = lambda scale: [T.RandomResizedCrop(size, scale=scale), T.RandomHorizontalFlip(), jitter,
                         T.RandomGrayscale(0.2)]
    tensor = [T.ToTensor(), T.Normalize(mean, std)]
    steps = {
        "standard": crop + tensor,
        "plain": tensor,
        "autoaugment_cutout": crop + [CIFAR10PolicyPIL(rng), T.ToTensor(), Cutout16(), T.Normalize(mean, std)],
        "simaugment": sim((0.08, 1.0)) + tensor,
        "simaugment_s02": sim((0.2, 1.0)) + tensor,
        "standard_gray": crop + [T.RandomGrayscale(0.2)] + tensor,
    }
    if name not in steps:
        raise ValueError(f"view {name!r} has no per-image reference transform: use one of {', '.join(steps)} "
                         f"or add it to ltbench.data.reference.view_transform")
    return T.Compose(steps[name])


def to_pil(image):
    """(C, H, W) uint8 array -> PIL image, "L" for one channel, "RGB" for three."""
    return Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))


class ReferenceViews(Dataset):
    """Item p: the views of image order[p] (float32, normalised), one tensor per view name."""

    def __init__(self, images, order, views, padding, mean, std, seed):
        self.images, self.order, self.seed = images, order, seed
        self.rng = random.Random()
        self.transforms = [view_transform(v, images.shape[-1], padding, mean, std, self.rng) for v in views]

    def __len__(self):
        return len(self.order)

    def __getitem__(self, position):
        s = (self.seed + position) % 2**63
        torch.default_generator.manual_seed(s)   # the generator torchvision draws from; torch.manual_seed
        self.rng.seed(s)                         # would also reach every accelerator, 100x slower
        image = to_pil(self.images[self.order[position]])
        return [t(image) for t in self.transforms]


class ReferenceData(DeviceData):
    """`DeviceData` whose training views come from the per-image reference path; evaluation and
    everything else as `DeviceData`."""

    def __init__(self, data_path, split_path, device, cfg):
        if cfg.augment_path not in PATHS:
            raise ValueError(f"augment_path {cfg.augment_path!r} is not one of {', '.join(PATHS)}: "
                             f"set augment_path: batched (views on the device) or reference (per-image PIL)")
        super().__init__(data_path, split_path, device, cfg.channels_last)
        self.images = self.train_x.cpu().numpy()      # workers read the pixels from host memory
        self.workers = cfg.workers or dist.local_workers()
        self.mean_std = (self.mean.flatten().tolist(), self.std.flatten().tolist())

    def train_batches(self, order, slices, views, generator, cfg, epoch, stream=0):
        """(normalised views, labels) of each (start, stop) slice of `order`. Randomness is keyed
        by position in `order` (see the module doc), so `generator` is not drawn from."""
        dataset = ReferenceViews(self.images, order.tolist(), views, cfg.padding, *self.mean_std,
                                 seed=sample_seed(cfg.seed, epoch, stream))
        loader = DataLoader(dataset, batch_sampler=[range(a, b) for a, b in slices], collate_fn=stack_views,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda")
        order = order.to(self.device)
        for batch, (start, stop) in zip(loader, slices):
            out = [v.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format) for v in batch]
            yield out, self.train_y[order[start:stop]]
