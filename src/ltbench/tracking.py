"""MLflow tracking that never kills a training run.

Every record is appended to a journal in the run folder first (`journal.jsonl`), then sent to
MLflow. If the store is unreachable or locked the run goes on, records stay in the journal and
`pending` says so; the numbers are never lost. One MLflow run per training run: the run id lives
in the run folder, so a resumed job reopens the same run.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

EXPERIMENT = "ltbench"


def artifact_root(uri):
    """Artifacts sit next to a SQLite store (results/mlartifacts), not in the job's cwd."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts")
    return None


def client(uri):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri, name=EXPERIMENT):
    """Create the store and the experiment once; safe when several jobs race to do it."""
    c = client(uri)
    for _ in range(5):
        exp = c.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return c.create_experiment(name, artifact_location=artifact_root(uri))
        except Exception:  # another job created it between our two calls
            time.sleep(0.5)
    raise RuntimeError(f"could not create MLflow experiment {name!r} in {uri}")


class Tracker:
    def __init__(self, uri, run_dir, run_name, tags, experiment=EXPERIMENT):
        self.uri = uri
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.journal = self.dir / "journal.jsonl"
        self.pending = False
        self.run_id = None
        id_file = self.dir / "mlflow_run_id"
        try:
            self.client = client(uri)
            if id_file.exists():
                self.run_id = id_file.read_text().strip()
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                exp = ensure_experiment(uri, experiment)
                self.run_id = self.client.create_run(exp, run_name=run_name, tags=tags).info.run_id
                id_file.write_text(self.run_id)
        except Exception as e:
            self._offline(e)

    def _offline(self, err):
        if not self.pending:
            print(f"tracking: MLflow at {self.uri} unreachable ({type(err).__name__}: {err}); "
                  f"records kept in {self.journal}", file=sys.stderr)
        self.pending = True

    def _send(self, kind, **payload):
        with open(self.journal, "a") as f:
            f.write(json.dumps({"kind": kind, "time": time.time(), **payload}) + "\n")
        if self.run_id is None:
            return
        try:
            from mlflow.entities import Metric, Param, RunTag
            ts = int(time.time() * 1000)
            if kind == "metrics":
                self.client.log_batch(self.run_id, metrics=[
                    Metric(k, float(v), ts, payload["step"]) for k, v in payload["data"].items()])
            elif kind == "params":
                self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in payload["data"].items()])
            elif kind == "tags":
                self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in payload["data"].items()])
            elif kind == "artifact":
                self.client.log_artifact(self.run_id, payload["path"])
            elif kind == "end":
                self.client.set_terminated(self.run_id, status=payload["status"])
        except Exception as e:
            self._offline(e)

    def params(self, data):
        self._send("params", data=data)

    def tags(self, data):
        self._send("tags", data=data)

    def metrics(self, data, step=0):
        self._send("metrics", data={k: v for k, v in data.items() if v == v}, step=int(step))

    def artifact(self, path):
        self._send("artifact", path=str(Path(path).resolve()))

    def end(self, status="FINISHED"):
        self._send("end", status=status)


def provenance():
    """Git commit, package versions, host: who and what produced a run."""
    import platform
    import subprocess

    import numpy
    import torch
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__), timeout=5).stdout.strip()
    except Exception:
        commit = ""
    return {"git_commit": commit or "unknown", "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "host": platform.node(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID", "")}
