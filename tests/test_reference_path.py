"""The per-image reference path (augment_path: reference): the same views, shapes, dtypes and
normalisation as the batched path, reproducible whatever the number of workers, and a real run."""
import json
import math

import pytest
import torch

from ltbench import train
from ltbench.config import build
from ltbench.data import lt, sources
from ltbench.data.augment import crop_flip_with_params
from ltbench.data.reference import ReferenceData, view_transform

VIEW_NAMES = ("standard", "plain", "autoaugment_cutout", "simaugment", "simaugment_s02", "standard_gray")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def gray(tmp_path_factory):
    """A one-channel (Fashion-MNIST-like, "L" images) prepared set and split."""
    root = tmp_path_factory.mktemp("gray")
    arrays = sources.load_source("synthetic", "", options=dict(num_classes=3, per_class=40, test_per_class=5,
                                                                  size=10, channels=1, seed=1))
    sources.save_prepared(arrays, str(root / "g.npz"))
    lt.save_split(lt.make_split(arrays["train_y"], arrays["test_y"], 4, max_per_class=30, val_per_class=5),
                  str(root / "if4.npz"))
    return {"data": str(root / "g.npz"), "split": str(root / "if4.npz")}


def open_both(ds, workers=1, **over):
    cfgs = {p: build("synth", 10, "ce", 0, overrides={"augment_path": p, "workers": workers, **over})
            for p in ("batched", "reference")}
    return cfgs, {p: train.open_data(ds["data"], ds["split"], CPU, c) for p, c in cfgs.items()}


def one_batch(data, cfg, views, n=12):
    order = torch.arange(n)
    (out, y), = data.train_batches(order, [(0, n)], views, torch.Generator().manual_seed(0), cfg, 0)
    return out, y


@pytest.mark.parametrize("which", ["synth", "gray"])
def test_every_view_has_the_batched_shape_dtype_layout_and_normalisation(which, synth, gray):
    ds = {"synth": synth, "gray": gray}[which]
    cfgs, data = open_both(ds)
    ref, y_ref = one_batch(data["reference"], cfgs["reference"], VIEW_NAMES)
    fast, y_fast = one_batch(data["batched"], cfgs["batched"], VIEW_NAMES)
    assert torch.equal(y_ref, y_fast)
    mean, std = data["batched"].mean, data["batched"].std
    for name, r, f in zip(VIEW_NAMES, ref, fast):
        assert r.shape == f.shape and r.dtype == f.dtype == torch.float32, name
        assert r.is_contiguous(memory_format=torch.channels_last) == f.is_contiguous(memory_format=torch.channels_last)
        # both are (k / 255 - mean) / std for integer levels k in 0..255 (a Cutout hole is k = 0)
        levels = (r * std + mean) * 255
        assert (levels - levels.round()).abs().max() < 1e-3, name
        assert levels.round().min() >= 0 and levels.round().max() <= 255, name
    # the untouched view is the batched path's normalisation of the same pixels
    plain = VIEW_NAMES.index("plain")
    assert torch.allclose(ref[plain], fast[plain], atol=1e-6)
    assert torch.allclose(ref[plain], data["batched"].normalize(data["batched"].train_x[:12]), atol=1e-6)


def test_the_standard_view_is_a_padded_crop_and_flip_of_its_image(synth):
    cfgs, data = open_both(synth)
    ref, _ = one_batch(data["reference"], cfgs["reference"], ("standard",), n=8)
    x = data["batched"].train_x[:8]
    found = 0
    for i in range(8):
        candidates = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)]
        dy, dx, flip = (torch.tensor([c[k] for c in candidates]) for k in range(3))
        crops = data["batched"].normalize(crop_flip_with_params(x[i:i + 1].expand(len(candidates), -1, -1, -1),
                                                               dy, dx, flip, padding=4))
        found += bool(((crops - ref[0][i:i + 1]).abs().amax(dim=(1, 2, 3)) < 1e-5).any())
    assert found == 8


def test_views_depend_on_position_not_on_the_number_of_workers(synth):
    cfg = build("synth", 10, "bcl", 0, overrides={"augment_path": "reference"})
    data = ReferenceData(synth["data"], synth["split"], CPU, cfg)
    order = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(3))[:20]
    slices = [(0, 7), (7, 14), (14, 20)]
    views = ("autoaugment_cutout", "simaugment_s02", "simaugment")
    runs = []
    for workers in (0, 2):
        data.workers = workers
        runs.append([v for out, _ in data.train_batches(order, slices, views, None, cfg, epoch=3) for v in out])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    other_epoch = [v for out, _ in data.train_batches(order, slices, ("simaugment",), None, cfg, epoch=4) for v in out]
    assert not torch.equal(other_epoch[0], runs[0][2])


def test_a_bad_setting_is_one_clear_error(synth):
    cfg = build("synth", 10, "ce", 0, overrides={"augment_path": "pil"})
    with pytest.raises(ValueError, match="augment_path 'pil' is not one of batched, reference"):
        train.open_data(synth["data"], synth["split"], CPU, cfg)
    with pytest.raises(ValueError, match="view 'mosaic' has no per-image reference transform"):
        view_transform("mosaic", 32, 4, [0.5], [0.2], None)


def test_ce_trains_one_epoch_on_the_reference_path(synth, tmp_path):
    cfg = build("synth", 10, "ce", 0, overrides={"augment_path": "reference", "workers": 1, "epochs": 1,
                                                 "backbone": "resnet8", "batch_size": 64, "threads": 1})
    out = tmp_path / "run"
    train.run(cfg, synth["data"], synth["split"], out, out / "ckpt", f"sqlite:///{tmp_path}/mlflow.db")
    res = json.loads((out / "result.json").read_text())
    assert res["epochs"] == 1 and math.isfinite(res["top1_last"]) and 0 <= res["top1_last"] <= 100
    logged = (out / "ckpt" / "config.yaml").read_text()
    assert "augment_path: reference" in logged
