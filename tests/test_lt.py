import hashlib

import numpy as np
import pytest

from ltbench.data.lt import GROUP_NAMES, groups, img_num_per_cls, load_split, make_split, save_split


def balanced_labels(num_classes, per_class, seed=1):
    """A CIFAR-like label vector: every class equally often, classes interleaved."""
    y = np.repeat(np.arange(num_classes), per_class)
    np.random.RandomState(seed).shuffle(y)
    return y


def ldam_reference(train_y, imb_factor, seed=0):
    """kaidic/LDAM-DRW@2536330:imbalance_cifar.py written out again: global seed once, then
    per class (in order) shuffle that class's indices and keep the first n_c."""
    state = np.random.get_state()
    try:
        cls_num = len(np.unique(train_y))
        img_max = len(train_y) / cls_num
        nums = [int(img_max * (imb_factor ** (i / (cls_num - 1.0)))) for i in range(cls_num)]
        np.random.seed(seed)
        kept = []
        for the_class, the_img_num in zip(np.unique(train_y), nums):
            idx = np.where(train_y == the_class)[0]
            np.random.shuffle(idx)
            kept.append(idx[:the_img_num])
        return np.concatenate(kept), nums
    finally:
        np.random.set_state(state)


@pytest.mark.parametrize("imb,total", [(10, 20431), (50, 13996), (100, 12406)])
def test_cifar10_lt_totals(imb, total):
    assert sum(img_num_per_cls(5000, 10, imb)) == total


@pytest.mark.parametrize("imb,total", [(10, 19573), (50, 12608), (100, 10847)])
def test_cifar100_lt_totals(imb, total):
    assert sum(img_num_per_cls(500, 100, imb)) == total


