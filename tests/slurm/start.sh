#!/usr/bin/env bash
# A single-node Slurm for tests: controller + node daemon on this machine, two fake GPUs.
#   tests/slurm/start.sh DIR    then    sbatch ...    then    tests/slurm/stop.sh DIR
# State, logs and pid files live in DIR. The config must sit at the default /etc/slurm/slurm.conf:
# Snakemake's job step drops SLURM_CONF from the environment before it calls srun. stop.sh removes
# it again, because with a slurm.conf and no controller every `snakemake` call waits 10 s (the
# Slurm plugin probes `scontrol show config` when it loads). An existing config is left alone.
# Needs root and Debian's slurmctld slurmd slurm-client munge packages.
set -euo pipefail
DIR=$(realpath "${1:?usage: start.sh DIR}")
if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
    echo "start.sh: Slurm daemons are already running on this machine; stop them first" >&2
    exit 1
fi
mkdir -p "$DIR/state" "$DIR/spool"
H=$(hostname -s)

# munge authenticates the daemons to each other; reuse a running munged, else start one (and stop it later)
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge && rm -f /run/munge/munged.pid
    su -s /bin/sh munge -c /usr/sbin/munged
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$DIR/munged.pid"
fi

CONF_DIR=/etc/slurm
MARK="# written by ltbench tests/slurm/start.sh"
if [ -e $CONF_DIR/slurm.conf ] && ! grep -qxF "$MARK" $CONF_DIR/slurm.conf; then
    echo "start.sh: $CONF_DIR/slurm.conf exists and is not ours; not touching a real Slurm set-up" >&2
    exit 1
fi
mkdir -p $CONF_DIR
MEM_MB=$(awk '/^MemTotal/ {print int($2 / 2048)}' /proc/meminfo)   # half the machine; more drains the node
cat > $CONF_DIR/slurm.conf <<CONF
$MARK
ClusterName=local
SlurmctldHost=$H(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# squeue must still see finished jobs when Snakemake asks (no accounting database here)
MinJobAge=3600
# without it each job takes all node memory and jobs run one at a time
DefMemPerCPU=1000
ReturnToService=2
GresTypes=gpu
NodeName=$H NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$MEM_MB Gres=gpu:fake:2 State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$H Default=NO MaxTime=INFINITE State=UP
CONF
cat > $CONF_DIR/gres.conf <<CONF
$MARK
AutoDetect=off
NodeName=$H Name=gpu Type=fake File=/dev/fakegpu[0-1]
CONF
# Slurm only hands out GPUs backed by character devices; these alias /dev/null's numbers
for i in 0 1; do [ -e /dev/fakegpu$i ] || mknod /dev/fakegpu$i c 1 3; done

/usr/sbin/slurmctld
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
/usr/sbin/slurmd
for _ in $(seq 100); do
    sinfo -h -N -o '%t' 2>/dev/null | grep -qx 'idle' && exit 0
    sleep 0.2
done
echo "start.sh: the node did not become idle; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
exit 1
