"""Image sources, each read into memory as uint8 arrays.

`load_source` returns {train_x (N,C,H,W uint8), train_y (N int64), test_x, test_y, classes}.
Every source keeps the file order of its origin, because the LT construction picks images by
index (CIFAR: `data_batch_1..5` concatenated, as torchvision and kaidic/LDAM-DRW@2536330 load
it). `save_prepared` / `load_prepared` store those arrays with per-channel train statistics
as one .npz guarded by a SHA-256 sidecar.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import tempfile
from multiprocessing import Pool

import numpy as np

FMNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FMNIST_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
                "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_POOL_FROM = 2000  # below this many files, a worker pool costs more than it saves


# ----------------------------------------------------------------------------- Fashion-MNIST

def read_idx(path):
    """An IDX file (gzipped when the name ends in .gz) as a NumPy array: magic 0,0,type,ndim,
    then ndim big-endian uint32 sizes, then the data."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic {raw[:4].hex()}): re-fetch the dataset files")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, _IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {data.size} values; re-fetch it")
    return data.reshape(shape)


def _find_idx(root, name):
    for folder in (root, os.path.join(root, "FashionMNIST", "raw")):
        for candidate in (name, name + ".gz"):
            path = os.path.join(folder, candidate)
            if os.path.exists(path):
                return path
    return None


def fmnist(root, download=False):
    """Fashion-MNIST from IDX files in `root` or `root/FashionMNIST/raw/` (torchvision's layout),
    gzipped or not, else from Debian's dataset-fashion-mnist; else downloaded into `root`."""
    root = root or FMNIST_DEBIAN

    def find():
        found = {k: _find_idx(root, name) for k, name in FMNIST_FILES.items()}
        return found if None not in found.values() else {k: _find_idx(FMNIST_DEBIAN, n) for k, n in FMNIST_FILES.items()}

    paths = find()
    if None in paths.values() and download:
        import torchvision
        torchvision.datasets.FashionMNIST(root, train=True, download=True)
        paths = find()
    if None in paths.values():
        missing = next(FMNIST_FILES[k] for k, p in paths.items() if p is None)
        raise FileNotFoundError(f"Fashion-MNIST file {missing}(.gz) not found in {root} or {root}/FashionMNIST/raw: "
                                f"`apt-get install dataset-fashion-mnist` (root {FMNIST_DEBIAN}) or set download: true")
    a = {k: read_idx(p) for k, p in paths.items()}
    return {"train_x": a["train_x"][:, None].copy(), "train_y": a["train_y"].astype(np.int64),
            "test_x": a["test_x"][:, None].copy(), "test_y": a["test_y"].astype(np.int64),
            "classes": list(FMNIST_CLASSES)}


# ----------------------------------------------------------------------------- CIFAR

def _text(v):
    return v.decode("latin1") if isinstance(v, bytes) else v


def _unpickle(path):
    """A CIFAR pickle with str keys and str values, whether written by Python 2 or 3."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    return {_text(k): ([_text(x) for x in v] if isinstance(v, list) else v) for k, v in d.items()}


# LDAM / BBN / ProCo / BALMS normalisation constants (spec §1.1); GLMC's CIFAR-10 std differs.
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
CIFAR_STD = np.array([0.2023, 0.1994, 0.2010], dtype=np.float32)


def _cifar_arrays(paths, label_key):
    batches = [_unpickle(p) for p in paths]
    x = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches]).reshape(-1, 3, 32, 32)
    y = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    return x, y


def _cifar(root, download, folder, train_files, test_file, meta_file, label_key, names_key, dataset_cls):
    base = os.path.join(root, folder)
    files = [*train_files, test_file, meta_file]
    if download and not all(os.path.exists(os.path.join(base, f)) for f in files):
        import torchvision
        getattr(torchvision.datasets, dataset_cls)(root, train=True, download=True)
    missing = [f for f in files if not os.path.exists(os.path.join(base, f))]
    if missing:
        raise FileNotFoundError(f"{dataset_cls} file {os.path.join(base, missing[0])} not found: "
                                f"point root at the folder holding {folder}/ or set download: true")
    train_x, train_y = _cifar_arrays([os.path.join(base, f) for f in train_files], label_key)
    test_x, test_y = _cifar_arrays([os.path.join(base, test_file)], label_key)
    classes = _unpickle(os.path.join(base, meta_file))[names_key]
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "classes": classes,
            "mean": CIFAR_MEAN, "std": CIFAR_STD}


def cifar10(root, download=False):
    """CIFAR-10 from torchvision's python-pickle folder, data_batch_1..5 in that order."""
    return _cifar(root, download, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                  "test_batch", "batches.meta", "labels", "label_names", "CIFAR10")


