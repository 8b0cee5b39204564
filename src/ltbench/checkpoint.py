"""Checkpoints that survive `kill -9`, preemption and damaged files.

`save(obj, dir, "last", prev="prev")` writes `last.pt` (a plain `torch.save` file, so
`torch.load` and `ltbench eval` read it as before) and `last.pt.sha256` beside it, in
`sha256sum` format. The checkpoint it replaces is kept as `prev.pt` first. The steps are
ordered so that a process killed between any two of them leaves at least one complete,
verifiable checkpoint that is the new one or the one before it:

    1. the new bytes go to `last.pt.tmp` (fsynced);
    2. `prev.pt.sha256` gets last's digest, then `prev.pt` becomes a hard link to `last.pt`
       (prev is unverifiable between the two, last still verifies);
    3. `last.pt.tmp` replaces `last.pt`, then the new digest replaces `last.pt.sha256`
       (last is unverifiable between the two, prev verifies).

`load_latest(dir)` verifies `last.pt` against its digest and falls back to `prev.pt`, saying so
in one line. A run keeps `last`, `prev` and `best_val`: nothing grows with the epoch count.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import time
from pathlib import Path

import torch


def _sidecar(path):
    return path.with_name(path.name + ".sha256")


def _write(path, data):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest_line(digest, path):
    return f"{digest}  {path.name}\n".encode()


def _verified_bytes(path):
    """The file's bytes if its SHA-256 matches its sidecar; ValueError saying what is wrong otherwise."""
    side = _sidecar(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not side.exists():
        raise ValueError(f"{path} has no checksum file {side.name} (its save was interrupted, or it was "
                         f"not written by ltbench)")
    data = path.read_bytes()
    fields = side.read_text().split()
    want = fields[0] if fields else ""
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise ValueError(f"{path} fails its SHA-256 check ({len(data)} bytes, digest {got[:12]}…, "
                         f"{side.name} says {want[:12] or 'nothing'}…): truncated, damaged or its save was cut short")
    return data


def _is_good(path):
    try:
        _verified_bytes(path)
        return True
    except (ValueError, FileNotFoundError):
        return False


def save(obj, directory, name, prev=None):
    """Write `obj` to `directory/name.pt` atomically with its SHA-256 sidecar.

    With `prev`, the current `name.pt` is kept as `prev.pt` first, but only if it verifies: a
    damaged `last` never overwrites a good `prev`.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    path = d / f"{name}.pt"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if prev and _is_good(path):
        keep = d / f"{prev}.pt"
        _write(_sidecar(keep), _digest_line(_sidecar(path).read_text().split()[0], keep))
        link = keep.with_name(keep.name + ".tmp")
        link.unlink(missing_ok=True)
        try:
            os.link(path, link)
        except OSError:     # a filesystem without hard links
            shutil.copyfile(path, link)
        os.replace(link, keep)
    os.replace(tmp, path)
    _write(_sidecar(path), _digest_line(hashlib.sha256(data).hexdigest(), path))
    _fsync_dir(d)
    return path


def load(path, map_location="cpu"):
    """Load a checkpoint written by `save` after checking its SHA-256; ValueError if it fails."""
    data = _verified_bytes(Path(path))
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)


def load_latest(directory, map_location="cpu", names=("last", "prev")):
    """The newest checkpoint of `names` that verifies, or None when there is none.

    Falling back (or finding nothing usable although files exist) prints one warning line.
    """
    d = Path(directory)
    problems = []
    for name in names:
        path = d / f"{name}.pt"
        if not path.exists() and not _sidecar(path).exists():
            continue
        try:
            obj = load(path, map_location)
        except (ValueError, FileNotFoundError) as e:
            problems.append(str(e))
            continue
        if problems:
            print(f"checkpoint: {'; '.join(problems)}; resuming from {path.name} instead", file=sys.stderr, flush=True)
        return obj
    if problems:
        print(f"checkpoint: {'; '.join(problems)}; no usable checkpoint in {d}, starting from scratch",
              file=sys.stderr, flush=True)
    return None


# Settings that change where or how fast a run computes, not what it computes: a run may resume
# under other values of these (another node, more threads, a moved stage-1 folder).
PLACEMENT = frozenset({"device", "threads", "workers", "compile", "eval_batch_size", "init_from",
                       "deterministic", "channels_last"})


def changed_settings(saved, current):
    """Names of the settings in which a checkpoint's run config differs from the current one."""
    keys = (set(saved) | set(current)) - PLACEMENT
    return sorted(k for k in keys if saved.get(k) != current.get(k))


def set_aside(directory):
    """Move a run's checkpoints (and MLflow journal) out of the way; returns the new folder."""
    d = Path(directory)
    stale = d.with_name(f"{d.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    d.rename(stale)
    d.mkdir()
    return stale
