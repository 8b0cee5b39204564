"""Training samplers: the indices of one epoch, from the labels and a torch.Generator.

Every sampler is a pure function of (labels, epoch, epochs, generator state), so a run seeded
once and resumed with the generator's saved state draws the same epochs. Every epoch has
`num_samples` indices (default: the training set size), whatever the sampler, so methods that
differ only in their sampler see the same number of images per epoch.
"""
from __future__ import annotations

import torch


def _class_lists(labels):
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels)
    return list(torch.split(order, counts.tolist())), counts


def _by_class_prob(labels, probs, n, generator):
    """Draw a class from `probs` (with replacement), then an image uniformly within it."""
    members, counts = _class_lists(labels)
    cls = torch.multinomial(probs.double(), n, replacement=True, generator=generator)
    pick = (torch.rand(n, generator=generator, dtype=torch.float64) * counts[cls]).long()
    starts = torch.cumsum(counts, 0) - counts
    return torch.cat(members)[starts[cls] + pick]


def _cycle(members, need, generator):
    """`need` draws from a shuffled cyclic iterator over `members`, reshuffled at each pass."""
    passes = -(-need // len(members))
    perms = [members[torch.randperm(len(members), generator=generator)] for _ in range(passes)]
    return torch.cat(perms)[:need]


def instance(labels, epoch, epochs, generator, num_samples):
    """Instance-balanced: a random permutation (cycled when num_samples exceeds the set)."""
    return _cycle(torch.arange(len(labels)), num_samples, generator)


def class_balanced(labels, epoch, epochs, generator, num_samples, num_samples_cls=4):
    """ClassAwareSampler of facebookresearch/classifier-balancing@f162ade:data/ClassAwareSampler.py.

    Classes are visited in a shuffled cyclic order (reshuffled after every pass); each visit
    emits `num_samples_cls` consecutive images from that class's own shuffled cyclic iterator.
    Differences from the official sampler: an epoch has num_samples images, not
    max_k n_k x C (1.28M per "epoch" on ImageNet-LT), and the iterators start afresh each
    epoch instead of continuing where the last epoch stopped.
    """
    members, counts = _class_lists(labels)
    num_classes = len(counts)
    visits = -(-num_samples // num_samples_cls)
    order = _cycle(torch.arange(num_classes), visits, generator)
    visits_of = torch.split(torch.argsort(order, stable=True), torch.bincount(order, minlength=num_classes).tolist())
    out = torch.empty(visits, num_samples_cls, dtype=torch.long)
    for c, at in enumerate(visits_of):
        if len(at):
            out[at] = _cycle(members[c], len(at) * num_samples_cls, generator).view(-1, num_samples_cls)
    return out.flatten()[:num_samples]


def sqrt(labels, epoch, epochs, generator, num_samples):
    """Square-root sampling (Kang et al. 2020): class probability proportional to n_k^0.5."""
    counts = torch.bincount(labels).double()
    return _by_class_prob(labels, counts.sqrt() / counts.sqrt().sum(), num_samples, generator)


def progressive(labels, epoch, epochs, generator, num_samples):
    """Progressively-balanced sampling (Kang et al. 2020): class probability
    (1 - t) n_k / N + t / C with t = epoch / epochs, epoch 0-indexed."""
    counts = torch.bincount(labels).double()
    t = epoch / epochs
    probs = (1 - t) * counts / counts.sum() + t / len(counts)
    return _by_class_prob(labels, probs, num_samples, generator)


def reversed_(labels, epoch, epochs, generator, num_samples):
    """BBN's reversed sampler (Megvii-Nanjing/BBN@7992e90:lib/dataset/imbalance_cifar.py,
    `sample_class_index_by_weight`): class probability proportional to n_max / n_k, then an
    image uniformly within the class."""
    counts = torch.bincount(labels).double()
    w = counts.max() / counts
    return _by_class_prob(labels, w / w.sum(), num_samples, generator)


def _resampled(labels, generator, num_samples, per_class):
    """Passes over a balanced resampling of the set (`per_class(members)` images per class,
    redrawn and shuffled each pass) until num_samples images are drawn."""
    members, _ = _class_lists(labels)
    out, have = [], 0
    while have < num_samples:
        chosen = torch.cat([per_class(m) for m in members])
        out.append(chosen[torch.randperm(len(chosen), generator=generator)])
        have += len(chosen)
    return torch.cat(out)[:num_samples]


def oversample(labels, epoch, epochs, generator, num_samples):
    """Random over-sampling: every class keeps its images and is padded to n_max with images
    drawn from it with replacement."""
    n_max = int(torch.bincount(labels).max())

    def pad(m):
        extra = torch.randint(len(m), (n_max - len(m),), generator=generator)
        return torch.cat([m, m[extra]])
    return _resampled(labels, generator, num_samples, pad)


def undersample(labels, epoch, epochs, generator, num_samples):
    """Random under-sampling: every class cut to n_min images, a fresh subset each pass."""
    n_min = int(torch.bincount(labels).min())
    return _resampled(labels, generator, num_samples,
                      lambda m: m[torch.randperm(len(m), generator=generator)[:n_min]])


SAMPLERS = {"instance": instance, "class_balanced": class_balanced, "sqrt": sqrt, "progressive": progressive,
            "reversed": reversed_, "oversample": oversample, "undersample": undersample}


def epoch_indices(name, labels, epoch, epochs, generator, num_samples=None):
    """Indices (LongTensor, on the CPU) of training images for epoch `epoch` (0-indexed);
    `generator` is a CPU torch.Generator, the only source of randomness."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}")
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    counts = torch.bincount(labels)
    if (counts == 0).any():
        empty = (counts == 0).nonzero().flatten()[:5].tolist()
        raise ValueError(f"classes {empty} have no training images: labels must be 0..C-1 with every class present")
    return SAMPLERS[name](labels, epoch, epochs, generator, num_samples or len(labels))
