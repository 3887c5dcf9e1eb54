#!/usr/bin/env bash
# Train (or run a generation sweep) on a Cloud TPU VM slice: create or reuse the slice, install
# this checkout on every worker, start one process per worker, stream worker 0's log, stop.
#
#   launch/tpu_vm.sh [options] ACTION [-- ARGS for python -m maestro_jax.<task>]
#
# ACTION: up       create-or-reuse + install + start + logs (the usual one)
#         create   create the slice unless it exists
#         install  copy this checkout (git HEAD) to every worker and pip-install it
#         start    start the task on every worker (in the background, log ~/maestro_<task>.log)
#         logs     stream worker 0's log (process 0 writes the progress lines)
#         stop     stop the task on every worker (the pid it recorded; the slice keeps running)
#         delete   delete the slice
#
# Options:
#   --name NAME          slice name (default maestro-<type>)
#   --zone ZONE          e.g. us-west4-a (v5e), us-central2-b (v4), us-east5-a (v5p/v6e)
#   --project PROJECT    gcloud project (default: gcloud's configured one)
#   --type TYPE          v4-8 | v4-32 | ... | v5e-8 | v5e-64 | v5e-256 | v5p-8 | ... | v6e-8 | ...
#   --version VERSION    TPU VM runtime (default per generation, see below)
#   --spot               a Spot slice (cheaper; can be preempted: rerun `up`, training resumes)
#   --task TASK          train (default) | generate
#   --config CONFIG      default configs/cim.py:vggsound (train), configs/generate.py (generate)
#   --workdir DIR        run folder on storage every worker sees (train; default /gcs/$BUCKET/NAME
#                        with --gcsfuse, else required)
#   --gcsfuse BUCKET     install gcsfuse on every worker and mount gs://BUCKET at /gcs/BUCKET
#   --dry-run            print every command instead of running it
#
# Each worker runs `python -m maestro_jax.<task> --config=CONFIG [--workdir=DIR] ARGS` with
# MAESTRO_DISTRIBUTED=1 on multi-host slices: `jax.distributed.initialize()` finds the other
# workers from the TPU metadata. The config's mesh (default `mesh.shape=(-1, 1)`) puts every
# chip of the slice on the 'data' axis; `launch/README.md` has the table per slice shape.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=launch/common.sh
source "$HERE/common.sh"

NAME="" ZONE="" PROJECT="" TYPE="v5e-64" VERSION="" SPOT=0 TASK=train CONFIG="" WORKDIR=""
BUCKET="" ACTION=""
EXTRA=()

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --project) PROJECT=$2; shift 2 ;;
    --type) TYPE=$2; shift 2 ;;
    --version) VERSION=$2; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --task) TASK=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --gcsfuse) BUCKET=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z "$ACTION" ]] || die "one action only (got '$ACTION' and '$1')"; ACTION=$1; shift ;;
  esac
done
[[ -n "$ACTION" ]] || die "give an action: up | create | install | start | logs | stop | delete"
[[ -n "$ZONE" ]] || die "--zone is required"
MODULE=$(task_module "$TASK")

# --- slice shape: accelerator type, chips, hosts, default runtime ----------------------------
# v4 and v5p names count TensorCores (2 per chip, one JAX device per chip); v5e and v6e names
# count chips. Hosts carry 4 chips, except the single-host v5e-8 and v6e-8 (8 chips).
gen=${TYPE%%-*}
size=${TYPE#*-}
[[ "$size" =~ ^[0-9]+$ && "$TYPE" == *-* ]] || die "--type '$TYPE' is not like v5e-64"
case "$gen" in
  v4) ACCEL="v4-$size"; CHIPS=$((size / 2)); RUNTIME=tpu-ubuntu2204-base ;;
  v5p) ACCEL="v5p-$size"; CHIPS=$((size / 2)); RUNTIME=v2-alpha-tpuv5 ;;
  v5e | v5litepod) ACCEL="v5litepod-$size"; CHIPS=$size; RUNTIME=v2-alpha-tpuv5-lite ;;
  v6e) ACCEL="v6e-$size"; CHIPS=$size; RUNTIME=v2-alpha-tpuv6e ;;
  *) die "--type '$TYPE': unknown TPU generation '$gen' (v4 | v5e | v5p | v6e)" ;;
esac
((CHIPS >= 1)) || die "--type '$TYPE' has no chips"
if [[ "$gen" == v5e || "$gen" == v5litepod || "$gen" == v6e ]] && ((CHIPS <= 8)); then
  HOSTS=1
else
  HOSTS=$(((CHIPS + 3) / 4))
fi
VERSION=${VERSION:-$RUNTIME}
NAME=${NAME:-maestro-$TYPE}
if [[ -z "$CONFIG" ]]; then
  if [[ "$TASK" == train ]]; then CONFIG=configs/cim.py:vggsound; else CONFIG=configs/generate.py; fi
