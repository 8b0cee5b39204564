"""Tracking: many writer processes, outages, crashes between send and watermark, replays.

Writer processes come from a forkserver that has imported MLflow once, so sixteen of them start in
seconds on two cores; none shares a connection with this process.
"""
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ltbench import tracking
from ltbench.tracking import Tracker, client, sync

WRITERS, KEYS = 16, ("loss", "acc", "lr")


@pytest.fixture(scope="module")
def procs():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store",
                                "mlflow.store.tracking.rest_store", "ltbench.tracking"])
    return ctx


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module's tests (each test has its own run folders and run names)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    tracking.ensure_experiment(uri)            # the DAG's init_tracking rule does this once, before any job
    return uri


def value(key, step):
    return {"loss": 1.0 / (step + 1), "acc": step * 0.5, "lr": 0.1 * 0.9 ** step}[key]


def _writer(uri, folder, barrier, steps):
    """One writer process: a Tracker logging `steps` steps of KEYS, the span of its writes recorded."""
    tr = Tracker(uri, folder, run_name=f"writer/{Path(folder).name}", tags={"writer": Path(folder).name}, patience=120)
    barrier.wait()
    t0 = time.time()
    for s in range(steps):
        tr.metrics({k: value(k, s) for k in KEYS}, step=s)
    t1 = time.time()
    tr.end()
    Path(folder, "span.json").write_text(json.dumps({"t0": t0, "t1": t1, "pending": tr.pending}))
    tr.close()


def history(c, run_id, key):
    return sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))


def journal_metrics(folder):
    recs = [json.loads(line) for line in Path(folder, "journal.jsonl").read_text().splitlines()]
    return sorted((k, r["step"], v) for r in recs if r["kind"] == "metrics" for k, v in r["data"].items())


def store_metrics(c, run_id, keys):
    return sorted((k, s, v) for k in keys for s, v in history(c, run_id, k))


def run_writers(procs, uri, root, steps):
    tracking.ensure_experiment(uri)
    barrier = procs.Barrier(WRITERS)
    folders = [root / f"w{i:02d}" for i in range(WRITERS)]
    ps = [procs.Process(target=_writer, args=(uri, str(f), barrier, steps)) for f in folders]
    t = time.time()
    for p in ps:
        p.start()
    for p in ps:
        p.join(240)
    assert [p.exitcode for p in ps] == [0] * WRITERS
    spans = [json.loads((f / "span.json").read_text()) for f in folders]
    # every writer was still writing when the last one began: all sixteen overlapped in time
    assert max(s["t0"] for s in spans) < min(s["t1"] for s in spans)
    assert not any(s["pending"] for s in spans)
    c = client(uri)
    runs = c.search_runs([c.get_experiment_by_name("ltbench").experiment_id], "tags.writer LIKE 'w%'")
    assert len(runs) == WRITERS
    for f in folders:
        run_id = (f / "mlflow_run_id").read_text()
        expected = [(k, s, value(k, s)) for k in KEYS for s in range(steps)]
        assert store_metrics(c, run_id, KEYS) == sorted(expected)        # none lost, none twice
        assert journal_metrics(f) == sorted(expected)
        assert c.get_run(run_id).info.status == "FINISHED"
    print(f"{WRITERS} writers x {steps} steps x {len(KEYS)} metrics into {uri}: {time.time() - t:.1f} s")


