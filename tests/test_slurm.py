"""The DAG on a real Slurm: a single-node cluster started here (tests/slurm/start.sh, two fake GPUs),
`snakemake --profile` with a copy of profiles/slurm/config.yaml. Each training run must be its own
sbatch job with one GPU allocated, recorded in result.json and MLflow, and the tables must equal
those of a local run of the same config exactly (CPU training is deterministic).

Under CI (CI=true) a machine without Slurm fails this test; elsewhere it is skipped.
"""
import copy
import json
import os
import re
import subprocess
import time

import pandas as pd
import pytest
import yaml
from helpers import ROOT, snakemake_command
from test_workflow import TINY

NEEDED = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/bin/sbatch", "/usr/bin/squeue",
          "/usr/bin/scontrol")

# One IF and one seed: two training jobs (ce, la_tau2) that run side by side on the two GPUs.
CONFIG = copy.deepcopy(TINY)
CONFIG["presets"]["tiny"].update(imbalance_factors=[10], seeds=[0])


def unavailable(reason):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the Slurm test must run, not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node Slurm; its daemons are stopped by their pid files afterwards, pass or fail."""
    missing = [b for b in NEEDED if not os.path.exists(b)]
    if missing:
        unavailable(f"Slurm is not installed ({', '.join(missing)} missing); "
                    f"apt-get install slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        unavailable("starting slurmd and munged needs root")
    state = tmp_path_factory.mktemp("slurm")
    try:
        r = subprocess.run([ROOT / "tests/slurm/start.sh", state], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"tests/slurm/start.sh failed:\n{r.stdout}{r.stderr}"
        yield state
    finally:
        subprocess.run([ROOT / "tests/slurm/stop.sh", state], timeout=120)


def local_profile(path):
    """profiles/slurm/config.yaml with only what this node differs in: partition names, memory, threads."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    profile["default-resources"].update(slurm_partition="debug", mem_mb=500)
    profile["set-resources"]["train"].update(mem_mb=1000)
    profile["set-threads"]["train"] = 1                    # the local run's threads too (CONFIG)
    profile["slurm-init-seconds-before-status-checks"] = 2
    profile["latency-wait"] = 5
    path.mkdir()
    (path / "config.yaml").write_text(yaml.safe_dump(profile))
    return path


def snakemake(workdir, *args):
    workdir.mkdir()
    argv, env = snakemake_command(workdir, CONFIG)
    with open(workdir / "snakemake.log", "w") as log:
        return subprocess.Popen([*argv, *args], stdout=log, stderr=subprocess.STDOUT, env=env)


def finished(proc, workdir, timeout):
    rc = proc.wait(timeout=timeout)
    assert rc == 0, (workdir / "snakemake.log").read_text()[-4000:]


def results(workdir):
    return {p.parent.parent.name: json.loads(p.read_text())
            for p in sorted(workdir.glob("results/runs/synth/if10/*/seed0/result.json"))}


def slurm_jobs():
    """Slurm's own record of every job (kept for MinJobAge): id -> {JobState, Partition, TimeLimit, ...}."""
    out = subprocess.run(["scontrol", "show", "job", "--details", "--oneliner"], capture_output=True, text=True,
                         check=True).stdout
    jobs = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]
    return {j["JobId"]: j for j in jobs}


def mlflow_tags(workdir, run_id):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=f"sqlite:///{workdir}/results/mlflow.db").get_run(run_id).data.tags


def cancel_when_running(comment, cluster, timeout=400):
    """scancel the job of one rule instance as soon as Slurm runs it, as an admin or a preemption (PreemptMode=CANCEL)
    would; returns its id."""
    deadline = time.monotonic() + timeout
    while cluster.poll() is None and time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i %k"], capture_output=True, text=True).stdout
        running = [line.split()[0] for line in out.splitlines() if line.split()[1:] == [comment]]
        if running:
            subprocess.run(["scancel", running[0]], check=True)
            return running[0]
        time.sleep(0.2)
    pytest.fail(f"no job {comment} ran; see the cluster run's snakemake.log")


def test_training_jobs_go_through_sbatch_with_a_gpu_retry_and_match_a_local_run(slurm, tmp_path):
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    cluster = snakemake(on_slurm, "--profile", str(local_profile(tmp_path / "profile")))
    laptop = snakemake(local, "--cores", "2")      # alongside: the cluster run mostly waits on squeue
    try:
        cancelled = cancel_when_running("rule_train_wildcards_synth_10_ce_0", cluster)
        finished(laptop, local, timeout=600)
        finished(cluster, on_slurm, timeout=600)
    finally:
        for proc in (cluster, laptop):    # on failure: Snakemake cancels its jobs when terminated
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)

    runs, local_runs = results(on_slurm), results(local)
    assert set(runs) == set(local_runs) == {"ce", "la_tau2"}
    jobs = slurm_jobs()
    for method, r in runs.items():
        job = jobs[r["slurm_job_id"]]                  # the job the trainer ran in is Slurm's
        assert (job["JobState"], job["Partition"], job["Requeue"]) == ("COMPLETED", "gpu", "1")
        assert (job["TresPerJob"], job["JOB_GRES"]) == ("gres:gpu:1", "gpu:fake:1")   # asked for and got one GPU
        assert (job["CpusPerTres"], job["NumCPUs"]) == ("gres:gpu:1", "1")            # cpus_per_gpu: threads (1)
        assert r["cuda_visible_devices"] in ("0", "1") and r["slurm_gpus"] == r["cuda_visible_devices"]
        tags = mlflow_tags(on_slurm, r["run_id"])
        assert (tags["slurm_job_id"], tags["cuda_visible_devices"]) == (r["slurm_job_id"], r["cuda_visible_devices"])
        assert local_runs[method]["slurm_job_id"] is None
    # runtime "720 * attempt": 12 h for a first attempt, 24 h for the retry of the cancelled job
    assert jobs[runs["la_tau2"]["slurm_job_id"]]["TimeLimit"] == "12:00:00"
    assert (jobs[cancelled]["JobState"], jobs[cancelled]["TimeLimit"]) == ("CANCELLED", "12:00:00")
    assert jobs[runs["ce"]["slurm_job_id"]]["TimeLimit"] == "1-00:00:00"

    # one job per rule instance (and the retry); the other rules ran on the default partition and runtime
    assert sorted(j["Comment"] for j in jobs.values()) == [
        "rule_lt_split_wildcards_synth_10", "rule_report", "rule_train_wildcards_synth_10_ce_0",
        "rule_train_wildcards_synth_10_ce_0", "rule_train_wildcards_synth_10_la_tau2_0"]
    others = [j for j in jobs.values() if not j["Comment"].startswith("rule_train")]
    assert all((j["JobState"], j["Partition"], j["TimeLimit"]) == ("COMPLETED", "debug", "00:30:00") for j in others)

    # same numbers: every table, exactly; only the wall-time column may differ
    names = sorted(p.name for p in (local / "results/tables").glob("*.csv"))
    assert names and names == sorted(p.name for p in (on_slurm / "results/tables").glob("*.csv"))
    for name in names:
        a, b = (pd.read_csv(d / "results/tables" / name) for d in (on_slurm, local))
        wall = [c for c in a.columns if c == "minutes_per_run"]
        pd.testing.assert_frame_equal(a.drop(columns=wall), b.drop(columns=wall), check_exact=True)
    for method in runs:
        for key in ("top1_last", "top1_best_val", "nll_last", "ece_last", "many_last", "few_last"):
            assert runs[method][key] == local_runs[method][key], (method, key)