def cifar100(root, download=False):
    """CIFAR-100 (fine labels) from torchvision's python-pickle folder."""
    return _cifar(root, download, "cifar-100-python", ["train"], "test", "meta",
                  "fine_labels", "fine_label_names", "CIFAR100")


# ----------------------------------------------------------------------------- image folders

def _decode(job):
    """One image file as an HxWxC uint8 array: grayscale stays 1 channel, all else becomes RGB.
    With a size, the shorter side is resized to it and the centre square kept."""
    path, size = job
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("L" if im.mode in ("1", "L") else "RGB")
        if size and im.size != (size, size):
            w, h = im.size
            s = size / min(w, h)
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
            left, top = (im.width - size) // 2, (im.height - size) // 2
            im = im.crop((left, top, left + size, top + size))
        a = np.asarray(im)
    return a[:, :, None] if a.ndim == 2 else a


def _list_split(root, split, classes=None):
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder} not found: expected {root}/{{train,test}}/<class>/<image>")
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"{folder} has class folders {', '.join(unknown[:5])} that train/ lacks: "
                         f"every class needs training images")
    files, labels = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(folder, name)
        if not os.path.isdir(class_dir):
            continue
        names = sorted(n for n in os.listdir(class_dir) if n.lower().endswith(IMAGE_EXTENSIONS))
        files += [os.path.join(class_dir, n) for n in names]
        labels += [label] * len(names)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}/<class>/")
    return files, np.asarray(labels, dtype=np.int64), classes


def _decode_all(files, image_size):
    jobs = [(f, image_size) for f in files]
    if len(jobs) < _POOL_FROM:
        return [_decode(j) for j in jobs]
    with Pool(2) as pool:
        return pool.map(_decode, jobs, chunksize=256)


def imagefolder(root, download=False, image_size=None):
    """`root/{train,test}/<class>/<image>`: label ids follow the sorted class folder names,
    files are read in name order. Images are RGB unless every one of them is grayscale."""
    if download:
        raise ValueError("the imagefolder source cannot download: set download: false and fill "
                         f"{root}/train/<class>/ and {root}/test/<class>/")
    train_files, train_y, classes = _list_split(root, "train")
    test_files, test_y, _ = _list_split(root, "test", classes)
    images = _decode_all(train_files + test_files, image_size)
    shapes = {a.shape[:2] for a in images}
    if len(shapes) > 1:
        raise ValueError(f"images under {root} differ in size ({', '.join(f'{h}x{w}' for h, w in sorted(shapes)[:3])}"
                         f"…): set image_size to resize them")
    if any(a.shape[2] == 3 for a in images):
        images = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in images]
    x = np.stack(images).transpose(0, 3, 1, 2).copy()
    n = len(train_files)
    return {"train_x": x[:n], "train_y": train_y, "test_x": x[n:], "test_y": test_y, "classes": classes}


# ----------------------------------------------------------------------------- synthetic

def synthetic(num_classes=10, per_class=200, test_per_class=50, size=16, channels=3, seed=0):
    """Deterministic class-dependent images for tests: learnable by a small CNN, not trivially.

    Class c has its own mean colour and a sinusoidal stripe pattern (its own frequency and
    orientation, random phase per image), drawn weakly enough that Gaussian noise and a random
    brightness shift per image leave neighbouring classes confusable. `per_class` is an int or
    one count per class (an already long-tailed training set); images are shuffled.
    With the defaults a two-conv-layer CNN (SGD, 5 epochs, batch 64) reaches about 90% test
    accuracy, and about 50% when trained on 200 -> 8 images per class (the tail classes at 0%);
    nearest class mean on raw pixels gets about 35%.
    """
    rng = np.random.RandomState(seed)
    colour = rng.uniform(112, 144, size=(num_classes, channels))
    freq = 1 + np.arange(num_classes) % max(1, size // 4)
    vertical = (np.arange(num_classes) // max(1, size // 4)) % 2 == 1
    grid = np.arange(size) * (2 * np.pi / size)

    def draw(counts):
        y = np.repeat(np.arange(num_classes), counts)
        rng.shuffle(y)
        n = len(y)
        phase = rng.uniform(0, 2 * np.pi, size=n)
        wave = np.sin(freq[y, None] * grid[None, :] + phase[:, None])            # (n, size)
        stripes = np.where(vertical[y, None, None], wave[:, None, :], wave[:, :, None])
        x = (colour[y][:, :, None, None] + 28 * stripes[:, None]
             + rng.normal(0, 20, size=(n, 1, 1, 1)) + rng.normal(0, 50, size=(n, channels, size, size)))
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), y.astype(np.int64)

    counts = np.broadcast_to(np.asarray(per_class, dtype=np.int64), (num_classes,))
    train_x, train_y = draw(counts)
    test_x, test_y = draw(np.full(num_classes, test_per_class))
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
            "classes": [f"class{c}" for c in range(num_classes)]}