def test_16_writer_processes_share_one_sqlite_store_without_loss_or_duplicates(procs, store, tmp_path):
    run_writers(procs, store, tmp_path, steps=50)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`ltbench tracking-server` on a loopback port, stopped at the end of the module."""
    root, port = tmp_path_factory.mktemp("server"), free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "ltbench.cli", "tracking-server", "--backend-store-uri",
                             f"sqlite:///{root}/db/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 150
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None and time.time() < deadline, (root / "server.log").read_text()[-2000:]
        time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, signal.SIGKILL)      # its SQLite file is thrown away; no need to wait for a graceful stop
    proc.wait()
    log.close()


def test_16_writer_processes_through_a_tracking_server(procs, server, tmp_path):
    run_writers(procs, server, tmp_path, steps=20)


def test_training_against_an_unreachable_server_then_sync_sends_everything_once(synth, server, tmp_path, monkeypatch):
    from ltbench import train
    from ltbench.config import build
    monkeypatch.setenv("LTBENCH_TRACKING_PATIENCE", "0.5")
    dead = f"http://127.0.0.1:{free_port()}"           # nothing listens there
    cfg = build("synth", 10, "ce", 0, overrides={"epochs": 3, "backbone": "resnet8", "batch_size": 64, "threads": 1})
    out = tmp_path / "run"
    train.run(cfg, synth["data"], synth["split"], out, out / "ckpt", dead)
    res = json.loads((out / "result.json").read_text())
    assert res["run_id"] is None and res["tracking_pending"] is True
    assert not (out / "ckpt" / "synced").exists()

    # the store is back (here: at another address); sync creates the run and points result.json at it
    cmd = [sys.executable, "-m", "ltbench.cli", "sync", str(tmp_path), "--tracking-uri", server]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    res = json.loads((out / "result.json").read_text())
    assert res["run_id"] == (out / "ckpt" / "mlflow_run_id").read_text()
    assert res["tracking_uri"] == server and res["tracking_pending"] is False
    c = client(server)
    mine = journal_metrics(out / "ckpt")
    keys = sorted({k for k, _, _ in mine})
    assert store_metrics(c, res["run_id"], keys) == mine
    assert [s for s, _ in history(c, res["run_id"], "test_top1")] == [1, 2, 3]
    run = c.get_run(res["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "ce"
    assert run.data.params["epochs"] == "3"
    assert {a.path for a in c.list_artifacts(res["run_id"])} >= {"config.yaml", "per_class.csv", "confusion.png"}

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "0 records sent" in again.stdout
    assert store_metrics(c, res["run_id"], keys) == mine


class Locked(Exception):
    error_code = "TEMPORARILY_UNAVAILABLE"          # what MLflow raises for "database is locked"


class LockableClient:
    """A real MlflowClient whose writes fail as a locked SQLite store's do while `locked` calls remain."""
    locked = 0

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        attr = getattr(self.real, name)
        if name not in ("log_batch", "update_run", "set_terminated", "create_run", "log_artifact"):
            return attr

        def call(*a, **k):
            if LockableClient.locked:
                LockableClient.locked -= 1
                raise Locked("(sqlite3.OperationalError) database is locked")
            return attr(*a, **k)
        return call


def test_a_locked_store_is_retried_then_left_to_the_journal_and_synced_once(store, tmp_path, monkeypatch):
    real = tracking.client
    monkeypatch.setattr(tracking, "client", lambda uri: LockableClient(real(uri)))
    uri, folder = store, tmp_path / "ckpt"
    tr = Tracker(uri, folder, "locked", {}, patience=5)
    LockableClient.locked = 3                       # a short lock: retried with backoff, nothing left behind
    tr.metrics({"a": 1.0}, step=1)
    assert not tr.pending and LockableClient.locked == 0

    tr.patience = 0.3
    LockableClient.locked = 10**9                   # locked longer than the patience: the journal keeps it
    for s in (2, 3, 4):
        tr.metrics({"a": float(s), "b": -s}, step=s)
    tr.end()
    assert tr.pending
    tr.close()
    LockableClient.locked = 0
    run_id, sent, left = sync(folder)
    assert (run_id, left) == (tr.run_id, 0) and sent == 4    # three metrics records and the end
    c = real(uri)
    assert history(c, run_id, "a") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    assert history(c, run_id, "b") == [(2, -2.0), (3, -3.0), (4, -4.0)]
    assert c.get_run(run_id).info.status == "FINISHED"


def _dies_after_send(uri, folder, last_step):
    """Log steps 0.. and die (as kill -9 would) after MLflow accepted `last_step`, before the watermark moved."""
    real, die_at = tracking._write_atomic, [None]

    def write(path, text):
        if path.name == "synced" and json.loads(text)["seq"] == die_at[0]:
            os._exit(9)
        real(path, text)
    tracking._write_atomic = write
    tr = Tracker(uri, folder, "crash", {})
    for s in range(last_step + 1):
        if s == last_step:
            die_at[0] = tr.journal.records[-1]["seq"] + 1
        tr.metrics({"x": float(s), "y": 10.0 + s}, step=s)


