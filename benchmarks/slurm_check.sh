#!/usr/bin/env bash
# The real-SLURM check of `fxbench train --launcher slurm` (issue #17), on this machine alone:
#
#   sudo bash benchmarks/slurm_check.sh [WORK_DIR]        # root: it installs and starts daemons
#
# 1. installs Debian's slurm-wlm and munge when missing (apt-get);
# 2. starts munged, slurmctld and slurmd for a one-node cluster on localhost, every file (key,
#    sockets, slurm.conf, state, logs) in a temp folder, on private ports;
# 3. prepares a tiny synthetic archive (48 images, 64 px) and trains a 2-seed CPU sweep twice:
#    sequentially in-process (the reference) and as a SLURM job array through submitit;
#    checks both jobs finished and their checkpoints are byte-identical to the reference;
# 4. pre-emption: a longer job gets SIGUSR1 (`scancel --signal=USR1`, what SLURM sends before a
#    time limit) mid-training; it must checkpoint, requeue itself, resume from last.pt and end
#    with weights identical to an uninterrupted local run;
# 5. stops the daemons by their pids, also on failure or timeout (hard limit, default 600 s:
#    SLURM_CHECK_TIMEOUT).
# Prints "SLURM CHECK PASSED" and exits 0 on success. Environment: FXBENCH_PYTHON (default
# python3) must import fxbench and submitit (pip install 'fxbench[slurm]').
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
LIMIT=${SLURM_CHECK_TIMEOUT:-600}

if [ -z "${SLURM_CHECK_INNER:-}" ]; then
  WORK=${1:-$(mktemp -d /tmp/fxbench-slurm-check.XXXXXX)}
  mkdir -p "$WORK"
  WORK=$(cd "$WORK" && pwd)
  : > "$WORK/pids"
  # The inner run under a hard timeout; whatever happens to it (even SIGKILL), the daemons it
  # started are stopped here, by the pids it recorded.
  SLURM_CHECK_INNER=1 timeout --kill-after=20 "$LIMIT" bash "$0" "$WORK"
  rc=$?
  while read -r pid; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && echo "stopped daemon pid $pid"
  done < "$WORK/pids"
  sleep 1
  while read -r pid; do [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; done < "$WORK/pids"
  [ $rc -eq 124 ] && echo "SLURM CHECK FAILED: timed out after $LIMIT s"
  exit $rc
fi

WORK=$1
T=$WORK/cluster
mkdir -p "$T/state" "$T/spool"
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }
fail() { echo "SLURM CHECK FAILED: $*"; for f in "$T"/slurmctld.log "$T"/slurmd.log; do echo "--- tail $f"; tail -n 15 "$f" 2>/dev/null; done; exit 1; }
PY=${FXBENCH_PYTHON:-python3}
NCPU=$(getconf _NPROCESSORS_ONLN)
export PYTHONPATH="$HERE/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 FXBENCH_HOME=$WORK/home

stamp "slurm-wlm and munge"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge) > "$WORK/apt.log" 2>&1 \
    || fail "apt-get install slurm-wlm munge failed (see $WORK/apt.log)"
fi
slurmctld -V
$PY -c "import fxbench, submitit; print('fxbench', fxbench.__version__, 'from', fxbench.__file__, '; submitit', submitit.__version__)" \
  || fail "$PY cannot import fxbench and submitit (pip install 'fxbench[slurm]')"

stamp "start munged, slurmctld, slurmd (one node: $(hostname -s), $NCPU CPUs)"
dd if=/dev/urandom of="$T/munge.key" bs=1024 count=1 status=none && chmod 400 "$T/munge.key"
munged --force --key-file="$T/munge.key" --socket="$T/munge.sock" --pid-file="$T/munged.pid" \
  --log-file="$T/munged.log" --seed-file="$T/munged.seed" || fail "munged did not start"
for _ in $(seq 50); do [ -s "$T/munged.pid" ] && break; sleep 0.1; done
cat "$T/munged.pid" >> "$WORK/pids"
NODE=$(hostname -s)
cat > "$T/slurm.conf" <<EOF
ClusterName=fxcheck
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$T/munge.sock,cred_expire=10
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_min_interval=0
MpiDefault=none
ReturnToService=2
JobRequeue=1
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NCPU State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=60 State=UP
EOF
export SLURM_CONF=$T/slurm.conf
slurmctld -D -i -f "$T/slurm.conf" > "$T/slurmctld.out" 2>&1 &
echo $! >> "$WORK/pids"
slurmd -D -f "$T/slurm.conf" -N "$NODE" > "$T/slurmd.out" 2>&1 &
echo $! >> "$WORK/pids"
up=""
for _ in $(seq 60); do
  if sinfo -h -o "%T" 2>/dev/null | grep -qE "^idle"; then up=1; break; fi
  sleep 0.5
done
[ -n "$up" ] || fail "the node did not come up idle: $(sinfo 2>&1 | tail -n 3)"
sinfo

stamp "tiny synthetic archive, prepared at 64 px"
FX="$PY -m fxbench"
$FX synth "$WORK/archive" --n-images 48 --scale 0.25 --positive-fraction 0.3 > /dev/null || fail "synth"
$FX prepare --archive "$WORK/archive" --out "$WORK/prepared" --cache-size 64 --workers 1 > /dev/null 2>&1 \
  || fail "prepare"
SETS=(--set "data.prepared=$WORK/prepared" --set data.image_size=64 --set model.name=unet_dual
      --set model.base_channels=8 --set train.batch_size=8 --set train.max_steps_per_epoch=2
      --set train.eval_batch_size=16 --set eval.bootstrap=0 --set runtime.device=cpu
      --set runtime.channels_last=false --set runtime.num_threads=1 --set train.selection_metric=neg_loss)
