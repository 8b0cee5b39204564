"""Checkpoints: SHA-256 sidecars, `prev` kept, every crash point of a save, resume from prev."""
import hashlib
import os
import subprocess
import sys

import pytest
import torch

from ltbench import checkpoint, train
from ltbench.config import build
from ltbench.tracking import client

from helpers import assert_same_ending


def obj(i):
    return {"w": torch.full((3,), float(i)), "epoch": i}


def test_save_writes_a_sha256sum_sidecar_and_keeps_the_previous_last_as_prev(tmp_path):
    for i in (1, 2, 3):
        checkpoint.save(obj(i), tmp_path, "last", prev="prev")
    digest, name = (tmp_path / "last.pt.sha256").read_text().split()
    assert name == "last.pt" and digest == hashlib.sha256((tmp_path / "last.pt").read_bytes()).hexdigest()
    digest, name = (tmp_path / "prev.pt.sha256").read_text().split()
    assert name == "prev.pt" and digest == hashlib.sha256((tmp_path / "prev.pt").read_bytes()).hexdigest()
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 3     # still a plain torch file
    assert checkpoint.load(tmp_path / "prev.pt")["epoch"] == 2
    assert checkpoint.load_latest(tmp_path)["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256", "prev.pt", "prev.pt.sha256"]


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_one_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate, flip_one_bit, lambda p: (p.parent / "last.pt.sha256").unlink()])
def test_a_damaged_last_falls_back_to_prev_with_one_warning_line(tmp_path, capsys, damage):
    for i in (1, 2):
        checkpoint.save(obj(i), tmp_path, "last", prev="prev")
    damage(tmp_path / "last.pt")
    assert checkpoint.load_latest(tmp_path)["epoch"] == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.pt" in err[0] and "resuming from prev.pt" in err[0]
    with pytest.raises(ValueError, match="last.pt"):
        checkpoint.load(tmp_path / "last.pt")
    # the next save must not push the damaged last into prev
    checkpoint.save(obj(3), tmp_path, "last", prev="prev")
    assert checkpoint.load(tmp_path / "prev.pt")["epoch"] == 1 and checkpoint.load_latest(tmp_path)["epoch"] == 3


def test_nothing_usable_means_start_from_scratch_and_say_so(tmp_path, capsys):
    assert checkpoint.load_latest(tmp_path) is None and capsys.readouterr().err == ""
    checkpoint.save(obj(1), tmp_path, "last", prev="prev")
    truncate(tmp_path / "last.pt")
    assert checkpoint.load_latest(tmp_path) is None
    assert "starting from scratch" in capsys.readouterr().err


class Crash(BaseException):
    pass


@pytest.mark.parametrize("crash_at", range(6))
def test_a_crash_at_any_step_of_a_save_leaves_the_new_or_the_previous_checkpoint(tmp_path, monkeypatch, crash_at):
    """Die before the n-th rename or link of `save(3)` (n = 5: no crash); the loader gets epoch 2 or 3, never less."""
    for i in (1, 2):
        checkpoint.save(obj(i), tmp_path, "last", prev="prev")
    calls = [0]

    def dying(real):
        def f(*a, **k):
            if calls[0] == crash_at:
                raise Crash
            calls[0] += 1
            return real(*a, **k)
        return f
    monkeypatch.setattr(checkpoint.os, "replace", dying(os.replace))
    monkeypatch.setattr(checkpoint.os, "link", dying(os.link))
    try:
        checkpoint.save(obj(3), tmp_path, "last", prev="prev")
    except Crash:
        pass
    monkeypatch.undo()
    assert calls[0] == min(crash_at, 5)
    assert checkpoint.load_latest(tmp_path)["epoch"] == (3 if crash_at == 5 else 2)
    checkpoint.save(obj(4), tmp_path, "last", prev="prev")       # and training goes on from there
    assert checkpoint.load_latest(tmp_path)["epoch"] == 4
    assert checkpoint.load(tmp_path / "prev.pt")["epoch"] in (2, 3)


SMALL = {"epochs": 4, "backbone": "resnet8", "batch_size": 64, "threads": 1}

CRASH = """
import os, sys
from ltbench import checkpoint, train
from ltbench.config import build
real = checkpoint.save
def save(obj, directory, name, prev=None):
    path = real(obj, directory, name, prev)
    if name == "last" and obj["state"]["epoch"] == 3:
        os._exit(9)                      # as kill -9 right after checkpoint 3
    return path
checkpoint.save = save
data, split, out, uri = sys.argv[1:]
cfg = build("synth", 10, "ce", 0, overrides={overrides})
train.run(cfg, data, split, out, out + "/ckpt", uri)
"""


def test_a_crash_then_a_truncated_last_checkpoint_resumes_from_prev_to_the_same_weights(synth, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train.run(build("synth", 10, "ce", 0, overrides=SMALL), synth["data"], synth["split"], whole, whole / "ckpt", uri)

    code = CRASH.replace("{overrides}", repr(SMALL))
    done = subprocess.run([sys.executable, "-c", code, synth["data"], synth["split"], str(broken), uri],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr[-2000:]
    assert torch.load(broken / "ckpt" / "last.pt", weights_only=False)["state"]["epoch"] == 3
    assert not (broken / "result.json").exists()
    truncate(broken / "ckpt" / "last.pt")

    capsys.readouterr()
    train.run(build("synth", 10, "ce", 0, overrides=SMALL), synth["data"], synth["split"], broken, broken / "ckpt", uri)
    captured = capsys.readouterr()
    assert "resuming from prev.pt" in captured.err and "after epoch 2" in captured.out

    ra, rb = assert_same_ending(whole, broken)
    assert rb["run_id"] == (broken / "ckpt" / "mlflow_run_id").read_text() != ra["run_id"]
    c = client(uri)
    # epoch 3 was logged before the crash and again after resuming from epoch 2: once in MLflow
    for key in ("test_top1", "train_loss", "lr"):
        assert [m.step for m in sorted(c.get_metric_history(rb["run_id"], key), key=lambda m: m.step)] == [1, 2, 3, 4]
    assert [m.step for m in c.get_metric_history(rb["run_id"], "top1_last")] == [4]
    assert sorted(p.name for p in (broken / "ckpt").glob("*.pt")) == ["best_val.pt", "last.pt", "prev.pt"]
