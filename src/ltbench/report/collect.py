"""Gather finished runs into one table: result.json picks the runs, MLflow supplies the numbers.

A result.json is written last by a training run, so its existence marks a finished run; its
`run_id` is the key into the MLflow store, which is the one source of truth for every number
the tables and plots show.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

GROUPS = ("many", "medium", "few")
SELECTIONS = ("last", "best_val", "best_test")
# Every finished run logs these; a run without them did not finish and must not be averaged.
REQUIRED = tuple(f"top1_{s}" for s in SELECTIONS) + ("wall_s",)
# A group metric is absent when the group has no class (e.g. no few classes on CIFAR-10-LT).
OPTIONAL = tuple(f"{g}_{s}" for g in GROUPS for s in SELECTIONS) + ("ece_last", "nll_last")


def _client(uri):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def _fetch(client, run_id, path, uri):
    from mlflow.exceptions import MlflowException
    try:
        return client.get_run(run_id)
    except MlflowException as e:
        if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise ValueError(f"{path}: run id {run_id} is not in the MLflow store {uri}; pass the tracking "
                             f"URI the run was logged to, or delete the result.json and rerun its training") from None
        raise


def _row(path, result, run, uri):
    m, p, t = run.data.metrics, run.data.params, run.data.tags
    missing = [k for k in REQUIRED if k not in m]
    if missing:
        raise ValueError(f"{path}: MLflow run {result['run_id']} lacks metrics {', '.join(missing)}; "
                         f"the run did not finish, rerun its training")
    for key in ("dataset", "method", "seed"):
        if key in t and str(t[key]) != str(result.get(key)):
            raise ValueError(f"{path}: says {key}={result.get(key)!r} but its MLflow run {result['run_id']} "
                             f"is tagged {key}={t[key]!r}; the file points at the wrong run, rerun its training")
    row = {
        "dataset": t.get("dataset", result.get("dataset")),
        "imb": float(t.get("imb", result.get("imb"))),
        "method": t.get("method", result.get("method")),
        "base": t.get("base", result.get("base", "")),
        "seed": int(t.get("seed", result.get("seed"))),
        "backbone": p.get("backbone", ""),
        "epochs": int(float(p["epochs"])) if "epochs" in p else None,
        "run_id": result["run_id"],
        "tracking_uri": uri,
        "result_file": str(path),
    }
    for g in GROUPS:
        row[f"n_{g}"] = int(float(p[f"n_{g}"])) if f"n_{g}" in p else None
    for k in REQUIRED + OPTIONAL:
        row[k] = float(m.get(k, float("nan")))
    return row


def collect(result_files, tracking_uri=None):
    """One row per run (columns: identity, backbone, epochs, group sizes, every summary metric).

    `tracking_uri` overrides the URI written in each result.json (e.g. when the store moved).
    """
    clients, rows = {}, []
    for path in map(Path, result_files):
        if not path.is_file():
            raise FileNotFoundError(f"result file {path} does not exist; run its training first or drop it from the list")
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); delete it and rerun its training") from None
        if "run_id" not in result:
            raise ValueError(f"{path}: has no run_id; it was not written by `ltbench train`, rerun its training")
        uri = tracking_uri or result.get("tracking_uri")
        if not uri:
            raise ValueError(f"{path}: names no tracking_uri; pass the MLflow tracking URI explicitly")
        client = clients.setdefault(uri, _client(uri))
        rows.append(_row(path, result, _fetch(client, result["run_id"], path, uri), uri))
    df = pd.DataFrame(rows)
    if df.empty:
        raise ValueError("no result files given: nothing to report; train some runs first")
    dup = df[df.duplicated(["dataset", "imb", "method", "seed"], keep=False)]
    if not dup.empty:
        raise ValueError(f"two result files for the same run: {', '.join(dup.result_file)}; keep one of them")
    return df


def per_class(run_id, tracking_uri):
    """The run's `per_class.csv` artifact (class, train_count, acc_last, acc_best_val; percent)."""
    client = _client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, "per_class.csv", tmp)
        except Exception as e:
            raise FileNotFoundError(f"MLflow run {run_id} in {tracking_uri} has no per_class.csv artifact "
                                    f"({type(e).__name__}); rerun its training to log it") from None
        return pd.read_csv(local)
