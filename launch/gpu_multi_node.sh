#!/usr/bin/env bash
# Train (or run a generation sweep) on several GPU nodes: one process per node driving all of
# its GPUs, joined through jax.distributed (NCCL between the GPUs).
#
#   launch/gpu_multi_node.sh MODE [options] [-- ARGS for python -m maestro_jax.<task>]
#
# MODE (one of):
#   --slurm                  inside an allocation (salloc/sbatch): one `srun` task per node;
#                            JAX reads SLURM_* (MAESTRO_DISTRIBUTED=1), no addresses needed
#   --hosts h1,h2,...        plain ssh from a login node: process i on host i, the coordinator
#                            on h1:PORT; waits for all (the repo must be at the same path on
#                            every host: shared home, NFS, or a copy)
#   --node-rank I --num-nodes N --coordinator HOST:PORT
#                            run THIS node's process yourself (e.g. under another scheduler);
#                            start the same command on every node with its own rank
#
# Options:
#   --gpus-per-node G        GPUs per node (default 8)
#   --port PORT              coordinator port with --hosts (default 12355)
#   --task TASK              train (default) | generate
#   --config CONFIG          default configs/cim.py:vggsound (train), configs/generate.py
#   --workdir DIR            run folder on storage every node sees (train; required)
#   --python PY              python on the nodes (default: python, e.g. /path/.venv/bin/python)
#   --dry-run                print every command instead of running it
#
# The config's mesh (default mesh.shape=(-1, 1)) puts all N x G GPUs on the 'data' axis; use
# e.g. --config.mesh.shape='(-1, 8)' --config.mesh.shard_frozen=True to shard the frozen models
# over each node's 8 GPUs (FSDP inside a node, data parallel across nodes).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=launch/common.sh
source "$HERE/common.sh"

MODE="" HOSTS="" RANK="" NODES="" COORD="" GPN=8 PORT=12355 TASK=train CONFIG="" WORKDIR=""
PY=python
EXTRA=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --slurm) MODE=slurm; shift ;;
    --hosts) MODE=ssh; HOSTS=$2; shift 2 ;;
    --node-rank) MODE=node; RANK=$2; shift 2 ;;
    --num-nodes) NODES=$2; shift 2 ;;
    --coordinator) COORD=$2; shift 2 ;;
    --gpus-per-node) GPN=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --task) TASK=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ -n "$MODE" ]] || die "give a mode: --slurm | --hosts h1,h2,... | --node-rank I (see --help)"
MODULE=$(task_module "$TASK")
[[ "$GPN" =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node must be a positive integer, got '$GPN'"
if [[ -z "$CONFIG" ]]; then
  if [[ "$TASK" == train ]]; then CONFIG=configs/cim.py:vggsound; else CONFIG=configs/generate.py; fi
fi
ARGS=("--config=$CONFIG")
if [[ "$TASK" == train ]]; then
  [[ -n "$WORKDIR" ]] || die "--workdir (shared by every node) is required for training"
  ARGS+=("--workdir=$WORKDIR")
fi
ARGS+=(${EXTRA[@]+"${EXTRA[@]}"})

case "$MODE" in
  slurm)
    NODES=${NODES:-${SLURM_JOB_NUM_NODES:-2}}
    echo "# SLURM: $NODES node(s) x $GPN GPU(s); mesh data=$((NODES * GPN)), fsdp=1"
    run srun --nodes="$NODES" --ntasks-per-node=1 --gpus-per-node="$GPN" --chdir="$REPO" \
      env MAESTRO_DISTRIBUTED=1 "$PY" -m "$MODULE" "${ARGS[@]}"
    ;;
  ssh)
    IFS=, read -r -a hosts <<<"$HOSTS"
    NODES=${#hosts[@]}
    ((NODES >= 1)) || die "--hosts is empty"
    COORD=${COORD:-${hosts[0]}:$PORT}
    echo "# ssh: $NODES node(s) x $GPN GPU(s), coordinator $COORD; mesh data=$((NODES * GPN)), fsdp=1"
    pids=()
    for i in "${!hosts[@]}"; do
      remote="cd $(shq "$REPO") && MAESTRO_COORDINATOR=$(shq "$COORD") MAESTRO_NUM_PROCESSES=$NODES"
      remote+=" MAESTRO_PROCESS_ID=$i $(shq "$PY") -m $MODULE $(quote_args "${ARGS[@]}")"
      print_cmd ssh "${hosts[$i]}" "$remote"
      if [[ "$DRY_RUN" != 1 ]]; then
        # shellcheck disable=SC2029  # expanding here is the point: the remote gets it quoted
        if ((i == 0)); then
          ssh "${hosts[$i]}" "$remote" &
        else  # only process 0 prints progress; keep the others' output in a log per host
          # shellcheck disable=SC2029
          ssh "${hosts[$i]}" "$remote" >"maestro_${TASK}_process_$i.log" 2>&1 &
        fi
        pids+=($!)
      fi
    done
    status=0
    for p in ${pids[@]+"${pids[@]}"}; do
      wait "$p" || status=$?
    done
    exit "$status"
    ;;
  node)
    [[ -n "$NODES" && -n "$COORD" ]] || die "--node-rank needs --num-nodes and --coordinator"
    [[ "$RANK" =~ ^[0-9]+$ && "$NODES" =~ ^[1-9][0-9]*$ ]] || die "bad --node-rank/--num-nodes"
    ((RANK < NODES)) || die "--node-rank $RANK must be < --num-nodes $NODES"
    echo "# node $RANK of $NODES x $GPN GPU(s), coordinator $COORD; mesh data=$((NODES * GPN)), fsdp=1"
    cd "$REPO"
    run env MAESTRO_COORDINATOR="$COORD" MAESTRO_NUM_PROCESSES="$NODES" MAESTRO_PROCESS_ID="$RANK" \
      "$PY" -m "$MODULE" "${ARGS[@]}"
    ;;
esac
