"""The training loop: schedules, determinism, resume after a real kill, NaN stop, outputs."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ltbench import train
from ltbench.config import build
from ltbench.tracking import client

from helpers import assert_same_ending, train_on_synth

SMALL = {"epochs": 4, "backbone": "resnet8", "batch_size": 64, "threads": 1}


def test_ldam_schedule_matches_the_official_per_epoch_rule():
    cfg = build("cifar10", 100, "ce", 0)
    lrs = [train.learning_rate(cfg, e) for e in range(200)]
    # kaidic/LDAM-DRW cifar_train.py: epoch e (1-indexed) <= 5: 0.1*e/5; > 180: 1e-5; > 160: 1e-3; else 0.1
    expected = [0.1 * e / 5 if e <= 5 else 0.1 * 1e-4 if e > 180 else 0.1 * 0.01 if e > 160 else 0.1
                for e in range(1, 201)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_demo_scaling_moves_milestones_and_warmup_in_proportion():
    cfg = build("fmnist", 100, "ce", 0, overrides={"epochs": 20})
    assert cfg.milestones == (16, 18) and cfg.warmup_epochs == 1
    assert train.learning_rate(cfg, 15) == pytest.approx(0.1) and train.learning_rate(cfg, 16) == pytest.approx(1e-3)


def test_cosine_schedule_starts_at_base_and_reaches_zero_after_the_last_epoch():
    cfg = build("cifar10", 100, "ce", 0, overrides={"schedule": "cosine", "warmup_epochs": 0, "epochs": 10})
    assert train.learning_rate(cfg, 0) == pytest.approx(0.1)
    assert train.learning_rate(cfg, 5) == pytest.approx(0.05)
    assert 0 < train.learning_rate(cfg, 9) < 0.01


def _run(synth, tmp, method="ce", **over):
    return train_on_synth(synth, tmp, method, {**SMALL, **over}, name=f"run_{method}")


def test_a_run_writes_result_json_and_logs_one_mlflow_run(synth, tmp_path):
    out = _run(synth, tmp_path, method="ldam_drw")
    res = json.loads((out / "result.json").read_text())
    assert set(res["group_sizes"]) == {"many", "medium", "few"}
    for key in ("top1_last", "top1_best_val", "top1_best_test", "many_last", "ece_last", "nll_last"):
        assert res[key] == res[key], key                       # not NaN
    assert 1 <= res["best_val_epoch"] <= 4 and res["top1_best_test"] >= res["top1_last"]
    run = client(res["tracking_uri"]).get_run(res["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["top1_last"] == pytest.approx(res["top1_last"])
    assert run.data.tags["method"] == "ldam_drw" and run.data.tags["split_sha256"]
    history = client(res["tracking_uri"]).get_metric_history(res["run_id"], "test_top1")
    assert [m.step for m in history] == [1, 2, 3, 4]


def test_nan_loss_stops_with_one_clear_error(synth, tmp_path):
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 1"):
        _run(synth, tmp_path, lr=float("nan"))


def _cli(synth, tmp, out, epochs):
    return [sys.executable, "-m", "ltbench.cli", "train", "--data", synth["data"], "--split", synth["split"],
            "--dataset", "synth", "--imb", "10", "--method", "ce", "--seed", "3",
            "--set", f"epochs={epochs}", "--set", "backbone=resnet8", "--set", "batch_size=32", "--set", "threads=1",
            "--out", str(out), "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]


def test_kill_minus_9_then_resume_equals_an_uninterrupted_run(synth, tmp_path):
    """Train N epochs straight; separately kill -9 after checkpoint k (0 < k < N) and rerun."""
    n = 6
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(_cli(synth, tmp_path, whole, n), check=True, capture_output=True)
    proc = subprocess.Popen(_cli(synth, tmp_path, broken, n), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last, k = broken / "ckpt" / "last.pt", 0
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            k = torch.load(last, weights_only=False)["state"]["epoch"]
            if k >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.02)
    proc.wait()
    assert 0 < k < n, f"the kill landed at epoch {k}; the run was too fast or too slow to interrupt"
    assert not (broken / "result.json").exists()
    subprocess.run(_cli(synth, tmp_path, broken, n), check=True, capture_output=True)

    ra, rb = assert_same_ending(whole, broken)
    c = client(rb["tracking_uri"])
    assert (broken / "ckpt" / "mlflow_run_id").read_text() == rb["run_id"]
    runs = c.search_runs([c.get_experiment_by_name("ltbench").experiment_id],
                         filter_string="attributes.run_name = 'ce/synth/if10/s3'")
    assert len(runs) == 2                                   # `whole` and `broken`: one MLflow run each
    steps = sorted({m.step for m in c.get_metric_history(rb["run_id"], "test_top1")})
    assert steps == list(range(1, n + 1))


def test_a_rerun_with_edited_settings_starts_over_instead_of_splicing_two_runs(synth, tmp_path):
    """Editing a run's settings (here its epochs) and rerunning must not resume the old checkpoint."""
    out = tmp_path / "run"
    subprocess.run(_cli(synth, tmp_path, out, 2), check=True, capture_output=True)
    first = json.loads((out / "result.json").read_text())
    (out / "result.json").unlink()                          # what Snakemake does before a rerun
    proc = subprocess.run(_cli(synth, tmp_path, out, 3), check=True, capture_output=True, text=True)
    assert "holds a run with other settings (epochs, milestones)" in proc.stdout
    again = json.loads((out / "result.json").read_text())
    assert again["run_id"] != first["run_id"] and again["epochs"] == 3
    steps = [m.step for m in client(again["tracking_uri"]).get_metric_history(again["run_id"], "test_top1")]
    assert steps == [1, 2, 3]                               # trained from scratch, not 2 old + 1 new
    stale = [p for p in out.iterdir() if p.name.startswith("ckpt.stale-")]
    assert len(stale) == 1 and (stale[0] / "last.pt").exists()   # the old checkpoints are kept aside
    # the same settings again: an ordinary resume of the finished run, nothing set aside
    (out / "result.json").unlink()
    proc = subprocess.run(_cli(synth, tmp_path, out, 3), check=True, capture_output=True, text=True)
    assert "other settings" not in proc.stdout
    assert json.loads((out / "result.json").read_text())["run_id"] == again["run_id"]


def test_bf16_autocast_on_cpu_only_where_onednn_has_bf16_kernels(monkeypatch):
    cfg = build("synth", 10, "ce", 0, overrides=SMALL)
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
        train._cpu_has_bf16.cache_clear()                   # the probe's answer is kept per process
        with train.autocast(cfg, cpu):
            assert torch.is_autocast_enabled("cpu") == native
            y = torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3))
        assert y.dtype == (torch.bfloat16 if native else torch.float32)
    monkeypatch.undo()
    train._cpu_has_bf16.cache_clear()                       # later tests see the real CPU again
    with train.autocast(build("synth", 10, "ce", 0, overrides={**SMALL, "amp": False}), cpu):
        assert not torch.is_autocast_enabled("cpu")