def test_cifar10_if100_counts():
    assert img_num_per_cls(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.mark.parametrize("imb,sizes", [(100, [35, 35, 30]), (50, [41, 41, 18])])
def test_cifar100_group_sizes(imb, sizes):
    g = groups(img_num_per_cls(500, 100, imb))
    assert np.bincount(g, minlength=3).tolist() == sizes
    assert GROUP_NAMES == ("many", "medium", "few")


def test_group_boundaries():
    # many is > 100 and few is < 20: 100 and 20 are both medium
    assert groups([101, 100, 20, 19]).tolist() == [0, 1, 1, 2]
    assert groups([50], many=40, few=10).tolist() == [0]


def test_step_profile():
    assert img_num_per_cls(500, 10, 10, profile="step") == [500] * 5 + [50] * 5
    with pytest.raises(ValueError, match="unknown imbalance profile"):
        img_num_per_cls(500, 10, 10, profile="linear")


@pytest.mark.parametrize("imb", [0.01, 0.5])
def test_imbalance_below_one_rejected(imb):
    with pytest.raises(ValueError, match="e.g. 100 not 0.01"):
        img_num_per_cls(500, 10, imb)
    with pytest.raises(ValueError, match="IF = n_max/n_min >= 1"):
        make_split(balanced_labels(10, 20), balanced_labels(10, 5), imb)


@pytest.mark.parametrize("num_classes,per_class,imb", [(10, 500, 100), (10, 500, 10), (20, 60, 50)])
def test_train_indices_equal_ldam_loop(num_classes, per_class, imb):
    train_y = balanced_labels(num_classes, per_class)
    expected, nums = ldam_reference(train_y, 1 / imb)
    split = make_split(train_y, balanced_labels(num_classes, 10), imb)
    np.testing.assert_array_equal(split["train_idx"], expected)
    assert split["counts"].tolist() == nums
    assert np.bincount(train_y[split["train_idx"]]).tolist() == nums


def test_full_size_cifar10_labels():
    train_y = balanced_labels(10, 5000)
    split = make_split(train_y, balanced_labels(10, 1000), 100)
    assert len(split["train_idx"]) == 12406
    assert len(np.unique(split["train_idx"])) == 12406
    assert len(split["test_idx"]) == 10000


def test_validation_never_changes_train():
    train_y = balanced_labels(10, 300)
    test_y = balanced_labels(10, 50)
    plain = make_split(train_y, test_y, 10, max_per_class=250)
    with_val = make_split(train_y, test_y, 10, max_per_class=250, val_per_class=20)
    np.testing.assert_array_equal(plain["train_idx"], with_val["train_idx"])
    val = with_val["val_idx"]
    assert np.bincount(train_y[val]).tolist() == [20] * 10
    assert not set(val) & set(with_val["train_idx"])
    assert plain["sha256"] != with_val["sha256"]


def test_validation_takes_left_overs_in_shuffled_order():
    train_y = balanced_labels(5, 100)
    split = make_split(train_y, balanced_labels(5, 10), 10, max_per_class=90, val_per_class=7, seed=3)
    rng = np.random.RandomState(3)
    counts = img_num_per_cls(90, 5, 10)
    expected = []
    for c in range(5):
        idx = np.where(train_y == c)[0]
        rng.shuffle(idx)
        expected.append(idx[counts[c]:counts[c] + 7])
    np.testing.assert_array_equal(split["val_idx"], np.concatenate(expected))


def test_head_class_with_no_left_overs_validates_on_its_last_training_images():
    # LDAM's n_max is the full class size: class 0 keeps all 100 images and the subset must not change
    y = balanced_labels(5, 100)
    plain = make_split(y, balanced_labels(5, 10), 10)
    split = make_split(y, balanced_labels(5, 10), 10, val_per_class=4)
    np.testing.assert_array_equal(split["train_idx"], plain["train_idx"])
    assert split["val_from_train"].tolist() == [0]
    head_train = split["train_idx"][:100]
    np.testing.assert_array_equal(split["val_idx"][:4], head_train[-4:])
    assert not set(split["val_idx"][4:]) & set(split["train_idx"])


def test_validation_too_large_rejected():
    # class 0 keeps 99 of 100 images: 1 left over, fewer than the 95 asked
    with pytest.raises(ValueError, match="class 0 has 1 images left"):
        make_split(balanced_labels(5, 100), balanced_labels(5, 10), 10, max_per_class=99, val_per_class=95)


def test_max_per_class_leaves_room_for_validation():
    split = make_split(balanced_labels(5, 100), balanced_labels(5, 10), 10, max_per_class=80, val_per_class=20)
    assert split["counts"][0] == 80
    assert len(split["val_idx"]) == 100


def test_class_too_small_rejected():
    y = np.repeat(np.arange(3), [100, 100, 5])
    with pytest.raises(ValueError, match="class 2 has 5 training images"):
        make_split(y, np.arange(3), 2)


def test_test_subset_per_class():
    train_y = balanced_labels(4, 50)
    test_y = balanced_labels(4, 30)
    split = make_split(train_y, test_y, 5, test_per_class=10, seed=2)
    assert np.bincount(test_y[split["test_idx"]]).tolist() == [10] * 4
    rng = np.random.RandomState(2)
    expected = []
    for c in range(4):
        idx = np.where(test_y == c)[0]
        rng.shuffle(idx)
        expected.append(idx[:10])
    np.testing.assert_array_equal(split["test_idx"], np.concatenate(expected))
    full = make_split(train_y, test_y, 5)
    np.testing.assert_array_equal(full["test_idx"], np.arange(120))


def test_sha256_covers_the_three_index_lists():
    split = make_split(balanced_labels(4, 50), balanced_labels(4, 30), 5, max_per_class=40, val_per_class=3)
    h = hashlib.sha256()
    for key in ("train_idx", "val_idx", "test_idx"):
        h.update(split[key].astype("<i8").tobytes())
    assert split["sha256"] == h.hexdigest()
    other = make_split(balanced_labels(4, 50), balanced_labels(4, 30), 5, max_per_class=40, val_per_class=3, seed=1)
    assert other["sha256"] != split["sha256"]


def test_save_load_roundtrip(tmp_path):
    split = make_split(balanced_labels(4, 50), balanced_labels(4, 30), 5, max_per_class=40, val_per_class=3)
    path = tmp_path / "splits" / "if5.npz"
    save_split(split, str(path))
    loaded = load_split(str(path))
    for key in ("train_idx", "val_idx", "test_idx", "counts", "groups"):
        np.testing.assert_array_equal(loaded[key], split[key])
    assert (loaded["imb"], loaded["profile"], loaded["sha256"], loaded["seed"]) == (5.0, "exp", split["sha256"], 0)
    assert [p.name for p in path.parent.iterdir()] == ["if5.npz"]


def test_tampered_split_detected(tmp_path):
    split = make_split(balanced_labels(4, 50), balanced_labels(4, 30), 5)
    split["train_idx"] = split["train_idx"].copy()
    split["train_idx"][0] += 1
    path = str(tmp_path / "s.npz")
    save_split(split, path)
    with pytest.raises(ValueError, match="is corrupt") as e:
        load_split(path)
    assert "\n" not in str(e.value) and path in str(e.value)


def test_corrupt_split_file_detected(tmp_path):
    path = tmp_path / "s.npz"
    save_split(make_split(balanced_labels(4, 50), balanced_labels(4, 30), 5), str(path))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="unreadable"):
        load_split(str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_split(str(tmp_path / "missing.npz"))
