"""ImageNet-LT and iNaturalist-2018 from the split files every official repo ships.

A split file has one `relative/path label` line per image (facebookresearch/classifier-balancing
@f162ade:data/ImageNet_LT/, data/iNaturalist18/; the same blobs are in the BCL, ProCo, TSC, GLMC
and TDE repos). These datasets are long-tailed as given, so nothing is subsampled: `prepare`
checks the files and writes a small index (paths, labels, class names, normalisation), the images
stay on disk and are decoded per batch (`ltbench.data.loader`), and `make_split` records the
lists' counts, shot groups and hashes with the measured IF = n_max / n_min.

The official files are recognised by their git blob SHA-1 (`git hash-object`), then their image
counts are checked (spec §1.3-1.4). The ImageNet-LT val/test blobs are known only by their first
seven hex digits, so those two match by prefix; no blob is on record for iNaturalist18_val.txt, so
only its count is checked. Any other file is used as the user's own list, with a note.

ImageNet-LT selects on val (20 per class, from ImageNet train/) and reports on test (ImageNet
val/). iNaturalist-2018 has no separate validation set: its `iNaturalist18_val.txt` is the test
set and serves as val too (as in the official repos; classifier-balancing issue #5); the split
records `val_is_test` so the report can say so.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ltbench.data import lt, sources

# per source: the list file of each split (None: no such file) and the normalisation its papers use
SOURCES = {
    "imagenet_lt": {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt",
                    "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    "inat2018": {"train": "iNaturalist18_train.txt", "val": None, "test": "iNaturalist18_val.txt",
                 "mean": (0.466, 0.471, 0.380), "std": (0.195, 0.194, 0.192)},
}

# (source, split) -> (git blob SHA-1 or its prefix, None if none is on record; images in the official file)
OFFICIAL = {
    ("imagenet_lt", "train"): ("a063f095fcd475db4cf8b0658c4b73955535bbf9", 115846),
    ("imagenet_lt", "val"): ("3ed3188", 20000),
    ("imagenet_lt", "test"): ("76a2fb9", 50000),
    ("inat2018", "train"): ("4accdb7584d2f0a5106c40a33ed6afa392189bcc", 437513),
    ("inat2018", "test"): (None, 24426),
}
SPLITS = ("train", "val", "test")
SHOWN_MISSING = 3


def git_blob_sha1(path):
    """The object id git gives the file's content: SHA-1 of b"blob <size>\\0" + content."""
    h = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_list(path):
    """(relative paths, int64 labels) of a `path label` file; blank lines are skipped."""
    paths, labels = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{path} line {number}: expected '<relative path> <integer label>', "
                                 f"got {line.strip()[:80]!r}: fix or regenerate the file")
            paths.append(parts[0])
            labels.append(int(parts[1]))
    if not paths:
        raise ValueError(f"{path} lists no images: expected '<relative path> <integer label>' lines")
    return paths, np.asarray(labels, dtype=np.int64)


def recognise(source, split, path, count):
    """(official?, one-line note) for a list file with `count` images."""
    name = os.path.basename(path)
    blob = git_blob_sha1(path)
    known, total = OFFICIAL.get((source, split), (None, None))
    if known is None:
        if total is not None and count == total:
            return True, f"{name}: {count:,} images, as the official file (no blob SHA-1 on record, count checked only)"
        return False, f"{name}: not the official file ({count:,} images); used as your own list"
    if not blob.startswith(known):
        return False, f"{name}: git blob {blob[:12]}… is not the official {known[:12]}…; used as your own list"
    if count != total:
        raise ValueError(f"{path} has the official git blob {known[:12]}… but {count:,} images, not {total:,}: "
                         f"the reader and the file disagree; report this with the file")
    how = "full SHA-1" if len(known) == 40 else f"SHA-1 prefix {known}"
    return True, f"{name}: official (git blob {blob[:12]}…, matched by {how}), {count:,} images as expected"


def missing_images(root, paths):
    """Relative paths that are not files under root; stat calls overlap (network filesystems)."""
    with ThreadPoolExecutor(32) as pool:
        exists = list(pool.map(lambda p: os.path.isfile(os.path.join(root, p)), paths, chunksize=1024))
    return [p for p, ok in zip(paths, exists) if not ok]


def class_names(paths, labels, num_classes):
    """Class k is named by the folder of its first training image, less the split folder
    (ImageNet: the WordNet id; iNaturalist: `<supercategory>/<id>`)."""
    names = [""] * num_classes
    for p, k in zip(paths, labels):
        if not names[k]:
            folder = os.path.dirname(p)
            names[k] = folder.split("/", 1)[1] if "/" in folder else folder or str(k)
    return names