SLURM_SETS=(--launcher slurm --set launcher.cpus=1 --set launcher.time_min=15 --set launcher.partition=debug)

wait_sweep() {  # SWEEP_DIR N_JOBS SECONDS: poll `fxbench show --json` until every job is finished
  local dir=$1 n=$2 limit=$3 shown=""
  for _ in $(seq $(( limit * 2 ))); do
    local js states
    js=$($FX show "$dir" --json 2>/dev/null) || js='{"jobs": []}'
    states=$(echo "$js" | $PY -c "import json,sys; print(' '.join(j['state'] for j in json.load(sys.stdin)['jobs']))")
    if [ -z "$shown" ] && echo "$states" | grep -qE "pending|running"; then
      echo "fxbench show while queued/running:"; $FX show "$dir" 2>&1 | sed 's/^/  | /'; shown=1
    fi
    [ "$(echo "$states" | tr ' ' '\n' | grep -c '^finished$')" -eq "$n" ] && return 0
    if echo "$states" | grep -q failed; then $FX show "$dir" 2>&1 | sed 's/^/  | /'; return 1; fi
    sleep 0.5
  done
  $FX show "$dir" 2>&1 | sed 's/^/  | /'
  return 1
}

same_files() {  # A_RUN B_RUN: checkpoints byte-identical?
  local ok=0
  for f in checkpoints/best.pt checkpoints/last.pt config.resolved.yaml; do
    if cmp -s "$1/$f" "$2/$f"; then echo "  identical: $f ($(sha256sum "$1/$f" | cut -c1-12))"
    else echo "  DIFFERENT: $f"; ok=1; fi
  done
  return $ok
}

stamp "reference: the 2-seed sweep sequentially in-process (train.epochs=3)"
$FX train "${SETS[@]}" --set train.epochs=3 --seeds 1,2 --name chk --run-dir "$WORK/local" --quiet 2>&1 | tail -n 6 \
  || fail "local sweep"

stamp "the same sweep through --launcher slurm (2 array tasks, 1 CPU each)"
$FX train "${SETS[@]}" --set train.epochs=3 --seeds 1,2 --name chk --run-dir "$WORK/slurm" "${SLURM_SETS[@]}" \
  || fail "submission"
wait_sweep "$WORK/slurm/chk-sweep" 2 240 || fail "the SLURM sweep did not finish"
$FX show "$WORK/slurm/chk-sweep" 2>&1 | sed 's/^/  | /'
$FX runs "$WORK/slurm" 2>&1 | tail -n 2 | sed 's/^/  | /'
for s in 1 2; do
  echo "seed $s: slurm vs local"
  same_files "$WORK/slurm/chk-sweep/seed_$s" "$WORK/local/chk-sweep/seed_$s" || fail "seed $s differs from the local run"
done

stamp "pre-emption: SIGUSR1 mid-training, the job checkpoints, requeues, resumes (train.epochs=20)"
$FX train "${SETS[@]}" --set train.epochs=20 --seeds 7 --name pre --run-dir "$WORK/slurm" "${SLURM_SETS[@]}" \
  || fail "submission"
PRE=$WORK/slurm/pre-sweep/seed_7
JOB=$($PY -c "import json; print(json.load(open('$WORK/slurm/pre-sweep/sweep.json'))['launcher']['job_ids']['seed_7'])")
for _ in $(seq 240); do
  [ -f "$PRE/history.csv" ] && [ "$(wc -l < "$PRE/history.csv")" -ge 3 ] && break; sleep 0.5
done
[ -f "$PRE/history.csv" ] || fail "the pre-emption job never trained"
echo "job $JOB at epoch $(( $(wc -l < "$PRE/history.csv") - 1 )): scancel --signal=USR1"
scancel --signal=USR1 "$JOB" || fail "scancel --signal"
interrupted=""
for _ in $(seq 120); do
  grep -q '"status": "interrupted"' "$PRE/run.json" 2>/dev/null && { interrupted=1; break; }; sleep 0.25
done
[ -n "$interrupted" ] || fail "the job did not checkpoint on SIGUSR1 (run.json: $(cat "$PRE/run.json" 2>/dev/null | head -c 300))"
echo "run.json status interrupted; last.pt at epoch $($PY -c "
import torch; c = torch.load('$PRE/checkpoints/last.pt', weights_only=True); print(c['epoch'], 'step', c['next_step'])")"
wait_sweep "$WORK/slurm/pre-sweep" 1 300 || fail "the requeued job did not finish"
scontrol show job "$JOB" 2>/dev/null | grep -oE "Restarts=[0-9]+" | head -n 1
grep -hE "requeued|fxbench job" "$WORK"/slurm/pre-sweep/slurm/*_log.out | sed 's/^/  log: /'
grep -q '"resumed"' "$PRE/run.json" || fail "run.json has no resumed time: the job started over"
$FX train "${SETS[@]}" --set train.epochs=20 --seeds 7 --name pre --run-dir "$WORK/local" --quiet > /dev/null 2>&1 \
  || fail "local reference of the pre-emption job"
$PY - "$PRE" "$WORK/local/pre-sweep/seed_7" <<'EOF' || fail "the resumed run differs from the uninterrupted one"
import sys, torch
a, b = sys.argv[1], sys.argv[2]
for name in ("best.pt", "last.pt"):
    x = torch.load(f"{a}/checkpoints/{name}", weights_only=True)["model"]
    y = torch.load(f"{b}/checkpoints/{name}", weights_only=True)["model"]
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    print(f"  resumed == uninterrupted: {name} weights identical ({len(x)} tensors)")
EOF
stamp "SLURM CHECK PASSED"
