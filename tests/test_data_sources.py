import gzip
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from ltbench.data.sources import (FMNIST_DEBIAN, channel_stats, load_prepared, load_source, read_idx,
                                  save_prepared)


# ----------------------------------------------------------------------------- CIFAR

def cifar_rows(n, seed):
    return np.random.RandomState(seed).randint(0, 256, size=(n, 3072)).astype(np.uint8)


def dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.fixture
def cifar10_root(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    batches = []
    for i in range(1, 6):
        data, labels = cifar_rows(4, i), [(i + k) % 10 for k in range(4)]
        dump(base / f"data_batch_{i}", {b"batch_label": b"x", b"data": data, b"labels": labels})
        batches.append((data, labels))
    test = cifar_rows(3, 99), [9, 8, 7]
    dump(base / "test_batch", {b"data": test[0], b"labels": test[1]})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump(base / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return tmp_path, batches, test


def test_cifar10_reader(cifar10_root):
    root, batches, test = cifar10_root
    a = load_source("cifar10", str(root))
    assert a["train_x"].shape == (20, 3, 32, 32) and a["train_x"].dtype == np.uint8
    assert a["test_x"].shape == (3, 3, 32, 32)
    assert a["train_y"].dtype == np.int64
    # data_batch_1..5 concatenated in that order
    np.testing.assert_array_equal(a["train_x"].reshape(20, 3072), np.concatenate([d for d, _ in batches]))
    assert a["train_y"].tolist() == sum((l for _, l in batches), [])
    np.testing.assert_array_equal(a["test_x"].reshape(3, 3072), test[0])
    assert a["test_y"].tolist() == [9, 8, 7]
    # a row is 1024 red, 1024 green, 1024 blue values, each row-major over 32x32
    row = batches[0][0][2]
    assert a["train_x"][2, 0, 0, 1] == row[1]
    assert a["train_x"][2, 1, 0, 0] == row[1024]
    assert a["train_x"][2, 2, 31, 31] == row[3071]
    assert a["train_x"][2, 0, 1, 0] == row[32]
    assert a["classes"][:3] == ["airplane", "automobile", "bird"] and len(a["classes"]) == 10


def test_cifar100_reader(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    train, test = cifar_rows(6, 1), cifar_rows(2, 2)
    # Python-3 pickles have str keys; the reader takes both
    dump(base / "train", {"data": train, "fine_labels": [5, 99, 0, 1, 2, 3], "coarse_labels": [0] * 6})
    dump(base / "test", {"data": test, "fine_labels": [7, 8], "coarse_labels": [1, 1]})
    dump(base / "meta", {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["a"] * 20})
    a = load_source("cifar100", str(tmp_path))
    np.testing.assert_array_equal(a["train_x"].reshape(6, 3072), train)
    np.testing.assert_array_equal(a["test_x"].reshape(2, 3072), test)
    assert a["train_y"].tolist() == [5, 99, 0, 1, 2, 3]
    assert a["test_y"].tolist() == [7, 8]
    assert a["classes"][99] == "c99"


def test_cifar_missing_files(tmp_path, cifar10_root):
    root, _, _ = cifar10_root
    os.remove(root / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3 not found.*download: true") as e:
        load_source("cifar10", str(root))
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_source("cifar100", str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- Fashion-MNIST

def idx_bytes(array):
    kind = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, kind, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def fmnist_arrays():
    rng = np.random.RandomState(0)
    return {"train-images-idx3-ubyte": rng.randint(0, 256, (12, 28, 28)).astype(np.uint8),
            "train-labels-idx1-ubyte": (np.arange(12) % 10).astype(np.uint8),
            "t10k-images-idx3-ubyte": rng.randint(0, 256, (5, 28, 28)).astype(np.uint8),
            "t10k-labels-idx1-ubyte": np.array([3, 1, 4, 1, 5], dtype=np.uint8)}


def check_fmnist(a, arrays):
    assert a["train_x"].shape == (12, 1, 28, 28) and a["test_x"].shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(a["train_x"][:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(a["test_x"][:, 0], arrays["t10k-images-idx3-ubyte"])
    assert a["train_y"].tolist() == list(np.arange(12) % 10) and a["train_y"].dtype == np.int64
    assert a["test_y"].tolist() == [3, 1, 4, 1, 5]
    assert a["classes"][0] == "T-shirt/top" and len(a["classes"]) == 10


def test_fmnist_gz_in_root(tmp_path):
    arrays = fmnist_arrays()
    for name, array in arrays.items():
        with gzip.open(tmp_path / f"{name}.gz", "wb") as f:
            f.write(idx_bytes(array))
    check_fmnist(load_source("fmnist", str(tmp_path)), arrays)


def test_fmnist_torchvision_raw_layout(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = fmnist_arrays()
    for name, array in arrays.items():
        (raw / name).write_bytes(idx_bytes(array))
    check_fmnist(load_source("fmnist", str(tmp_path)), arrays)


def test_fmnist_missing_root_is_one_clear_line(tmp_path, monkeypatch):
    from ltbench.data import sources
    monkeypatch.setattr(sources, "FMNIST_DEBIAN", str(tmp_path / "no-debian-package"))
    root = str(tmp_path / "no-such-dir")
    with pytest.raises(FileNotFoundError) as e:
        load_source("fmnist", root)
    message = str(e.value)
    assert "\n" not in message
    assert root in message and "apt-get install dataset-fashion-mnist" in message and "download: true" in message


def test_idx_rejects_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04" + bytes(10))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(str(tmp_path / "bad"))
    (tmp_path / "short").write_bytes(idx_bytes(np.zeros((3, 4), np.uint8))[:-2])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(str(tmp_path / "short"))


# CI installs the package, so there a missing package fails instead of skipping
@pytest.mark.skipif(not os.path.exists(os.path.join(FMNIST_DEBIAN, "train-images-idx3-ubyte.gz"))
                    and not os.environ.get("CI"), reason="dataset-fashion-mnist is not installed")
def test_fmnist_debian_package():
    a = load_source("fmnist", FMNIST_DEBIAN)
    assert a["train_x"].shape == (60000, 1, 28, 28) and a["test_x"].shape == (10000, 1, 28, 28)
    assert np.bincount(a["train_y"]).tolist() == [6000] * 10
    assert np.bincount(a["test_y"]).tolist() == [1000] * 10


# ----------------------------------------------------------------------------- image folders

def write_image(path, array, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def test_imagefolder_png_exact_and_ordered(tmp_path):
    rng = np.random.RandomState(0)
    images = {}
    # classes are listed out of order on purpose: labels follow the sorted names
    for split, names in (("train", ["b.png", "a.png", "c.png"]), ("test", ["z.png"])):
        for cls in ("zebra", "ant"):
            for name in names:
                images[split, cls, name] = rng.randint(0, 256, (6, 5, 3)).astype(np.uint8)
                write_image(tmp_path / split / cls / name, images[split, cls, name], "PNG")
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    a = load_source("imagefolder", str(tmp_path))
    assert a["classes"] == ["ant", "zebra"]
    assert a["train_x"].shape == (6, 3, 6, 5) and a["test_x"].shape == (2, 3, 6, 5)
    assert a["train_y"].tolist() == [0, 0, 0, 1, 1, 1] and a["test_y"].tolist() == [0, 1]
    order = [("ant", n) for n in ("a.png", "b.png", "c.png")] + [("zebra", n) for n in ("a.png", "b.png", "c.png")]
    for i, (cls, name) in enumerate(order):
        np.testing.assert_array_equal(a["train_x"][i], images["train", cls, name].transpose(2, 0, 1))
    np.testing.assert_array_equal(a["test_x"][1], images["test", "zebra", "z.png"].transpose(2, 0, 1))


def test_imagefolder_grayscale_and_mixed(tmp_path):
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    write_image(tmp_path / "g" / "train" / "a" / "1.png", gray, "PNG")
    write_image(tmp_path / "g" / "test" / "a" / "1.png", gray, "PNG")
    a = load_source("imagefolder", str(tmp_path / "g"))
    assert a["train_x"].shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(a["train_x"][0, 0], gray)
    # one colour image makes the whole set RGB, greys repeated over the channels
    write_image(tmp_path / "g" / "test" / "a" / "2.png", np.zeros((4, 4, 3), np.uint8), "PNG")
    b = load_source("imagefolder", str(tmp_path / "g"))
    assert b["train_x"].shape == (1, 3, 4, 4)
    for c in range(3):
        np.testing.assert_array_equal(b["train_x"][0, c], gray)


def test_imagefolder_jpeg_and_resize(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (16, 1))
    colour = np.stack([smooth, smooth.T, np.full_like(smooth, 128)], axis=2)
    write_image(tmp_path / "train" / "a" / "0.jpg", colour, "JPEG")
    write_image(tmp_path / "test" / "a" / "0.jpg", colour, "JPEG")
    write_image(tmp_path / "train" / "b" / "0.png", np.zeros((8, 12, 3), np.uint8), "PNG")
    with pytest.raises(ValueError, match="differ in size.*image_size"):
        load_source("imagefolder", str(tmp_path))
    a = load_source("imagefolder", str(tmp_path), image_size=8)
    assert a["train_x"].shape == (2, 3, 8, 8)
    assert a["test_y"].tolist() == [0]
    full = load_source("imagefolder", str(tmp_path), image_size=16)
    # JPEG is lossy: the reader returns exactly what PIL decodes, which is close to what was written
    decoded = np.asarray(Image.open(tmp_path / "train" / "a" / "0.jpg").convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(full["train_x"][0], decoded)
    assert np.abs(decoded.astype(int) - colour.transpose(2, 0, 1)).mean() < 8
    # a square image resized to 8x8 keeps its left-to-right ramp
    assert (np.diff(a["train_x"][0, 0].astype(int), axis=1) > 0).all()


def test_imagefolder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train not found"):
        load_source("imagefolder", str(tmp_path))
    write_image(tmp_path / "train" / "a" / "0.png", np.zeros((2, 2), np.uint8), "PNG")
    with pytest.raises(FileNotFoundError, match="test not found"):
        load_source("imagefolder", str(tmp_path))
    write_image(tmp_path / "test" / "b" / "0.png", np.zeros((2, 2), np.uint8), "PNG")
    with pytest.raises(ValueError, match="class folders b that train/ lacks"):
        load_source("imagefolder", str(tmp_path))


# ----------------------------------------------------------------------------- synthetic + options

def test_synthetic_is_deterministic_and_shaped():
    a = load_source("synthetic", "", options={"num_classes": 4, "per_class": [30, 20, 10, 5], "size": 8})
    b = load_source("synthetic", "ignored", options={"num_classes": 4, "per_class": [30, 20, 10, 5], "size": 8})
    for key in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["train_x"].shape == (65, 3, 8, 8) and a["train_x"].dtype == np.uint8
    assert np.bincount(a["train_y"]).tolist() == [30, 20, 10, 5]
    assert np.bincount(a["test_y"]).tolist() == [50] * 4
    c = load_source("synthetic", "", options={"num_classes": 4, "size": 8, "seed": 1})
    assert not np.array_equal(c["test_x"], a["test_x"])
    assert load_source("synthetic", "", image_size=12)["train_x"].shape[2:] == (12, 12)


def test_synthetic_is_learnable_but_not_trivial():
    a = load_source("synthetic", "")
    x = a["train_x"].reshape(len(a["train_x"]), -1).astype(np.float64)
    t = a["test_x"].reshape(len(a["test_x"]), -1).astype(np.float64)
    centroids = np.stack([x[a["train_y"] == c].mean(0) for c in range(10)])
    pred = ((t[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    accuracy = (pred == a["test_y"]).mean()
    # chance is 0.1; the stripes need more than a pixel mean to tell classes apart
    assert 0.2 < accuracy < 0.8


def test_load_source_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown data source 'cifar1000'.*fmnist"):
        load_source("cifar1000", str(tmp_path))
    with pytest.raises(ValueError, match="takes no options"):
        load_source("fmnist", str(tmp_path), options={"size": 3})
    with pytest.raises(ValueError, match="has 16x16 images, not image_size 32"):
        load_source("synthetic", "", image_size=32, options={"size": 16})


# ----------------------------------------------------------------------------- prepared arrays

def test_prepared_roundtrip_with_stats(tmp_path):
    a = load_source("synthetic", "", options={"num_classes": 3, "per_class": 20, "size": 6})
    path = str(tmp_path / "prepared" / "syn.npz")
    save_prepared(a, path)
    b = load_prepared(path)
    for key in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(a[key], b[key])
    assert b["classes"] == a["classes"]
    assert b["mean"].dtype == np.float32 and b["mean"].shape == (3,)
    pixels = a["train_x"].astype(np.float64) / 255
    np.testing.assert_allclose(b["mean"], pixels.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(b["std"], pixels.std(axis=(0, 2, 3)), rtol=1e-6)
    with open(path + ".sha256") as f:
        assert f.read().endswith("  syn.npz\n")


def test_channel_stats_known_values():
    x = np.zeros((2, 2, 1, 2), np.uint8)
    x[:, 0] = 255                   # channel 0 constant white
    x[0, 1], x[1, 1] = 0, 255       # channel 1 half black, half white
    mean, std = channel_stats(x)
    np.testing.assert_allclose(mean, [1.0, 0.5])
    np.testing.assert_allclose(std, [0.0, 0.5])


def test_prepared_checksum_mismatch_detected(tmp_path):
    path = str(tmp_path / "syn.npz")
    save_prepared(load_source("synthetic", "", options={"num_classes": 2, "per_class": 5, "size": 4}), path)
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    with pytest.raises(ValueError) as e:
        load_prepared(path)
    message = str(e.value)
    assert "\n" not in message and path in message and "ltbench prepare" in message
    os.remove(path + ".sha256")
    with pytest.raises(FileNotFoundError, match=r"syn.npz.sha256 is missing.*ltbench prepare"):
        load_prepared(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prepared(str(tmp_path / "other.npz"))
