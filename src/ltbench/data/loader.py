"""Images read from disk per batch: the data object of the file-list sources (ImageNet-LT, iNat).

DataLoader workers open each JPEG with PIL, apply the view's torchvision transforms to that one
image and hand back uint8 tensors; the trainer's process moves them to the device and normalises
them there, as it does for the in-memory sources. The view names the methods declare map to
ImageNet-scale transforms (`VIEWS`, crop size `image_size`, 224 by default):

  standard            RandomResizedCrop, flip, ColorJitter(0.4, 0.4, 0.4): the training transform
                      of classifier-balancing (f162ade:data/dataloader.py), which TDE and BALMS share
  plain               Resize(size*256/224) and CenterCrop: the evaluation transform
  simaugment          RandomResizedCrop scale (0.08, 1), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8,
                      grayscale p 0.2 (BCL/ProCo's SimAugment at ImageNet scale, spec §2)
  simaugment_s02      the same with scale (0.2, 1)
  autoaugment_cutout  the strong branch BCL/ProCo use at ImageNet scale instead of CIFAR's
                      AutoAugment + Cutout: RandomResizedCrop, flip, ColorJitter(0.4, 0.4, 0.4) always,
                      RandAugment with 2 ops at full magnitude, filled with the dataset mean
  standard_gray       RandomResizedCrop, flip, grayscale p 0.2 (Hybrid-SC's view at ImageNet scale)

Deliberate deviation: torchvision's RandAugment (ops and magnitudes of torchvision, magnitude 10
of 10 in 11 bins) stands in for timm's `rand-n2-m10-mstd0.5` (no Invert/SolarizeAdd, no magnitude
noise, every chosen op applied). BBN's iNat transform (crop and flip, no colour jitter) and GLMC's
MoCo-v2 view are not modelled: those methods get `standard`.

Randomness: the transforms of the image at position p of an epoch's order, view k, are drawn from
torch's generator seeded by (seed, epoch, stream, p, k), so a batch's views do not depend on the
number of workers or processes, and a resumed epoch repeats exactly.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from ltbench import dist
from ltbench.data import filelist, lt
from ltbench.methods.base import DataInfo


def _crop(size, scale=(0.08, 1.0)):
    return [T.RandomResizedCrop(size, scale=scale), T.RandomHorizontalFlip()]


def standard(size, mean):
    return T.Compose(_crop(size) + [T.ColorJitter(0.4, 0.4, 0.4)])


def plain(size, mean=None):
    return T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size)])


def simaugment(size, mean, scale=(0.08, 1.0)):
    return T.Compose(_crop(size, scale) + [T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                                           T.RandomGrayscale(0.2)])


def strong(size, mean):
    fill = [round(255 * m) for m in mean]
    return T.Compose(_crop(size) + [T.ColorJitter(0.4, 0.4, 0.4),
                                    T.RandAugment(num_ops=2, magnitude=10, num_magnitude_bins=11, fill=fill)])


def standard_gray(size, mean):
    return T.Compose(_crop(size) + [T.RandomGrayscale(0.2)])


VIEWS = {
    "standard": standard,
    "plain": plain,
    "simaugment": simaugment,
    "simaugment_s02": lambda size, mean: simaugment(size, mean, scale=(0.2, 1.0)),
    "autoaugment_cutout": strong,
    "standard_gray": standard_gray,
}


def view_transforms(names, size, mean):
    unknown = [n for n in names if n not in VIEWS]
    if unknown:
        raise ValueError(f"view {unknown[0]!r} has no per-image transform for on-disk datasets: use one of "
                         f"{', '.join(VIEWS)} or add it to ltbench.data.loader.VIEWS")
    return [VIEWS[n](size, mean) for n in names]


def open_rgb(root, path):
    from PIL import Image
    with Image.open(os.path.join(root, os.fsdecode(path))) as im:
        return im.convert("RGB")


def to_uint8(image):
    """PIL RGB image -> 3 x H x W uint8 tensor."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def sample_seed(*key):
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> np.uint64(1))


class TrainImages(Dataset):
    """Item (i, p): the views of image i at position p of the epoch's order, as uint8 tensors."""

    def __init__(self, root, paths, transforms, seed, epoch, stream):
        self.root, self.paths, self.transforms = root, paths, transforms
        self.key = (seed, epoch, stream)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, item):
        i, position = item
        image = open_rgb(self.root, self.paths[i])
        views = []
        for k, t in enumerate(self.transforms):
            torch.manual_seed(sample_seed(*self.key, position, k))
            views.append(to_uint8(t(image)))
        return views


