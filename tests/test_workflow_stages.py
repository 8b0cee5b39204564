"""The DAG of two-stage methods: one stage-1 run feeds every stage-2 rule, and runs once.

A tiny synthetic experiment through the real Snakefile: cRT, LWS, tau-norm and NCM all start from
the `ce` run of the same (dataset, IF, seed); `crt@ldam_drw` starts from the `ldam_drw` run instead.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGE2 = ["crt", "lws", "tau_norm", "ncm", "crt@ldam_drw"]
CONFIG = {
    "preset": "tiny",
    "tracking_uri": "sqlite:///results/mlflow.db",
    "threads": 1,
    "presets": {"tiny": {"datasets": ["synth"], "imbalance_factors": [10], "seeds": [0], "methods": STAGE2,
                         "train": {"epochs": 1, "backbone": "resnet8", "batch_size": 64}}},
    "data": {"synth": {"source": "synthetic", "family": "cifar", "max_per_class": 150, "val_per_class": 10,
                       "options": {"num_classes": 4, "per_class": 200, "test_per_class": 30, "size": 12,
                                   "channels": 3, "seed": 0}}},
    "variants": {},
}


def run_dir(tmp, method):
    return tmp / "results" / "runs" / "synth" / "if10" / method / "seed0"


def test_one_stage1_run_feeds_every_stage2_rule(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    targets = [str(run_dir(Path("."), m) / "result.json") for m in STAGE2]
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"),
                           "--cores", "2", *targets], env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    trained = re.findall(r"wildcards: dataset=synth, imb=10, method=([\w@.-]+), seed=0", log)
    assert sorted(trained) == sorted(["ce", "ldam_drw", *STAGE2])      # each stage 1 trained exactly once
    for m in STAGE2:
        res = json.loads((run_dir(tmp_path, m) / "result.json").read_text())
        assert res["method"] == m and res["base"] == m.split("@")[0]
    for m, stage1 in [("crt", "ce"), ("lws", "ce"), ("tau_norm", "ce"), ("ncm", "ce"), ("crt@ldam_drw", "ldam_drw")]:
        cfg = yaml.safe_load((run_dir(tmp_path, m) / "ckpt" / "config.yaml").read_text())
        assert cfg["init_from"] == f"results/runs/synth/if10/{stage1}/seed0/ckpt/last.pt", m
    assert json.loads((run_dir(tmp_path, "tau_norm") / "result.json").read_text())["epochs"] == 0