# ----------------------------------------------------------------------------- entry point

SOURCES = {"fmnist": fmnist, "cifar10": cifar10, "cifar100": cifar100, "imagefolder": imagefolder,
           "synthetic": synthetic}


def load_source(source, root, download=False, image_size=None, options=None):
    """Arrays of one source. `options` are keyword arguments of the synthetic source; image_size
    resizes an image folder, sets the synthetic size, and must match the fixed-size sources."""
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}: use one of {', '.join(SOURCES)}")
    options = dict(options or {})
    if source == "synthetic":
        if image_size is not None:
            options.setdefault("size", image_size)
        arrays = synthetic(**options)
    elif options:
        raise ValueError(f"source {source!r} takes no options (got {', '.join(options)}): remove them")
    elif source == "imagefolder":
        arrays = imagefolder(root, download, image_size)
    else:
        arrays = SOURCES[source](root, download)
    h, w = arrays["train_x"].shape[2:]
    if image_size is not None and (h, w) != (image_size, image_size):
        raise ValueError(f"source {source!r} has {h}x{w} images, not image_size {image_size}: "
                         f"set image_size to {h} or leave it unset")
    return arrays


# ----------------------------------------------------------------------------- prepared arrays

def channel_stats(x):
    """Per-channel mean and std of uint8 images on the [0, 1] scale, exact (from 256-bin
    histograms, so no float copy of the whole set is made)."""
    values = np.arange(256, dtype=np.float64) / 255
    mean, std = [], []
    for c in range(x.shape[1]):
        h = np.bincount(x[:, c].ravel(), minlength=256).astype(np.float64)
        m = (h * values).sum() / h.sum()
        mean.append(m)
        std.append(np.sqrt((h * (values - m) ** 2).sum() / h.sum()))
    return np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)


def atomic_savez(path, arrays):
    """np.savez (uncompressed) to `path` via a temp file in the same folder and os.replace, so a
    killed job never leaves a half-written file under the final name."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_prepared(arrays, path):
    """The source arrays plus train-set `mean`/`std` (float32, per channel) as an uncompressed
    .npz, and `path.sha256` holding the file's SHA-256 in `sha256sum` format."""
    # a source may fix the constants its papers normalise with (CIFAR: LDAM's); else the train set's
    mean, std = (arrays["mean"], arrays["std"]) if "mean" in arrays else channel_stats(arrays["train_x"])
    out = {k: arrays[k] for k in ("train_x", "train_y", "test_x", "test_y")}
    out.update(classes=np.asarray(arrays["classes"], dtype=str), mean=mean, std=std)
    atomic_savez(path, out)
    with open(path + ".sha256", "w") as f:
        f.write(f"{file_sha256(path)}  {os.path.basename(path)}\n")


def load_prepared(path):
    """Arrays written by `save_prepared`, after checking the file against its SHA-256 sidecar."""
    fix = "rerun `ltbench prepare`"
    sidecar = path + ".sha256"
    if not os.path.exists(path):
        raise FileNotFoundError(f"prepared data {path} does not exist: {fix}")
    if not os.path.exists(sidecar):
        raise FileNotFoundError(f"checksum file {sidecar} is missing, so {path} cannot be trusted: {fix}")
    with open(sidecar) as f:
        expected = f.read().split()[0] if os.path.getsize(sidecar) else ""
    actual = file_sha256(path)
    if actual != expected:
        raise ValueError(f"prepared data {path} does not match {sidecar} (sha256 {actual[:12]}…, "
                         f"expected {expected[:12] or 'nothing'}…): the file is corrupt or stale; {fix}")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["classes"] = arrays["classes"].tolist()
    return arrays
