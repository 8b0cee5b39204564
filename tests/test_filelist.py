"""ImageNet-LT / iNaturalist-2018 from split files: recognition, checks, the index, the split,
and the on-disk data path, on generated ImageNet- and iNat-format trees of tiny JPEGs."""
import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from ltbench import cli, methods, train
from ltbench.config import build
from ltbench.data import filelist, loader, lt

WNIDS = ["n01440764", "n01443537", "n01484850"]
TRAIN = [8, 4, 2]          # images per class: IF 4
VAL, TEST = 2, 3           # per class


def jpeg(path, label, rng):
    """A 40x30 JPEG: class colour plus noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]][label])
    pixels = np.clip(base + rng.normal(0, 30, size=(30, 40, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def write_list(path, rows):
    path.write_text("".join(f"{p} {y}\n" for p, y in rows))


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """root/{train,val}/<wnid>/*.JPEG and lists/ImageNet_LT_{train,val,test}.txt, OLTR's layout:
    val images come from ImageNet train/, test images from ImageNet val/."""
    base = tmp_path_factory.mktemp("imagenet")
    root, lists = base / "images", base / "lists"
    lists.mkdir()
    rng = np.random.default_rng(0)
    rows = {"train": [], "val": [], "test": []}
    for c, wnid in enumerate(WNIDS):
        for i in range(TRAIN[c] + VAL):
            rel = f"train/{wnid}/{wnid}_{i}.JPEG"
            jpeg(root / rel, c, rng)
            rows["train" if i < TRAIN[c] else "val"].append((rel, c))
        for i in range(TEST):
            rel = f"val/{wnid}/ILSVRC2012_val_{c * TEST + i:08d}.JPEG"
            jpeg(root / rel, c, rng)
            rows["test"].append((rel, c))
    for split, r in rows.items():
        write_list(lists / f"ImageNet_LT_{split}.txt", r)
    return {"root": root, "lists": lists, "rows": rows}


@pytest.fixture(scope="module")
def inat(tmp_path_factory):
    """root/train_val2018/<supercategory>/<id>/<hash>.jpg; iNaturalist18_val.txt is the test list."""
    base = tmp_path_factory.mktemp("inat")
    root, lists = base / "images", base / "lists"
    lists.mkdir()
    rng = np.random.default_rng(1)
    train, test = [], []
    for c, n in enumerate([6, 3, 2]):
        for i in range(n + 1):
            rel = f"train_val2018/Plantae/{100 + c}/{c:02d}{i:030x}.jpg"
            jpeg(root / rel, c, rng)
            (train if i < n else test).append((rel, c))
    write_list(lists / "iNaturalist18_train.txt", train)
    write_list(lists / "iNaturalist18_val.txt", test)
    return {"root": root, "lists": lists}


# ----------------------------------------------------------------------------- recognition

def test_git_blob_sha1_is_the_object_id_git_gives(tmp_path, imagenet):
    empty, hello = tmp_path / "empty", tmp_path / "hello"
    empty.write_bytes(b"")
    hello.write_bytes(b"hello\n")
    assert filelist.git_blob_sha1(empty) == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"   # git's empty blob
    assert filelist.git_blob_sha1(hello) == "ce013625030ba8dba906f756967f9e9ca394464a"   # `echo hello | git hash-object`
    train_list = imagenet["lists"] / "ImageNet_LT_train.txt"
    by_git = subprocess.run(["git", "hash-object", str(train_list)], capture_output=True, text=True, check=True)
    assert filelist.git_blob_sha1(train_list) == by_git.stdout.strip()


def test_official_files_are_recognised_by_blob_or_prefix_and_others_are_used_as_own_lists(monkeypatch, imagenet):
    blob = {s: filelist.git_blob_sha1(imagenet["lists"] / f"ImageNet_LT_{s}.txt") for s in filelist.SPLITS}
    n = {s: len(imagenet["rows"][s]) for s in filelist.SPLITS}
    monkeypatch.setattr(filelist, "OFFICIAL", {("imagenet_lt", "train"): (blob["train"], n["train"]),
                                               ("imagenet_lt", "val"): (blob["val"][:7], n["val"]),
                                               ("imagenet_lt", "test"): ("76a2fb9", n["test"])})
    _, notes = filelist.prepare("imagenet_lt", imagenet["root"], imagenet["lists"], image_size=32)
    assert len(notes) == 3 and all("\n" not in m for m in notes)
    assert "ImageNet_LT_train.txt: official" in notes[0] and "full SHA-1" in notes[0] and "14 images" in notes[0]
    assert "ImageNet_LT_val.txt: official" in notes[1] and f"SHA-1 prefix {blob['val'][:7]}" in notes[1]
    assert "ImageNet_LT_test.txt: git blob" in notes[2] and "not the official 76a2fb9" in notes[2]
    assert "used as your own list" in notes[2]


def test_the_real_table_takes_generated_lists_for_own_lists(imagenet):
    index, notes = filelist.prepare("imagenet_lt", imagenet["root"], imagenet["lists"], image_size=32)
    assert all("used as your own list" in m for m in notes)
    assert index["lists_official"].tolist() == [False, False, False]


def test_an_official_blob_with_another_image_count_is_an_error(monkeypatch, imagenet):
    blob = filelist.git_blob_sha1(imagenet["lists"] / "ImageNet_LT_train.txt")
    monkeypatch.setitem(filelist.OFFICIAL, ("imagenet_lt", "train"), (blob, 115846))
    with pytest.raises(ValueError, match="has the official git blob .* but 14 images, not 115,846"):
        filelist.prepare("imagenet_lt", imagenet["root"], imagenet["lists"], image_size=32)


def test_inat_val_has_no_blob_on_record_so_only_its_count_is_checked(monkeypatch, inat):
    monkeypatch.setitem(filelist.OFFICIAL, ("inat2018", "test"), (None, 3))
    index, notes = filelist.prepare("inat2018", inat["root"], inat["lists"], image_size=32)
    assert "iNaturalist18_val.txt: 3 images, as the official file (no blob SHA-1 on record" in notes[1]
    assert "the test list (iNaturalist18_val.txt) serves as val too" in notes[2]
    assert index["val_is_test"] and len(index["val_y"]) == 0
    assert list(index["classes"]) == ["Plantae/100", "Plantae/101", "Plantae/102"]
    assert np.allclose(index["mean"], [0.466, 0.471, 0.380]) and np.allclose(index["std"], [0.195, 0.194, 0.192])


# ----------------------------------------------------------------------------- bad input

def test_missing_images_are_reported_in_one_line_with_count_first_paths_and_root(tmp_path, imagenet):
    import shutil
    root = tmp_path / "images"
    shutil.copytree(imagenet["root"], root)
    gone = [imagenet["rows"]["train"][k][0] for k in (1, 2, 9)] + [imagenet["rows"]["test"][0][0]]
    for rel in gone:
        (root / rel).unlink()
    with pytest.raises(FileNotFoundError) as e:
        filelist.prepare("imagenet_lt", root, imagenet["lists"], image_size=32)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("4 of 29 listed images are missing under " + str(root))
    assert f"(e.g. {gone[0]}, {gone[1]}, {gone[2]})" in msg and gone[3] not in msg
    assert "set root to the folder the list paths start from" in msg


def test_a_malformed_line_names_the_file_and_line(tmp_path, imagenet):
    lists = tmp_path / "lists"
    lists.mkdir()
    for s in filelist.SPLITS:
        (lists / f"ImageNet_LT_{s}.txt").write_text((imagenet["lists"] / f"ImageNet_LT_{s}.txt").read_text())
    (lists / "ImageNet_LT_val.txt").write_text("train/a.JPEG 0\n\ntrain/b.JPEG zero\n")
    with pytest.raises(ValueError, match=r"ImageNet_LT_val.txt line 3: expected '<relative path> <integer label>'"):
        filelist.prepare("imagenet_lt", imagenet["root"], lists, image_size=32)


def test_a_missing_list_file_says_where_to_put_it(tmp_path, imagenet):
    with pytest.raises(FileNotFoundError, match="imagenet_lt split file .*ImageNet_LT_train.txt not found"):
        filelist.prepare("imagenet_lt", imagenet["root"], tmp_path, image_size=32)


# ----------------------------------------------------------------------------- index and split

@pytest.fixture(scope="module")
def prepared(imagenet, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    index_path, split_path = out / "imagenet_lt.npz", out / "if4.npz"
    cli.main(["prepare", "--source", "imagenet_lt", "--root", str(imagenet["root"]),
              "--option", f"lists={imagenet['lists']}", "--image-size", "32", "--out", str(index_path)])
    cli.main(["split", "--data", str(index_path), "--imb", "4", "--out", str(split_path)])
    return {"index": str(index_path), "split": str(split_path), "out": out}


def test_prepare_and_split_record_the_lists_as_given(prepared, imagenet, synth):
    assert filelist.is_index(prepared["index"]) and not filelist.is_index(synth["data"])
    index = filelist.load_index(prepared["index"])
    assert [p.decode() for p in index["train_paths"]] == [p for p, _ in imagenet["rows"]["train"]]
    assert list(index["classes"]) == WNIDS and index["image_size"] == 32
    split = lt.load_split(prepared["split"])
    assert split["counts"].tolist() == TRAIN and split["imb"] == 4.0 and split["profile"] == "given"
    assert len(split["val_idx"]) == 6 and len(split["test_idx"]) == 9 and not split["val_is_test"]
    assert split["groups"].tolist() == [2, 2, 2]                  # every class under 20 images: few
    assert str(split["lists_sha256"]) == index["lists_sha256"]


def test_split_refuses_another_if_and_subsampling_settings(prepared):
    index = filelist.load_index(prepared["index"])
    with pytest.raises(ValueError, match=r"IF = 8/2 = 4, not 100; use imbalance_factors: \[4\] for it"):
        filelist.make_split(index, 100)
    with pytest.raises(ValueError, match="remove val_per_class, max_per_class and test_per_class"):
        filelist.make_split(index, 4, val_per_class=5)


def test_inat_split_says_val_is_the_test_set(inat, tmp_path, capsys):
    index_path, split_path = tmp_path / "inat.npz", tmp_path / "if3.npz"
    cli.main(["prepare", "--source", "inat2018", "--root", str(inat["root"]), "--option", f"lists={inat['lists']}",
              "--image-size", "32", "--out", str(index_path)])
    cli.main(["split", "--data", str(index_path), "--imb", "3", "--out", str(split_path)])
    printed = capsys.readouterr().out
    assert "val the test set (no separate val list)" in printed
    split = lt.load_split(str(split_path))
    assert bool(split["val_is_test"]) and split["val_idx"].tolist() == split["test_idx"].tolist()
    data = loader.FileData(str(index_path), str(split_path), "cpu", workers=1)
    assert data.val_is_test and torch.equal(data.val_y, data.test_y)
    assert list(data.paths["val"]) == list(data.paths["test"])


# ----------------------------------------------------------------------------- the on-disk data path

def test_every_view_has_a_per_image_transform_at_the_crop_size():
    from ltbench.data import views
    assert set(loader.VIEWS) == set(views.VIEWS)                 # every in-memory view, on disk too
    for name, cls in methods.METHODS.items():
        if isinstance(cls.views, tuple):                          # (some methods choose views per family)
            assert set(cls.views) <= set(loader.VIEWS), f"{name} declares {cls.views}"
    image = Image.new("RGB", (50, 40), (120, 60, 30))
    for name, t in zip(loader.VIEWS, loader.view_transforms(list(loader.VIEWS), 24, (0.485, 0.456, 0.406))):
        assert loader.to_uint8(t(image)).shape == (3, 24, 24), name
    with pytest.raises(ValueError, match="view 'sepia' has no per-image transform for on-disk datasets"):
        loader.view_transforms(["sepia"], 32, (0.5, 0.5, 0.5))


def test_train_batches_are_normalised_views_keyed_by_position_not_by_worker(prepared):
    cfg = build("imagenet_lt", 4, "ce", 0)
    one = loader.FileData(prepared["index"], prepared["split"], "cpu", workers=1)
    two = loader.FileData(prepared["index"], prepared["split"], "cpu", workers=2)
    order = torch.randperm(14, generator=torch.Generator().manual_seed(0))
    views = ("standard", "plain")
    (full, y), = one.train_batches(order, [(0, 6)], views, None, cfg, epoch=0)
    (tail, y_tail), = two.train_batches(order, [(3, 6)], views, None, cfg, epoch=0)
    (again, _), = one.train_batches(order, [(0, 6)], views, None, cfg, epoch=0)
    (later, _), = one.train_batches(order, [(0, 6)], views, None, cfg, epoch=1)
    assert [v.shape for v in full] == [(6, 3, 32, 32)] * 2 and full[0].dtype == torch.float32
    assert torch.equal(y, one.train_y[order[:6]]) and torch.equal(y_tail, y[3:])
    for k in range(2):
        assert torch.equal(tail[k], full[k][3:])                  # a rank's part = that part of the whole batch
        assert torch.equal(again[k], full[k])                     # a resumed epoch repeats
    assert not torch.equal(later[0], full[0]) and torch.equal(later[1], full[1])   # only the random view changes
    # normalised with ImageNet's constants: undoing it gives back uint8 pixel values
    pixels = (full[1] * one.std + one.mean) * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3) and 0 <= pixels.min() and pixels.max() <= 255


def test_eval_images_are_centre_crops_and_slices_of_the_lists(prepared):
    data = loader.FileData(prepared["index"], prepared["split"], "cpu", workers=1)
    batches = list(data.eval_batches("test", 2, 9, 4))
    assert [b.shape for b in batches] == [(4, 3, 32, 32), (3, 3, 32, 32)] and batches[0].dtype == torch.uint8
    assert torch.equal(data.test_x[2:6], batches[0])              # what methods' fit slices
    image = Image.open(f"{data.root}/{data.paths['test'][2].decode()}").convert("RGB")
    expected = np.asarray(image.resize((49, 37), Image.BILINEAR))[2:34, 8:40]   # Resize(37) then CentreCrop(32)
    assert np.abs(batches[0][0].permute(1, 2, 0).numpy().astype(int) - expected.astype(int)).mean() < 3


def test_the_trainer_runs_a_file_list_dataset_from_disk(prepared, tmp_path):
    cfg = build("imagenet_lt", 4, "ce", 0, overrides={"epochs": 2, "backbone": "resnet8", "batch_size": 4,
                                                      "threads": 1, "workers": 1})
    out = tmp_path / "run"
    train.run(cfg, prepared["index"], prepared["split"], out, out / "ckpt", f"sqlite:///{tmp_path}/mlflow.db")
    res = json.loads((out / "result.json").read_text())
    assert res["val_is_test"] is False and res["world_size"] == 1
    assert 0 <= res["top1_last"] <= 100 and res["group_sizes"] == {"many": 0, "medium": 0, "few": 3}
    from ltbench.tracking import client
    tags = client(res["tracking_uri"]).get_run(res["run_id"]).data.tags
    assert tags["split_sha256"] == filelist.load_index(prepared["index"])["lists_sha256"]
    assert tags["val_is_test"] == "false"