fi
if [[ -n "$BUCKET" && -z "$WORKDIR" ]]; then
  WORKDIR=/gcs/$BUCKET/$NAME
fi

GC=(gcloud compute tpus tpu-vm)
LOC=(--zone "$ZONE")
[[ -z "$PROJECT" ]] || LOC+=(--project "$PROJECT")
LOG="\$HOME/maestro_$TASK.log"
PID="\$HOME/maestro_$TASK.pid"
REMOTE_DIR="\$HOME/maestro_jax"

echo "# slice $TYPE ($ACCEL): $CHIPS chips on $HOSTS host(s), runtime $VERSION"
echo "# mesh: config mesh.shape (-1, 1) -> data=$CHIPS, fsdp=1; global batch = batch_size_per_device x $CHIPS"

on_workers() {  # on_workers WORKER COMMAND: run a shell command over ssh on worker(s)
  run "${GC[@]}" ssh "$NAME" "${LOC[@]}" --worker="$1" --command "$2"
}

do_create() {
  local create=("${GC[@]}" create "$NAME" "${LOC[@]}" --accelerator-type "$ACCEL" --version "$VERSION")
  ((SPOT)) && create+=(--spot)
  if [[ "$DRY_RUN" == 1 ]]; then
    print_cmd "${GC[@]}" describe "$NAME" "${LOC[@]}"
    echo "# (when the describe fails: the slice does not exist yet)"
    print_cmd "${create[@]}"
  elif "${GC[@]}" describe "$NAME" "${LOC[@]}" >/dev/null 2>&1; then
    echo "# reusing the existing slice $NAME"
  else
    run "${create[@]}"
  fi
}

do_install() {
  local tarball=/tmp/maestro_jax_src.tar.gz
  run git -C "$REPO" archive --format=tar.gz -o "$tarball" HEAD
  run "${GC[@]}" scp "$tarball" "$NAME:maestro_jax_src.tar.gz" "${LOC[@]}" --worker=all
  local setup="set -e; mkdir -p $REMOTE_DIR && tar -xzf \$HOME/maestro_jax_src.tar.gz -C $REMOTE_DIR"
  setup+=" && cd $REMOTE_DIR && python3 -m venv .venv && . .venv/bin/activate"
  setup+=" && pip install -q -U pip && pip install -q -e . && pip install -q -U 'jax[tpu]'"
  on_workers all "$setup"
  if [[ -n "$BUCKET" ]]; then
    local fuse="set -e; if ! command -v gcsfuse >/dev/null; then"
    fuse+=" echo 'deb https://packages.cloud.google.com/apt gcsfuse-jammy main'"
    fuse+=" | sudo tee /etc/apt/sources.list.d/gcsfuse.list"
    fuse+=" && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg"
    fuse+=" | sudo tee /etc/apt/trusted.gpg.d/gcsfuse.asc >/dev/null"
    fuse+=" && sudo apt-get update -q && sudo apt-get install -q -y gcsfuse; fi"
    fuse+="; sudo mkdir -p /gcs/$BUCKET && sudo chown \$USER /gcs/$BUCKET"
    fuse+="; mountpoint -q /gcs/$BUCKET || gcsfuse --implicit-dirs $BUCKET /gcs/$BUCKET"
    on_workers all "$fuse"
  fi
}

do_start() {
  local args=("--config=$CONFIG")
  if [[ "$TASK" == train ]]; then
    [[ -n "$WORKDIR" ]] || die "--workdir (shared by every worker) or --gcsfuse BUCKET is required"
    args+=("--workdir=$WORKDIR")
  fi
  args+=(${EXTRA[@]+"${EXTRA[@]}"})
  local env="MAESTRO_DISTRIBUTED=0"
  ((HOSTS > 1)) && env="MAESTRO_DISTRIBUTED=1"
  local cmd="cd $REMOTE_DIR && . .venv/bin/activate && $env nohup python -m $MODULE"
  cmd+=" $(quote_args "${args[@]}") > $LOG 2>&1 < /dev/null & echo \$! > $PID"
  on_workers all "$cmd"
}

do_logs() {
  on_workers 0 "tail -n +1 -F $LOG"
}

do_stop() {
  on_workers all "if [ -f $PID ]; then kill \$(cat $PID) 2>/dev/null || true; rm -f $PID; fi"
}

do_delete() {
  run "${GC[@]}" delete "$NAME" "${LOC[@]}" --quiet
}

case "$ACTION" in
  up) do_create; do_install; do_start; do_logs ;;
  create) do_create ;;
  install) do_install ;;
  start) do_start ;;
  logs) do_logs ;;
  stop) do_stop ;;
  delete) do_delete ;;
  *) die "unknown action '$ACTION' (up | create | install | start | logs | stop | delete)" ;;
esac
