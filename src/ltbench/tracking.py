"""MLflow tracking that never loses a number, never logs one twice, and never kills a training run.

The journal is the source of truth. Every record (the run itself, params, tags, per-epoch
metrics, artifacts, status) is appended to `journal.jsonl` in the run's checkpoint folder with
a sequence number and fsynced before MLflow sees it. `synced` is the watermark: JSON
{uri, run_id, seq} saying that the store at `uri` accepted every record up to `seq`; it is
replaced atomically after each accepted record, so it is never ahead of the store.

Exactly once. A process can die after MLflow accepted a record but before the watermark moved,
so records after the watermark may already be in the store. Replaying them is harmless:
  - a metric is keyed by (key, step). The journal holds at most one value per (key, step): a
    resumed job that re-runs epoch k (logged, but its checkpoint never written) keeps the first
    value, which on CPU is the same number. While replaying records that may have been sent,
    the metric history of each key is read once and (key, step) pairs the store already has
    are skipped. (MLflow's SQL stores also drop an exact repeat of (key, value, timestamp,
    step), and the journal keeps each record's timestamp, so even a lost reply is harmless.)
  - the run is created with the tag `ltbench_journal=<journal id>`, found by that tag before
    creating it, so a crash between creation and the watermark never makes a second run;
  - params (same value), tags, artifacts (same path) and status are idempotent in MLflow.
A lock (`journal.lock`, a POSIX lock, which NFS honours) keeps a training job and `ltbench sync` from
sending the same folder's records at the same time.

Outages. A busy or unreachable store is retried with backoff for `patience` seconds (env
LTBENCH_TRACKING_PATIENCE, default 60; a locked SQLite store first waits out MLflow's own 20 s
busy timeout), then the job trains on and keeps records in the journal only, trying again at
most once per `patience`. A job resumed later sends its backlog first; `ltbench sync` does it
for a finished one. If the run could not even be created, the first sync creates it, writes
its id to `mlflow_run_id` and `synced`, and rewrites the run's `result.json` (run_id,
tracking_uri, tracking_pending) so `ltbench report` finds it. Syncing to another URI
(`ltbench sync --tracking-uri`) replays the whole journal into that store.

On a cluster: SQLite on a network filesystem is unsafe with many writers. Run one MLflow
server (`ltbench tracking-server`, on the login node, its SQLite file on a local disk) and set
`tracking_uri: http://<login node>:<port>`; the jobs then only speak HTTP.
"""
from __future__ import annotations

import fcntl
import json
import os
import random
import socket
import sys
import time
import uuid
from pathlib import Path

EXPERIMENT = "ltbench"
JOURNAL_TAG = "ltbench_journal"
LOCK_WAIT_S = 120
# MLflow answers with these when resending cannot help (e.g. a param changed its value).
REJECTED = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE"}
# Network filesystems on which SQLite's locking cannot be trusted.
NETWORK_FS = {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "beegfs", "fuse.sshfs", "ceph", "fuse.ceph"}


def artifact_root(uri):
    """Artifacts sit next to a SQLite store (results/mlartifacts), not in the job's cwd."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts")
    return None


def client(uri):
    # MLflow's own HTTP retries back off for minutes per call; the journal is our retry, so let a
    # call fail fast and `patience` decide how long to insist.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
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


def default_patience():
    return float(os.environ.get("LTBENCH_TRACKING_PATIENCE", 60))


class Busy(RuntimeError):
    """Another process holds the run folder's lock."""


class Unsendable(Exception):
    """A journal record no store can take (its artifact file is gone, its kind unknown)."""


def _lock(path, wait_s):
    f = open(path, "a+")
    deadline, told = time.monotonic() + wait_s, False
    while True:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except (BlockingIOError, PermissionError):
            holder = Path(path).read_text().strip() or "another process"
            if time.monotonic() >= deadline:
                f.close()
                raise Busy(f"{path.parent}: {holder} is using this run folder (lock {path}); wait for it "
                           f"to end, or end it") from None
            if not told:
                print(f"tracking: waiting for {holder} to release {path}", file=sys.stderr, flush=True)
                told = True
            time.sleep(0.5)
        except OSError as e:   # e.g. Lustre mounted without -o flock
            print(f"tracking: cannot lock {path} ({e}); make sure one process at a time uses this run folder",
                  file=sys.stderr, flush=True)
            break
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


