#!/usr/bin/env bash
# Train (or run a generation sweep) on the GPUs of one machine.
#
#   launch/gpu_single_node.sh [options] [-- ARGS for python -m maestro_jax.<task>]
#
# Default: ONE process that drives every GPU (JAX's usual single-node setup; no
# jax.distributed). With --process-per-gpu: one process per GPU joined through
# jax.distributed on 127.0.0.1 (MAESTRO_COORDINATOR / MAESTRO_NUM_PROCESSES / MAESTRO_PROCESS_ID
# / MAESTRO_LOCAL_DEVICE_IDS); for generation sweeps that is one independent job queue per GPU.
#
# Options:
#   --gpus N             GPUs to use (default: all, from nvidia-smi; 8 in --dry-run)
#   --task TASK          train (default) | generate
#   --config CONFIG      default configs/cim.py:vggsound (train), configs/generate.py (generate)
#   --workdir DIR        run folder (train; required)
#   --process-per-gpu    one process per GPU instead of one for all
#   --port PORT          coordinator port with --process-per-gpu (default 12355)
#   --mem-fraction F     XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.9)
#   --log DIR            per-process logs with --process-per-gpu (default ./logs_<task>)
#   --dry-run            print every command instead of running it
#
# The config's mesh (default mesh.shape=(-1, 1)) puts every GPU on the 'data' axis; the global
# batch is batch_size_per_device x GPUs.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=launch/common.sh
source "$HERE/common.sh"

GPUS="" TASK=train CONFIG="" WORKDIR="" PER_GPU=0 PORT=12355 MEM=0.9 LOGDIR=""
EXTRA=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus) GPUS=$2; shift 2 ;;
    --task) TASK=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --process-per-gpu) PER_GPU=1; shift ;;
    --port) PORT=$2; shift 2 ;;
    --mem-fraction) MEM=$2; shift 2 ;;
    --log) LOGDIR=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
MODULE=$(task_module "$TASK")
if [[ -z "$GPUS" ]]; then
  if [[ "$DRY_RUN" == 1 ]]; then
    GPUS=8
  else
    GPUS=$(nvidia-smi --list-gpus | wc -l)
  fi
fi
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || die "--gpus must be a positive integer, got '$GPUS'"
if [[ -z "$CONFIG" ]]; then
  if [[ "$TASK" == train ]]; then CONFIG=configs/cim.py:vggsound; else CONFIG=configs/generate.py; fi
fi
ARGS=("--config=$CONFIG")
if [[ "$TASK" == train ]]; then
  [[ -n "$WORKDIR" ]] || die "--workdir is required for training"
  ARGS+=("--workdir=$WORKDIR")
fi
ARGS+=(${EXTRA[@]+"${EXTRA[@]}"})
VISIBLE=$(seq -s, 0 $((GPUS - 1)))

if [[ "$TASK" == train ]]; then
  echo "# one node, $GPUS GPU(s); mesh: config mesh.shape (-1, 1) -> data=$GPUS, fsdp=1"
else
  echo "# one node, $GPUS GPU(s); jobs split round-robin over the processes"
fi
cd "$REPO"
if ((PER_GPU == 0)); then
  run env CUDA_VISIBLE_DEVICES="$VISIBLE" XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM" \
    python -m "$MODULE" "${ARGS[@]}"
  exit 0
fi

LOGDIR=${LOGDIR:-logs_$TASK}
run mkdir -p "$LOGDIR"
pids=()
for ((i = 0; i < GPUS; i++)); do
  printf '%s > %s 2>&1 &\n' "$(print_cmd env CUDA_VISIBLE_DEVICES="$VISIBLE" \
    XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM" MAESTRO_COORDINATOR="127.0.0.1:$PORT" \
    MAESTRO_NUM_PROCESSES="$GPUS" MAESTRO_PROCESS_ID="$i" MAESTRO_LOCAL_DEVICE_IDS="$i" \
    python -m "$MODULE" "${ARGS[@]}")" "$(shq "$LOGDIR/process_$i.log")"
  if [[ "$DRY_RUN" != 1 ]]; then
    env CUDA_VISIBLE_DEVICES="$VISIBLE" XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM" \
      MAESTRO_COORDINATOR="127.0.0.1:$PORT" MAESTRO_NUM_PROCESSES="$GPUS" \
      MAESTRO_PROCESS_ID="$i" MAESTRO_LOCAL_DEVICE_IDS="$i" \
      python -m "$MODULE" "${ARGS[@]}" >"$LOGDIR/process_$i.log" 2>&1 &
    pids+=($!)
  fi
done
print_cmd tail -n +1 -F "$LOGDIR/process_0.log"
if [[ "$DRY_RUN" != 1 ]]; then
  tail -n +1 -F "$LOGDIR/process_0.log" &
  tail_pid=$!
  status=0
  for p in "${pids[@]}"; do
    wait "$p" || status=$?
  done
  kill "$tail_pid" 2>/dev/null || true
  exit "$status"
fi
