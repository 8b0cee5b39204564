"""The TSC chain in the DAG on a tiny synthetic config: KCL warm-up -> Hungarian assignment ->
TSC half initialised from the warm-up -> classifier stage, with the targets file as an input."""
import json
import subprocess

import numpy as np
import torch
import yaml

from ltbench.tracking import client

from helpers import BIN, SYNTH_DATA, snakemake_command, tool_env


TINY = {
    "preset": "tiny",
    "tracking_uri": "sqlite:///results/mlflow.db",
    "threads": 1,
    "presets": {"tiny": {"datasets": ["synth"], "imbalance_factors": [10], "seeds": [0], "methods": ["tsc"],
                         "train": {"epochs": 2, "backbone": "resnet8", "batch_size": 64},
                         "per_method": {"tsc_warmup": {"epochs": 1}, "tsc_repr": {"epochs": 1}}}},
    "data": {"synth": SYNTH_DATA},
}


def run_config(run):
    return yaml.safe_load((run / "ckpt" / "config.yaml").read_text())


def snakemake(workdir, *args):
    argv, env = snakemake_command(workdir, TINY)
    return subprocess.run([*argv, *args], capture_output=True, text=True, env=env)


def test_the_targets_rule_writes_the_targets_and_their_checks(tmp_path):
    r = snakemake(tmp_path, "--cores", "1", "results/targets/c3_d4.npy")
    assert r.returncode == 0, r.stderr[-3000:]
    U = np.load(tmp_path / "results/targets/c3_d4.npy")
    checks = json.loads((tmp_path / "results/targets/c3_d4.json").read_text())
    assert U.shape == (3, 4) and np.allclose(np.linalg.norm(U, axis=1), 1, atol=1e-6)
    assert checks["simplex_applicable"] and checks["max_cos"] < 0 and checks["iters"] == 10000


def test_the_tsc_chain_runs_warmup_assign_repr_then_classifier(tmp_path):
    # the targets rule at its 10k Adam steps takes minutes on a loaded CPU; a short run of the
    # same command stands in for it, so the DAG uses this file and does not rerun the rule
    targets = tmp_path / "results" / "targets" / "c4_d128.npy"
    subprocess.run([str(BIN / "ltbench"), "targets", "--classes", "4", "--dim", "128", "--iters", "300",
                    "--out", str(targets), "--checks", str(targets.with_suffix(".json"))], check=True, env=tool_env())
    r = snakemake(tmp_path, "--cores", "2", "results/runs/synth/if10/tsc/seed0/result.json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rule tsc_targets" not in r.stdout + r.stderr

    runs = tmp_path / "results" / "runs" / "synth" / "if10"
    warmup, rep, probe = runs / "tsc_warmup" / "seed0", runs / "tsc_repr" / "seed0", runs / "tsc" / "seed0"
    assignment = warmup / "tsc_assign_d128.json"
    for path in (warmup / "result.json", assignment, rep / "result.json", probe / "result.json"):
        assert path.exists(), path
    # each link of the chain consumed the one before it
    perm = json.loads(assignment.read_text())["assignment"]
    assert sorted(perm) == [0, 1, 2, 3]
    rc = run_config(rep)
    assert rc["init_from"] == "results/runs/synth/if10/tsc_warmup/seed0/ckpt/last.pt"
    assert rc["params"]["targets_path"] == "results/targets/c4_d128.npy"
    assert rc["params"]["assignment_path"] == "results/runs/synth/if10/tsc_warmup/seed0/tsc_assign_d128.json"
    assert run_config(probe)["init_from"] == "results/runs/synth/if10/tsc_repr/seed0/ckpt/last.pt"
    # per-method settings of the preset reach each link of the chain
    assert [run_config(p)["epochs"] for p in (warmup, rep, probe)] == [1, 1, 2]
    state = torch.load(rep / "ckpt" / "last.pt", weights_only=False)["model"]
    assert state["assignment"].tolist() == perm
    assert np.array_equal(state["targets"].numpy(), np.load(targets))

    # the permutation reached MLflow as a per-epoch artifact
    res = json.loads((rep / "result.json").read_text())
    names = [a.path for a in client(f"sqlite:///{tmp_path}/results/mlflow.db").list_artifacts(res["run_id"])]
    assert "tsc_assignment_e0001.json" in names
    assert json.loads((probe / "result.json").read_text())["method"] == "tsc"