def _write_atomic(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_journal(path):
    """The journal's records; a torn last line (the process died mid-write) is cut off."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    if end < len(raw):
        print(f"tracking: {path} ends in a partial record (a crash mid-write); dropping it", file=sys.stderr, flush=True)
        with open(path, "r+b") as f:
            f.truncate(end)
    records = []
    for i, line in enumerate(raw[:end].decode().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path}: line {i} is not a JSON record; the journal is damaged: repair or "
                             f"delete that line, then rerun") from None
    return records


def _chunks(items, n):
    return [items[i:i + n] for i in range(0, len(items), n)]


def _why(err):
    return f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"


class Journal:
    """A run folder's journal.jsonl, its `synced` watermark, and the MLflow run they feed."""

    def __init__(self, folder, uri=None, lock_wait_s=LOCK_WAIT_S):
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.dir / "journal.lock", lock_wait_s)
        self.path = self.dir / "journal.jsonl"
        self.records = _read_journal(self.path)
        starts = [r["uri"] for r in self.records if r["kind"] == "start"]
        self.uri = uri or (starts[-1] if starts else None)
        mark = json.loads((self.dir / "synced").read_text()) if (self.dir / "synced").exists() else {}
        same = mark.get("uri") == self.uri
        self.done = mark["seq"] if same else 0
        self.run_id = mark.get("run_id") if same else None
        self.doubt = True      # records after the watermark may have reached the store before a crash
        self.history = {}      # key -> steps the store holds, read while in doubt
        self.offline = False
        self._client = None

    @property
    def backlog(self):
        return [r for r in self.records if r["seq"] > self.done]

    def append(self, kind, **payload):
        rec = {"seq": self.records[-1]["seq"] + 1 if self.records else 1, "kind": kind,
               "ms": int(time.time() * 1000), **payload}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(rec)
        return rec

    def flush(self, patience):
        """Send every record after the watermark, oldest first; a busy or unreachable store is retried
        with backoff for up to `patience` seconds. True when nothing is left to send."""
        deadline, delay = time.monotonic() + patience, 0.1
        for rec in self.backlog:
            while True:
                try:
                    self._send(rec)
                    break
                except Exception as e:
                    refused = getattr(e, "error_code", None) in REJECTED and rec["kind"] != "run"
                    if refused or isinstance(e, Unsendable):
                        print(f"tracking: MLflow at {self.uri} refused journal record {rec['seq']} ({rec['kind']}): "
                              f"{_why(e)}; it stays in {self.path} only", file=sys.stderr, flush=True)
                        break
                    self.doubt, self.history = True, {}
                    if time.monotonic() + delay > deadline:
                        if not self.offline:
                            print(f"tracking: MLflow at {self.uri} unavailable ({_why(e)}); records are kept in "
                                  f"{self.path} and sent later (or run `ltbench sync {self.dir}`)",
                                  file=sys.stderr, flush=True)
                        self.offline = True
                        return False
                    time.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(2 * delay, 5.0)
            self.done = rec["seq"]
            _write_atomic(self.dir / "synced", json.dumps({"uri": self.uri, "run_id": self.run_id, "seq": self.done}))
        if self.offline:
            print(f"tracking: MLflow at {self.uri} reachable again; journal {self.path} sent", file=sys.stderr, flush=True)
        self.doubt, self.history, self.offline = False, {}, False
        return True

    @property
    def client(self):
        if self._client is None:
            self._client = client(self.uri)
        return self._client

    def _send(self, rec):
        from mlflow.entities import Metric, Param, RunTag
        c, kind, run = self.client, rec["kind"], self.run_id
        if kind == "run":
            self._find_or_create_run(rec)
        elif kind == "start":
            c.update_run(run, status="RUNNING")
        elif kind == "params":
            for part in _chunks(list(rec["data"].items()), 100):
                c.log_batch(run, params=[Param(k, v) for k, v in part])
        elif kind == "tags":
            for part in _chunks(list(rec["data"].items()), 100):
                c.log_batch(run, tags=[RunTag(k, v) for k, v in part])
        elif kind == "metrics":
            step, data = rec["step"], rec["data"]
            if self.doubt:
                data = {k: v for k, v in data.items() if step not in self._steps(k)}
            for part in _chunks(list(data.items()), 1000):
                c.log_batch(run, metrics=[Metric(k, v, rec["ms"], step) for k, v in part])
            for k in data:
                if k in self.history:
                    self.history[k].add(step)
        elif kind == "artifact":
            path = self.dir / rec["path"]
            if not path.exists():
                raise Unsendable(f"artifact {path} no longer exists")
            c.log_artifact(run, str(path))
        elif kind == "end":
            c.set_terminated(run, status=rec["status"], end_time=rec["ms"])
        else:
            raise Unsendable(f"unknown record kind {kind!r}")

    def _steps(self, key):
        if key not in self.history:
            self.history[key] = {m.step for m in self.client.get_metric_history(self.run_id, key)}
        return self.history[key]

    def _find_or_create_run(self, rec):
        from mlflow.entities import ViewType
        exp = ensure_experiment(self.uri, rec["experiment"])
        found = self.client.search_runs([exp], f"tags.{JOURNAL_TAG} = '{rec['journal_id']}'",
                                        run_view_type=ViewType.ALL, max_results=1)
        if found:
            self.run_id = found[0].info.run_id
        else:
            self.run_id = self.client.create_run(exp, start_time=rec["ms"], run_name=rec["run_name"],
                                                 tags={JOURNAL_TAG: rec["journal_id"]}).info.run_id
        _write_atomic(self.dir / "mlflow_run_id", self.run_id)

    def point_result(self):
        """Make the run's result.json (if written) name the run and store its records are in."""
        run = next((r for r in self.records if r["kind"] == "run"), None)
        path = self.dir / run["result"] if run and run.get("result") else None
        if path is None or not path.exists():
            return
        result = json.loads(path.read_text())
        now = {"run_id": self.run_id, "tracking_uri": self.uri, "tracking_pending": bool(self.backlog)}
        if any(result.get(k) != v for k, v in now.items()):
            _write_atomic(path, json.dumps({**result, **now}, indent=1))

    def close(self):
        self._lock.close()