def test_a_crash_between_send_and_watermark_and_a_relogged_epoch_leave_no_duplicates(procs, store, tmp_path):
    uri, folder = store, tmp_path / "ckpt"
    p = procs.Process(target=_dies_after_send, args=(uri, str(folder), 4))
    p.start()
    p.join(120)
    assert p.exitcode == 9
    run_id = (folder / "mlflow_run_id").read_text()
    c = client(uri)
    assert history(c, run_id, "x")[-1] == (4, 4.0)                   # the store has step 4 ...
    mark = json.loads((folder / "synced").read_text())
    assert mark["seq"] == json.loads((folder / "journal.jsonl").read_text().splitlines()[-1])["seq"] - 1  # ... the watermark not

    # the job is rerun: it resumes from an earlier checkpoint and logs steps 2..7 again (other numbers)
    tr = Tracker(uri, folder, "crash", {})
    for s in range(2, 8):
        tr.metrics({"x": 100.0 + s, "y": 200.0 + s}, step=s)
    tr.end()
    tr.close()
    assert tr.run_id == run_id
    assert history(c, run_id, "x") == [(s, float(s) if s <= 4 else 100.0 + s) for s in range(8)]
    assert history(c, run_id, "y") == [(s, 10.0 + s if s <= 4 else 200.0 + s) for s in range(8)]


def test_replaying_a_whole_journal_twice_adds_nothing(store, tmp_path):
    uri, folder = store, tmp_path / "ckpt"
    tr = Tracker(uri, folder, "replay", {"k": "v"})
    for s in range(5):
        tr.metrics({"x": s * 1.5}, step=s)
    tr.end()
    tr.close()
    c = client(uri)
    before = history(c, tr.run_id, "x")
    assert len(before) == 5

    (folder / "synced").unlink()                      # forget everything was sent: replay from record 1
    (folder / "mlflow_run_id").unlink()
    assert sync(folder) == (tr.run_id, len(tr.journal.records), 0)   # found by its journal tag, not created again
    assert history(c, tr.run_id, "x") == before

    # new timestamps defeat MLflow's own exact-row dedup: only the (key, step) check is left
    lines = [json.loads(x) for x in (folder / "journal.jsonl").read_text().splitlines()]
    (folder / "journal.jsonl").write_text("".join(json.dumps({**r, "ms": r["ms"] + 7}) + "\n" for r in lines))
    (folder / "synced").unlink()
    sync(folder)
    assert history(c, tr.run_id, "x") == before
    exp = c.get_experiment_by_name("ltbench").experiment_id
    assert len(c.search_runs([exp], "attributes.run_name = 'replay'")) == 1


def test_a_torn_last_journal_line_is_dropped_and_the_rest_kept(store, tmp_path, capsys):
    uri, folder = store, tmp_path / "ckpt"
    tr = Tracker(uri, folder, "torn", {})
    tr.metrics({"x": 1.0}, step=1)
    tr.close()
    with open(folder / "journal.jsonl", "a") as f:
        f.write('{"seq": 99, "kind": "metr')                # the process died inside a write
    tr = Tracker(uri, folder, "torn", {})
    assert "partial record" in capsys.readouterr().err
    tr.metrics({"x": 2.0}, step=2)
    tr.end()
    tr.close()
    assert history(client(uri), tr.run_id, "x") == [(1, 1.0), (2, 2.0)]
    assert [r["seq"] for r in tr.journal.records] == list(range(1, len(tr.journal.records) + 1))


def _holds(folder, ready, release):
    j = tracking.Journal(folder, "sqlite:///unused.db")
    ready.set()
    release.wait(60)
    j.close()


def test_sync_skips_a_folder_a_running_job_holds(procs, store, tmp_path):
    uri, folder = store, tmp_path / "ckpt"
    Tracker(uri, folder, "busy", {}).close()
    ready, release = procs.Event(), procs.Event()
    p = procs.Process(target=_holds, args=(str(folder), ready, release))
    p.start()
    assert ready.wait(60)
    with pytest.raises(tracking.Busy, match="is using this run folder"):
        sync(folder)
    release.set()
    p.join(60)
    assert sync(folder)[2] == 0
