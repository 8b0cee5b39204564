"""Long-tailed subsets of a balanced training set: the LDAM `IMBALANCECIFAR` construction.

kaidic/LDAM-DRW@2536330:imbalance_cifar.py (the same subset as BBN, ProCo and TSC's
`cifar_dirty`): class i keeps int(n_max * (1/IF)^(i/(C-1))) images, chosen by shuffling each
class's indices in turn with one NumPy legacy stream seeded once (seed 0). Class 0 is the head.

The split also carries what the official code does not have: a balanced validation set taken
from the images the subset left out, an optional per-class test subset, and a SHA-256 of the
index lists so a run can record exactly which images it trained on.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

from ltbench.data.sources import atomic_savez

GROUP_NAMES = ("many", "medium", "few")
PROFILES = ("exp", "step")


def img_num_per_cls(n_max, num_classes, imb, profile="exp"):
    """Training images per class, class 0 first (LDAM's `get_img_num_per_cls`).

    exp: n_i = int(n_max * (1/imb)^(i/(C-1))); step: the first C//2 classes keep n_max, the rest
    int(n_max/imb). `1/imb` is formed first, as LDAM multiplies by its `imb_factor`, so the
    truncation lands on exactly the same integers.
    """
    if imb < 1:
        raise ValueError(f"imbalance factor {imb} < 1: IF = n_max/n_min >= 1, e.g. 100 not 0.01")
    if num_classes < 2:
        raise ValueError(f"a long-tailed split needs at least 2 classes, got {num_classes}")
    rho = 1.0 / imb
    if profile == "exp":
        return [int(n_max * rho ** (i / (num_classes - 1))) for i in range(num_classes)]
    if profile == "step":
        head = num_classes // 2
        return [int(n_max)] * head + [int(n_max * rho)] * (num_classes - head)
    raise ValueError(f"unknown imbalance profile {profile!r}: use one of {', '.join(PROFILES)}")


def make_split(train_y, test_y, imb, profile="exp", max_per_class=None, val_per_class=0,
               test_per_class=None, seed=0):
    """Indices of the LT training set, a balanced validation set and the test subset.

    Training indices are LDAM's exactly: one RandomState(seed) (the same stream as LDAM's
    `np.random.seed(seed)` + `np.random.shuffle`, without touching NumPy's global state)
    shuffles each class's indices in class order and the first n_c are kept, stacked class by
    class. Validation images come from each class's left-overs afterwards, so asking for a
    validation set never changes the training subset (with n_max = the full class size, class 0
    has no left-overs: set max_per_class below it to get a validation set).
    Returns train_idx, val_idx, test_idx (int64), counts, groups (at 100/20), imb, profile,
    seed and sha256.
    """
    train_y = np.asarray(train_y, dtype=np.int64)
    test_y = np.asarray(test_y, dtype=np.int64)
    num_classes = int(train_y.max()) + 1
    sizes = np.bincount(train_y, minlength=num_classes)
    n_max = int(max_per_class or sizes.max())
    counts = img_num_per_cls(n_max, num_classes, imb, profile)

    rng = np.random.RandomState(seed)
    shuffled, train = [], []
    for c, n_c in enumerate(counts):
        if sizes[c] < n_c:
            raise ValueError(f"class {c} has {sizes[c]} training images but the {profile} profile at IF {imb} "
                             f"asks for {n_c}: lower max_per_class (now n_max = {n_max})")
        idx = np.where(train_y == c)[0]
        rng.shuffle(idx)
        shuffled.append(idx)
        train.append(idx[:n_c])

    val, val_from_train = [], []
    for c, (idx, n_c) in enumerate(zip(shuffled, counts)):
        left = idx[n_c:]
        if len(left) >= val_per_class:
            val.append(left[:val_per_class])
        elif n_c >= val_per_class and len(left) == 0:
            val.append(idx[n_c - val_per_class:n_c])
            val_from_train.append(c)
        else:
            raise ValueError(f"class {c} has {len(left)} images left after the LT subset but val_per_class is "
                             f"{val_per_class}: lower val_per_class or max_per_class")

    if test_per_class is None:
        test_idx = np.arange(len(test_y), dtype=np.int64)
    else:
        test_rng = np.random.RandomState(seed)
        test = []
        for c in range(num_classes):
            idx = np.where(test_y == c)[0]
            if len(idx) < test_per_class:
                raise ValueError(f"class {c} has {len(idx)} test images but test_per_class is {test_per_class}")
            test_rng.shuffle(idx)
            test.append(idx[:test_per_class])
        test_idx = np.concatenate(test).astype(np.int64)

    train_idx = np.concatenate(train).astype(np.int64)
    val_idx = np.concatenate(val).astype(np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    return {"train_idx": train_idx, "val_idx": val_idx, "test_idx": test_idx, "counts": counts,
            "groups": groups(counts), "imb": float(imb), "profile": profile, "seed": int(seed),
            "val_from_train": np.asarray(val_from_train, dtype=np.int64),
            "sha256": split_sha256(train_idx, val_idx, test_idx)}


def split_sha256(train_idx, val_idx, test_idx):
    """Hex SHA-256 over the little-endian int64 bytes of the three index lists, in that order."""
    h = hashlib.sha256()
    for a in (train_idx, val_idx, test_idx):
        h.update(np.ascontiguousarray(a, dtype="<i8").tobytes())
    return h.hexdigest()


def groups(counts, many=100, few=20):
    """Shot group per class: 0 = many (n > many), 1 = medium, 2 = few (n < few); OLTR's protocol
    as in classifier-balancing's `shot_acc` (facebookresearch/classifier-balancing@f162ade:utils.py)."""
    counts = np.asarray(counts)
    return np.where(counts > many, 0, np.where(counts < few, 2, 1)).astype(np.int64)


def save_split(split, path):
    """Write the split as an .npz, atomically."""
    atomic_savez(path, split)


def load_split(path):
    """Read a split written by `save_split`, refusing it unless its indices hash to its sha256."""
    fix = "delete it and rerun the lt_split rule"
    if not os.path.exists(path):
        raise FileNotFoundError(f"split file {path} does not exist: run the lt_split rule first")
    try:
        with np.load(path, allow_pickle=False) as z:
            split = {k: z[k] for k in z.files}
    except Exception as e:
        raise ValueError(f"split file {path} is unreadable ({type(e).__name__}: {e}): {fix}") from None
    missing = {"train_idx", "val_idx", "test_idx", "counts", "imb", "profile", "sha256"} - set(split)
    if missing:
        raise ValueError(f"split file {path} lacks {', '.join(sorted(missing))}: {fix}")
    split["imb"] = float(split["imb"])
    for key in ("profile", "sha256"):
        split[key] = str(split[key])
    if "seed" in split:
        split["seed"] = int(split["seed"])
    actual = split_sha256(split["train_idx"], split["val_idx"], split["test_idx"])
    if actual != split["sha256"]:
        raise ValueError(f"split file {path} is corrupt: its indices hash to {actual[:12]}…, "
                         f"not the recorded {split['sha256'][:12]}…: {fix}")
    return split
