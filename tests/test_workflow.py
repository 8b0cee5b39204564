"""The DAG end to end on a tiny synthetic config: splits, training jobs, MLflow, tables, plots."""
import json
import subprocess

import pandas as pd
import pytest
import yaml

from helpers import BIN, ROOT, SYNTH_DATA, snakemake_command, tool_env

TINY = {
    "preset": "tiny",
    "tracking_uri": "sqlite:///results/mlflow.db",
    "threads": 1,
    "presets": {"tiny": {"datasets": ["synth"], "imbalance_factors": [10, 5], "seeds": [0, 1],
                         "methods": ["ce", "la_tau2"],
                         "train": {"epochs": 2, "backbone": "resnet8", "batch_size": 64}}},
    "data": {"synth": SYNTH_DATA},
    "variants": {"la_tau2": {"base": "la", "tau": 2.0}},
}


def snakemake(workdir, *args, config=None):
    argv, env = snakemake_command(workdir, config or TINY)
    return subprocess.run([*argv, *args], capture_output=True, text=True, env=env)


def test_the_dag_runs_end_to_end_and_the_tables_come_from_mlflow(tmp_path):
    r = snakemake(tmp_path, "--cores", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    results = sorted(tmp_path.glob("results/runs/synth/if*/*/seed*/result.json"))
    assert len(results) == 2 * 2 * 2
    runs = [json.loads(p.read_text()) for p in results]
    assert len({r["run_id"] for r in runs}) == 8

    table = pd.read_csv(tmp_path / "results/tables/synth_top1_last.csv")
    mine = [r["top1_last"] for r in runs if r["method"] == "la_tau2" and r["imb"] == 10]
    row = table[(table["method"] == "la_tau2") & (table["imb"] == 10)].iloc[0]
    assert row["mean"] == pytest.approx(sum(mine) / 2, abs=1e-6)
    assert row["n"] == 2
    md = (tmp_path / "results/tables/synth_top1_last.md").read_text()
    assert "la_tau2" in md and "±" in md
    assert "\\toprule" in (tmp_path / "results/tables/synth_top1_last.tex").read_text()
    pngs = list((tmp_path / "results/plots").glob("*.png"))
    assert {p.name for p in pngs} >= {"synth_if10_groups.png", "synth_if10_per_class.png"}

    # the tables alone regenerate from MLflow, without retraining
    (tmp_path / "results/tables/synth_top1_last.csv").unlink()
    r = snakemake(tmp_path, "--cores", "1", "--forcerun", "report", "report")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rule train" not in r.stdout + r.stderr
    assert (tmp_path / "results/tables/synth_top1_last.csv").exists()


def test_a_bad_config_stops_before_any_job_with_one_line(tmp_path):
    bad = yaml.safe_load(yaml.safe_dump(TINY))
    bad["presets"]["tiny"]["imbalance_factors"] = [0.01]
    r = snakemake(tmp_path, "-n", config=bad)
    assert r.returncode != 0
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("config.yaml: key")]
    assert lines and "imbalance_factors" in lines[0] and "minimum" in lines[0]
    assert not (tmp_path / "results").exists()


def test_the_paper_preset_plans_the_full_grid():
    r = subprocess.run([str(BIN / "snakemake"), "-n", "--config", "preset=paper", "--quiet", "rules"],
                       cwd=ROOT, capture_output=True, text=True, env=tool_env())
    assert r.returncode == 0, r.stderr[-2000:]
    grid = yaml.safe_load((ROOT / "config.yaml").read_text())["presets"]["paper"]
    expected = len(grid["datasets"]) * len(grid["imbalance_factors"]) * len(grid["seeds"]) * len(grid["methods"])
    train_line = [line for line in r.stdout.splitlines() if line.split()[:1] == ["train"]]
    assert train_line and int(train_line[0].split()[1]) >= expected