class EvalImages(Dataset):
    """Item i: image i under the evaluation transform, as a uint8 tensor."""

    def __init__(self, root, paths, size):
        self.root, self.paths, self.transform = root, paths, plain(size)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return to_uint8(self.transform(open_rgb(self.root, self.paths[i])))


def stack_views(batch):
    return [torch.stack(v) for v in zip(*batch)]


class ImageList:
    """Evaluation-transformed images as a lazily decoded sequence: `x[i:j]` is a uint8 batch on
    the device (what methods' `fit` slices, e.g. NCM's class means, tau-norm's sweep on val)."""

    def __init__(self, images, device, threads):
        self.images, self.device, self.threads = images, device, threads

    def __len__(self):
        return len(self.images)

    def __getitem__(self, s):
        if not isinstance(s, slice):
            raise TypeError("an on-disk image list is read by slices, x[i:j]")
        with ThreadPoolExecutor(self.threads) as pool:
            batch = list(pool.map(self.images.__getitem__, range(*s.indices(len(self)))))
        return torch.stack(batch).to(self.device)


class FileData:
    """Train / val / test of a file-list source for the trainer: labels on the device, images on disk.

    Same interface as the in-memory `ltbench.train.DeviceData`: `train_batches` gives the normalised
    views and labels of each step's indices, `eval_batches` the uint8 val/test images of a range,
    `normalize`, `counts`, `info`, and `train_x` / `val_x` / `test_x` as `ImageList`s.
    """

    def __init__(self, index_path, split_path, device, channels_last=False, workers=0):
        index = filelist.load_index(index_path)
        split = lt.load_split(split_path)
        if str(split.get("lists_sha256", "")) != index["lists_sha256"]:
            raise ValueError(f"split {split_path} was not made from the lists of {index_path}: "
                             f"delete it and rerun the lt_split rule")
        self.device = device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.root, self.size = index["root"], index["image_size"]
        self.workers = workers or dist.local_workers()
        self.val_is_test = index["val_is_test"]
        val_key = "test" if self.val_is_test else "val"
        self.paths = {"train": index["train_paths"][split["train_idx"]],
                      "val": index[f"{val_key}_paths"][split["val_idx"]],
                      "test": index["test_paths"][split["test_idx"]]}
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
        self.train_y = to(index["train_y"][split["train_idx"]])
        self.val_y = to(index[f"{val_key}_y"][split["val_idx"]])
        self.test_y = to(index["test_y"][split["test_idx"]])
        self.train_x, self.val_x, self.test_x = (
            ImageList(EvalImages(self.root, self.paths[s], self.size), device, self.workers) for s in filelist.SPLITS)
        self.mean = torch.tensor(index["mean"], device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(index["std"], device=device).view(1, -1, 1, 1)
        self.counts = tuple(int(c) for c in split["counts"])
        self.sha256 = index["lists_sha256"]
        self.classes = list(index["classes"])
        self.info = DataInfo(num_classes=len(self.counts), counts=self.counts, in_channels=3, image_size=self.size)

    def normalize(self, x):
        return ((x.float() / 255 - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def _loader(self, dataset, **kw):
        return DataLoader(dataset, num_workers=self.workers, pin_memory=self.device.type == "cuda",
                          prefetch_factor=4, **kw)

    def train_batches(self, order, slices, views, generator, cfg, epoch, stream=0):
        """(normalised views, labels) of each (start, stop) slice of `order`. Randomness is keyed
        by position in `order` (see the module doc), so `generator` is not drawn from."""
        transforms = view_transforms(views, self.size, self.mean.flatten().tolist())
        order = order.tolist()
        keys = [[(order[p], p) for p in range(start, stop)] for start, stop in slices]
        images = TrainImages(self.root, self.paths["train"], transforms, cfg.seed, epoch, stream)
        for batch, (start, stop) in zip(self._loader(images, batch_sampler=keys, collate_fn=stack_views), slices):
            y = self.train_y[torch.as_tensor(order[start:stop], device=self.device)]
            yield [self.normalize(v.to(self.device, non_blocking=True)) for v in batch], y

    def eval_batches(self, which, lo, hi, batch_size):
        """uint8 batches of val or test images lo..hi-1 under the evaluation transform."""
        images = EvalImages(self.root, self.paths[which][lo:hi], self.size)
        for x in self._loader(images, batch_size=batch_size):
            yield x.to(self.device, non_blocking=True)
