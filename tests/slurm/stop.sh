#!/usr/bin/env bash
# Stop what tests/slurm/start.sh DIR started, by the PIDs in DIR's pid files; waits until they are
# gone, then removes the Slurm config start.sh wrote (so later `snakemake` calls don't wait on it).
set -uo pipefail
DIR=${1:?usage: stop.sh DIR}
pids=()
for f in slurmd slurmctld munged; do
    [ -s "$DIR/$f.pid" ] || continue
    pid=$(cat "$DIR/$f.pid")
    kill "$pid" 2>/dev/null && pids+=("$pid")
    rm -f "$DIR/$f.pid"
done
for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
done
# only the config that start.sh wrote for this DIR
if grep -qxF "StateSaveLocation=$(realpath "$DIR")/state" /etc/slurm/slurm.conf 2>/dev/null; then
    rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf
fi
exit 0