class Tracker:
    """What the training loop logs through: journal first, then MLflow; never raises for the store."""

    def __init__(self, uri, run_dir, run_name, tags, result=None, experiment=EXPERIMENT, patience=None):
        self.patience = default_patience() if patience is None else patience
        self.journal = j = Journal(run_dir, uri)
        if not any(r["kind"] == "run" for r in j.records):
            j.append("run", experiment=experiment, run_name=run_name, journal_id=uuid.uuid4().hex,
                     result=os.path.relpath(Path(result).resolve(), j.dir.resolve()) if result else None)
        self._logged = {(k, r["step"]) for r in j.records if r["kind"] == "metrics" for k in r["data"]}
        self._params = {k: v for r in j.records if r["kind"] == "params" for k, v in r["data"].items()}
        j.append("start", uri=uri, host=socket.gethostname(), pid=os.getpid())
        j.append("tags", data={k: str(v) for k, v in tags.items()})
        self.retry_at = 0.0
        self._flush(self.patience)       # a resumed job sends its backlog first

    @property
    def run_id(self):
        return self.journal.run_id

    @property
    def pending(self):
        return bool(self.journal.backlog)

    def _flush(self, patience):
        if not self.journal.flush(patience):
            self.retry_at = time.monotonic() + self.patience

    def _record(self, kind, **payload):
        self.journal.append(kind, **payload)
        if time.monotonic() >= self.retry_at:
            self._flush(0 if self.journal.offline else self.patience)

    def params(self, data):
        new = {k: str(v)[:6000] for k, v in data.items()}
        new = {k: v for k, v in new.items() if self._params.get(k) != v}
        if new:
            self._params.update(new)
            self._record("params", data=new)

    def tags(self, data):
        self._record("tags", data={k: str(v) for k, v in data.items()})

    def metrics(self, data, step=0):
        step = int(step)
        new = {k: float(v) for k, v in data.items() if v == v and (k, step) not in self._logged}
        if new:
            self._logged.update((k, step) for k in new)
            self._record("metrics", step=step, data=new)

    def artifact(self, path):
        self._record("artifact", path=os.path.relpath(Path(path).resolve(), self.journal.dir.resolve()))

    def end(self, status="FINISHED"):
        self.journal.append("end", status=status)
        self._flush(self.patience)

    def close(self):
        self.journal.close()


def journals(paths):
    """Every folder holding a journal.jsonl at or below `paths` (run folders, ckpt folders, trees)."""
    found = set()
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist; give run folders such as results/runs (or their ckpt folders)")
        found.update(j.parent for j in ([p] if p.name == "journal.jsonl" else p.rglob("journal.jsonl")))
    return sorted(found)


def sync(folder, uri=None, patience=None):
    """Send a run folder's unsent journal records to MLflow and point its result.json at the run.

    `uri` defaults to the store the job last trained against. Returns (run_id, records sent,
    records left); raises Busy when a job is using the folder (it syncs itself as it goes).
    """
    j = Journal(folder, uri, lock_wait_s=0)
    try:
        if j.uri is None:
            raise ValueError(f"{j.path} names no tracking URI; pass --tracking-uri")
        before = len(j.backlog)
        j.flush(default_patience() if patience is None else patience)
        if j.run_id is not None:
            j.point_result()
        return j.run_id, before - len(j.backlog), len(j.backlog)
    finally:
        j.close()


def filesystem(path):
    """The filesystem type /proc/mounts gives for `path` ('' where unknown)."""
    best, kind = "", ""
    target = str(Path(path).resolve())
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        parts = line.split()
        if len(parts) > 2 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")) \
                and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


def server_argv(backend_store_uri, artifacts_destination, host="127.0.0.1", port=5000, workers=2, allowed_hosts=None):
    """The `mlflow server` command line for ltbench's jobs, after checking the store's location."""
    if backend_store_uri.startswith("sqlite:///"):
        db = Path(backend_store_uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        if filesystem(db.parent) in NETWORK_FS:
            print(f"tracking-server: {db} is on a network filesystem ({filesystem(db.parent)}); SQLite's locks are "
                  f"unreliable there, put it on the server's local disk", file=sys.stderr)
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
            "--artifacts-destination", str(artifacts_destination), "--host", host, "--port", str(port),
            "--workers", str(workers)]
    if allowed_hosts:
        argv += ["--allowed-hosts", allowed_hosts]
    return argv


def provenance():
    """Git commit, package versions, host, Slurm job and its GPUs: who and what produced a run."""
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
            "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "slurm_gpus": os.environ.get("SLURM_STEP_GPUS", os.environ.get("SLURM_JOB_GPUS", "")),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
