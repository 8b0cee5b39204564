import numpy as np
import pytest
import torch
from scipy.stats import binomtest, chisquare

from ltbench.data.samplers import SAMPLERS, epoch_indices

COUNTS = [400, 200, 100, 50, 25, 10]
ALPHA = 1e-3


def lt_labels():
    y = torch.repeat_interleave(torch.arange(len(COUNTS)), torch.tensor(COUNTS))
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(7))]


def draw(name, epoch=0, epochs=1, seed=0, num_samples=None, labels=None):
    labels = lt_labels() if labels is None else labels
    return epoch_indices(name, labels, epoch, epochs, torch.Generator().manual_seed(seed), num_samples)


def class_counts(labels, idx):
    return np.bincount(labels[idx].numpy(), minlength=len(COUNTS))


def assert_class_distribution(name, probs, epoch=0, epochs=1, n=200_000):
    labels = lt_labels()
    idx = draw(name, epoch, epochs, num_samples=n, labels=labels)
    assert len(idx) == n
    probs = np.asarray(probs, dtype=np.float64) / np.sum(probs)
    assert chisquare(class_counts(labels, idx), probs * n).pvalue > ALPHA
    # within the smallest class every image is equally likely
    last = len(COUNTS) - 1
    members = (labels == last).nonzero().flatten()
    hits = np.bincount(idx[labels[idx] == last].numpy(), minlength=len(labels))[members.numpy()]
    assert chisquare(hits).pvalue > ALPHA


def test_registry_names():
    assert set(SAMPLERS) == {"instance", "class_balanced", "sqrt", "progressive", "reversed",
                             "oversample", "undersample"}


def test_unknown_sampler_lists_names():
    with pytest.raises(ValueError, match="unknown sampler 'balanced'.*class_balanced.*undersample"):
        draw("balanced")


def test_missing_class_rejected():
    with pytest.raises(ValueError, match=r"classes \[1\] have no training images"):
        draw("instance", labels=torch.tensor([0, 0, 2, 2]))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_deterministic_and_resumable(name):
    labels = lt_labels()
    a = draw(name, epoch=1, epochs=4, seed=3, labels=labels)
    b = draw(name, epoch=1, epochs=4, seed=3, labels=labels)
    assert a.dtype == torch.long and len(a) == len(labels)
    assert torch.equal(a, b)
    assert not torch.equal(a, draw(name, epoch=1, epochs=4, seed=4, labels=labels))
    # a resumed run restores the generator state and draws the same next epoch
    g = torch.Generator().manual_seed(5)
    epoch_indices(name, labels, 0, 4, g)
    state = g.get_state()
    first = epoch_indices(name, labels, 1, 4, g)
    g2 = torch.Generator()
    g2.set_state(state)
    assert torch.equal(first, epoch_indices(name, labels, 1, 4, g2))


def test_instance_is_a_permutation():
    labels = lt_labels()
    n = len(labels)
    idx = draw("instance", labels=labels)
    assert torch.equal(idx.sort().values, torch.arange(n))
    long = draw("instance", num_samples=2 * n + 5, labels=labels)
    assert torch.equal(long[:n].sort().values, torch.arange(n))
    assert torch.equal(long[n:2 * n].sort().values, torch.arange(n))


def test_class_balanced_structure():
    labels = lt_labels()
    c = len(COUNTS)
    n = 4 * c * 100 + 6
    idx = draw("class_balanced", num_samples=n, labels=labels)
    assert len(idx) == n
    y = labels[idx]
    # runs of 4 images from one class
    visits = y[: n - n % 4].view(-1, 4)
    assert (visits == visits[:, :1]).all()
    # classes are visited in shuffled passes: each block of C visits is a permutation of the classes
    order = visits[:, 0]
    for start in range(0, len(order) - c + 1, c):
        assert sorted(order[start:start + c].tolist()) == list(range(c))
    # each class's own draws pass over all its images before any repeats
    for k, n_k in enumerate(COUNTS):
        drawn = idx[y == k]
        members = sorted((labels == k).nonzero().flatten().tolist())
        for start in range(0, len(drawn) - n_k + 1, n_k):
            assert sorted(drawn[start:start + n_k].tolist()) == members


def test_class_balanced_frequencies_uniform():
    labels = lt_labels()
    counts = class_counts(labels, draw("class_balanced", num_samples=60_000, labels=labels))
    assert counts.tolist() == [10_000] * len(COUNTS)


def test_class_balanced_visit_order_is_shuffled():
    labels = lt_labels()
    c = len(COUNTS)
    order = labels[draw("class_balanced", num_samples=4 * c * 200, labels=labels)][::4].view(-1, c)
    firsts = np.bincount(order[:, 0].numpy(), minlength=c)
    assert chisquare(firsts).pvalue > ALPHA


def test_sqrt_distribution():
    assert_class_distribution("sqrt", np.sqrt(COUNTS))


def test_reversed_distribution():
    assert_class_distribution("reversed", max(COUNTS) / np.asarray(COUNTS, dtype=np.float64))


@pytest.mark.parametrize("epoch,epochs", [(0, 4), (2, 4), (3, 4)])
def test_progressive_distribution(epoch, epochs):
    t = epoch / epochs
    counts = np.asarray(COUNTS, dtype=np.float64)
    assert_class_distribution("progressive", (1 - t) * counts / counts.sum() + t / len(counts), epoch, epochs)


def test_progressive_moves_towards_balanced():
    labels = lt_labels()
    head = [class_counts(labels, draw("progressive", e, 10, num_samples=20_000, labels=labels))[0]
            for e in (0, 5, 9)]
    assert head[0] > head[1] > head[2]


def test_oversample_pads_every_class_to_n_max():
    labels = lt_labels()
    n_max, c = max(COUNTS), len(COUNTS)
    idx = draw("oversample", num_samples=n_max * c, labels=labels)
    assert class_counts(labels, idx).tolist() == [n_max] * c
    assert set(idx.tolist()) == set(range(len(labels)))


def test_oversample_padding_is_uniform_within_class():
    labels = lt_labels()
    n_max, c = max(COUNTS), len(COUNTS)
    idx = draw("oversample", num_samples=n_max * c * 100, labels=labels)
    assert class_counts(labels, idx).tolist() == [n_max * 100] * c
    members = (labels == c - 1).nonzero().flatten().numpy()
    hits = np.bincount(idx.numpy(), minlength=len(labels))[members]
    # every image appears once per pass; the padding on top is uniform
    assert chisquare(hits - 100).pvalue > ALPHA


def test_undersample_cuts_every_class_to_n_min():
    labels = lt_labels()
    n_min, c = min(COUNTS), len(COUNTS)
    idx = draw("undersample", num_samples=n_min * c, labels=labels)
    assert class_counts(labels, idx).tolist() == [n_min] * c
    assert len(set(idx.tolist())) == n_min * c
    # later passes draw fresh subsets: the head class is covered uniformly over many passes
    many = draw("undersample", num_samples=n_min * c * 400, labels=labels)
    members = (labels == 0).nonzero().flatten().numpy()
    hits = np.bincount(many.numpy(), minlength=len(labels))[members]
    assert hits.sum() == n_min * 400
    assert chisquare(hits).pvalue > ALPHA


def test_resampled_epochs_are_shuffled():
    labels = lt_labels()
    for name in ("oversample", "undersample"):
        y = labels[draw(name, labels=labels)].numpy()
        # in a shuffled balanced epoch, neighbours differ in class about (C-1)/C of the time
        assert binomtest(int((y[:-1] != y[1:]).sum()), len(y) - 1, 1 - 1 / len(COUNTS)).pvalue > ALPHA
