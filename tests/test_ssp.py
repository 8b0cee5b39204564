"""SSP: rotation images and labels, the rotation loss, the recipe's schedule, and stage 2 starting
from the rotation run's backbone (real trainer runs on the synthetic fixture)."""
import json

import pytest
import torch

from ltbench import train
from ltbench.config import build
from ltbench.experiment import stage1_of
from ltbench.methods import get
from ltbench.methods.base import DataInfo, Step
from ltbench.methods.ssp import rotate_batch
from ltbench.tracking import client

INFO = DataInfo(num_classes=4, counts=(150, 68, 31, 15), in_channels=3, image_size=12)


def test_a_quarter_turn_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    g = torch.Generator().manual_seed(0)
    while True:                                   # draw until the single image gets k = 1
        out, k = rotate_batch(x, g)
        if k.item() == 1:
            break
    assert out.view(2, 2).tolist() == [[2.0, 4.0], [1.0, 3.0]]   # counter-clockwise, as torch.rot90


@pytest.mark.parametrize("b", [1, 7, 64])
def test_each_image_is_turned_k_times_and_k_is_balanced(b):
    x = torch.randn(b, 3, 6, 6, generator=torch.Generator().manual_seed(b))
    out, k = rotate_batch(x, torch.Generator().manual_seed(1))
    assert k.dtype == torch.long and set(k.tolist()) <= {0, 1, 2, 3}
    for i in range(b):
        assert torch.equal(out[i], torch.rot90(x[i], int(k[i]), [1, 2]))
    assert torch.bincount(k, minlength=4).max() <= b // 4 + 1
    again, k2 = rotate_batch(x, torch.Generator().manual_seed(1))
    assert torch.equal(k, k2) and torch.equal(out, again)


def test_rotation_loss_is_ce_of_the_rotation_head_on_turned_images():
    cfg = build("synth", 10, "ssp_rotation", 0, overrides={"backbone": "resnet8"})
    torch.manual_seed(0)
    m = get("ssp_rotation")(cfg, INFO)
    x, y = torch.randn(8, 3, 12, 12), torch.randint(0, 4, (8,))
    m.start_epoch(0, 2)
    loss = m.loss([x], y, Step(0, 2, 0, 1, torch.Generator().manual_seed(5)))
    xr, k = rotate_batch(x, torch.Generator().manual_seed(5))
    with torch.no_grad():
        z = m.rot_head(m.encoder(xr))
    expected = sum(torch.logsumexp(z[i], 0) - z[i, k[i]] for i in range(8)) / 8
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert m.epoch_log()["rot_acc"] == pytest.approx(100.0 * (z.argmax(1) == k).float().mean().item())


def test_recipe_mirrors_the_schedule_whose_second_drop_never_fires():
    cfg = build("cifar10", 100, "ssp", 0)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay) == (200, 128, 0.1, 2e-4)
    lrs = [train.learning_rate(cfg, e) for e in range(200)]
    # utils.adjust_learning_rate, 1-indexed e: e <= 5: 0.1 e / 5; e > 160: 0.1 * 0.01 (e > 180 is never reached)
    assert lrs == pytest.approx([0.1 * e / 5 if e <= 5 else 1e-3 if e > 160 else 0.1 for e in range(1, 201)])
    assert stage1_of({"variants": {}}, "ssp") == "ssp_rotation"


def test_stage2_starts_from_the_rotation_backbone(synth, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    small = {"epochs": 1, "backbone": "resnet8", "batch_size": 64, "threads": 1}
    rot = tmp_path / "ssp_rotation"
    cfg1 = build("synth", 10, "ssp_rotation", 0, overrides=small)
    train.run(cfg1, synth["data"], synth["split"], rot, rot / "ckpt", uri)
    res = json.loads((rot / "result.json").read_text())
    assert 0 <= client(uri).get_run(res["run_id"]).data.metrics["rot_acc"] <= 100

    ckpt = rot / "ckpt" / "last.pt"
    cfg = build("synth", 10, "ssp", 0, overrides={**small, "init_from": str(ckpt)})
    stage1 = torch.load(ckpt, weights_only=False)["model"]
    torch.manual_seed(1)
    m = get("ssp")(cfg, INFO)
    m.load_stage1(stage1)
    encoder = {k[len("encoder."):]: v for k, v in stage1.items() if k.startswith("encoder.")}
    assert encoder and all(torch.equal(m.encoder.state_dict()[k], v) for k, v in encoder.items())
    assert not any(k.startswith("rot_head") for k in m.state_dict())

    out = tmp_path / "ssp"
    train.run(cfg, synth["data"], synth["split"], out, out / "ckpt", uri)
    assert json.loads((out / "result.json").read_text())["top1_last"] >= 0