def prepare(source, root, lists, image_size=None):
    """The index of a file-list source, and one note per list file.

    root: the image folder the lists' relative paths start from; lists: the folder holding the
    list files named in SOURCES. Every listed image must exist; the error names how many are
    missing, the first few, and the root to fix.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown file-list source {source!r}: use one of {', '.join(SOURCES)}")
    spec = SOURCES[source]
    if not lists:
        raise ValueError(f"source {source!r} needs the folder of its split files: set options: {{lists: <folder>}} "
                         f"holding {', '.join(f for f in (spec[s] for s in SPLITS) if f)}")
    read, notes, list_files = {}, [], []
    for split in SPLITS:
        if spec[split] is None:
            continue
        path = os.path.join(lists, spec[split])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{source} split file {path} not found: put {spec[split]} (from "
                                    f"facebookresearch/classifier-balancing data/) in {lists} or fix options.lists")
        read[split] = read_list(path)
        official, note = recognise(source, split, path, len(read[split][0]))
        notes.append(note)
        list_files.append((path, official))
    if "val" not in read:
        notes.append(f"{source} has no validation list: the test list ({spec['test']}) serves as val too")

    train_paths, train_y = read["train"]
    num_classes = int(train_y.max()) + 1
    counts = np.bincount(train_y, minlength=num_classes)
    if train_y.min() < 0 or (counts == 0).any():
        empty = np.flatnonzero(counts == 0)[:5].tolist()
        raise ValueError(f"{spec['train']}: labels must be 0..C-1 with every class in training; "
                         f"{'negative labels' if train_y.min() < 0 else f'classes {empty} have no image'}")
    for split, (_, y) in read.items():
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"{spec[split]}: labels must lie in 0..{num_classes - 1} (the training classes), "
                             f"found {int(y.min())}..{int(y.max())}")

    every = [p for paths, _ in read.values() for p in paths]
    gone = missing_images(root, every)
    if gone:
        raise FileNotFoundError(f"{len(gone):,} of {len(every):,} listed images are missing under {os.path.abspath(root)} "
                                f"(e.g. {', '.join(gone[:SHOWN_MISSING])}): set root to the folder the list paths "
                                f"start from")

    test_paths, test_y = read["test"]
    val_paths, val_y = read.get("val", ([], np.zeros(0, dtype=np.int64)))
    lists_sha = hashlib.sha256()
    for path, _ in list_files:
        lists_sha.update(sources.file_sha256(path).encode())
    encode = lambda paths: np.asarray([p.encode() for p in paths], dtype=bytes)
    index = {"kind": "filelist", "source": source, "root": os.path.abspath(root),
             "image_size": int(image_size or 224),
             "train_paths": encode(train_paths), "train_y": train_y, "val_paths": encode(val_paths), "val_y": val_y,
             "test_paths": encode(test_paths), "test_y": test_y, "val_is_test": "val" not in read,
             "classes": np.asarray(class_names(train_paths, train_y, num_classes), dtype=str),
             "mean": np.asarray(spec["mean"], dtype=np.float32), "std": np.asarray(spec["std"], dtype=np.float32),
             "lists": np.asarray([os.path.basename(p) for p, _ in list_files], dtype=str),
             "lists_official": np.asarray([o for _, o in list_files]), "lists_sha256": lists_sha.hexdigest()}
    return index, notes


def save_index(index, path):
    """The index as an .npz with a `sha256sum`-format sidecar, as `sources.save_prepared` writes."""
    sources.atomic_savez(path, index)
    with open(path + ".sha256", "w") as f:
        f.write(f"{sources.file_sha256(path)}  {os.path.basename(path)}\n")


def is_index(path):
    """Whether a prepared .npz is a file-list index rather than in-memory pixels."""
    with np.load(path, allow_pickle=False) as z:
        return "kind" in z.files and str(z["kind"]) == "filelist"


def load_index(path):
    """An index written by `save_index`, checked against its sidecar; paths stay bytes."""
    index = sources.load_prepared(path)
    for key in ("kind", "source", "root", "lists_sha256"):
        index[key] = str(index[key])
    index["image_size"] = int(index["image_size"])
    index["val_is_test"] = bool(index["val_is_test"])
    return index


def make_split(index, imb, val_per_class=0, max_per_class=None, test_per_class=None):
    """The split record of lists used as given: every listed image, counts, groups, the
    measured IF (which `imb` must name), the lists' hash, and whether val is the test set."""
    if val_per_class or max_per_class or test_per_class:
        raise ValueError(f"{index['source']} is used as its lists give it: remove val_per_class, max_per_class and "
                         f"test_per_class from its data entry in config.yaml")
    counts = np.bincount(index["train_y"], minlength=len(index["classes"])).astype(np.int64)
    measured = float(counts.max() / counts.min())
    if abs(imb - measured) > 0.005 * measured:
        raise ValueError(f"{index['source']} is long-tailed as listed: IF = {counts.max()}/{counts.min()} = "
                         f"{measured:g}, not {imb:g}; use imbalance_factors: [{measured:g}] for it")
    train_idx = np.arange(len(index["train_y"]), dtype=np.int64)
    test_idx = np.arange(len(index["test_y"]), dtype=np.int64)
    val_idx = test_idx if index["val_is_test"] else np.arange(len(index["val_y"]), dtype=np.int64)
    return {"train_idx": train_idx, "val_idx": val_idx, "test_idx": test_idx, "counts": counts,
            "groups": lt.groups(counts), "imb": measured, "profile": "given", "seed": 0,
            "val_from_train": np.zeros(0, dtype=np.int64), "val_is_test": index["val_is_test"],
            "lists_sha256": index["lists_sha256"], "sha256": lt.split_sha256(train_idx, val_idx, test_idx)}
