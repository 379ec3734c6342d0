#!/usr/bin/env bash
# One machine, N GPUs: torchrun --standalone, elastic restarts on, imagenet18's one-machine schedule.
#
#   bash launch/local.sh DATA [train.py args ...]
#   NPROC=8 MAX_RESTARTS=3 bash launch/local.sh ~/data/imagenet --logdir runs/1x8
#   LAUNCH_DRY_RUN=1 bash launch/local.sh DATA      # print the torchrun command, run nothing
#
# Options (environment variables; every one has a default):
#   NPROC         processes = GPUs on this machine (default: those CUDA_VISIBLE_DEVICES names, else
#                 the GPUs nvidia-smi lists; 8 when LAUNCH_DRY_RUN=1 finds none)
#   CONFIG        config file (default configs/imagenet18/1x8.yaml)
#   MAX_RESTARTS  torchrun --max-restarts (default 3): a failed group restarts and resumes from the
#                 latest good checkpoint in the logdir by itself (docs/OPERATIONS.md)
#   DIST_TIMEOUT  collective timeout in seconds, train.dist_timeout_s (default: the config's, 1800)
#   RESUME        passed as --resume (auto: continue the run in the logdir); default: none
#   IFNAME        network interface for NCCL and gloo sockets (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME):
#                 a plain name must be one of this machine's (gloo reads it exactly); NCCL's forms
#                 ^name, =name and lists pass unchecked
#   NCCL_*        any NCCL variable you export (NCCL_DEBUG=INFO, NCCL_IB_DISABLE=1, ...) passes through
#   PYTHON        interpreter (default python3); torchrun runs as "$PYTHON -m torch.distributed.run"
#   LAUNCH_DRY_RUN=1  print the command instead of running it
set -euo pipefail
# No cd: DATA, CONFIG, --logdir and other relative paths are the caller's, as with any command.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/launch/common.sh"

need_data "[NPROC=8] [CONFIG=...] bash launch/local.sh DATA [train.py args ...]" "$@"
DATA=$1
shift
PYTHON=${PYTHON:-python3}
CONFIG=${CONFIG:-$ROOT/configs/imagenet18/1x8.yaml}
MAX_RESTARTS=${MAX_RESTARTS:-3}
if [ -z "${NPROC:-}" ]; then
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then  # the GPUs this job may use, not all the machine has
    NPROC=$(tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c . || true)
  else
    NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  fi
  if [ "${NPROC:-0}" -lt 1 ] && [ -n "${LAUNCH_DRY_RUN:-}" ]; then
    NPROC=8  # printing only: show the command an 8-GPU machine would run
    echo "note: no GPU found (nvidia-smi); printing the command for NPROC=8" >&2
  elif [ "${NPROC:-0}" -lt 1 ]; then
    echo "error: no GPU found (nvidia-smi); set NPROC (CPU processes also need train.device=cpu)" >&2
    exit 2
  fi
fi
need_int NPROC 1
need_int MAX_RESTARTS 0  # here, not as torchrun's usage after --check's seconds
warn_unless_8 "$CONFIG" "$NPROC"
network_env

PROCS=$NPROC train_args "$@"

run_or_print "$PYTHON" -m torch.distributed.run --standalone --nnodes=1 "--nproc_per_node=$NPROC" \
  "--max-restarts=$MAX_RESTARTS" "$ROOT/training/train.py" "${args[@]}"
