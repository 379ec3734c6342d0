#!/usr/bin/env bash
# Several machines of N GPUs: run this on every node; torchrun joins them (c10d rendezvous by
# default), restarts failed groups (--max-restarts), and each restart, whichever machine failed,
# resumes from the latest good checkpoint (docs/OPERATIONS.md, "On several machines"). The config
# defaults to the imagenet18 schedule for NNODES machines of 8 GPUs.
#
#   # c10d rendezvous: the same command on every node (any node's host:port as the endpoint)
#   NNODES=8 RDZV_ENDPOINT=node0:29400 RDZV_ID=run42 bash launch/multinode.sh DATA [train.py args]
#   NNODES=16 RDZV_ENDPOINT=node0:29400 RDZV_ID=run43 bash launch/multinode.sh DATA
#   # fixed node ranks instead (static rendezvous): NODE_RANK differs per node
#   NNODES=8 NODE_RANK=3 MASTER_ADDR=node0 bash launch/multinode.sh DATA
#
# Options (environment variables):
#   NNODES          machines (required); CONFIG defaults to configs/imagenet18/${NNODES}x8.yaml
#                   (1, 4, 8 and 16 exist)
#   NPROC_PER_NODE  processes = GPUs per machine (default 8)
#   RDZV_ENDPOINT   host[:port] of the c10d rendezvous (default port 29400); RDZV_ID names the job
#                   (default fastimagenet; use a new one per job)
#   NODE_RANK, MASTER_ADDR, MASTER_PORT (29500)   static rendezvous, used when NODE_RANK is set
#                   (0..NNODES-1; ports, here and in RDZV_ENDPOINT, 1..65535)
#   MAX_RESTARTS    torchrun --max-restarts (default 3; 0 with NODE_RANK), counted by each machine's agent
#                   for itself. With static rendezvous a restart can hang for the whole collective
#                   timeout (docs/OPERATIONS.md): restart with c10d, or resubmit with RESUME=auto
#   DIST_TIMEOUT    collective timeout, seconds (train.dist_timeout_s; the config's by default, 1800)
#   RESUME          passed as --resume (auto: continue the run in the logdir)
#   IFNAME          interface for NCCL and gloo sockets (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME): a
#                   plain name must be one of this machine's (gloo reads it exactly); NCCL's forms
#                   ^name, =name and lists pass unchecked
#   NCCL_*          any NCCL variable you export (NCCL_DEBUG=INFO, NCCL_IB_DISABLE=1, ...) passes through
#   PYTHON          interpreter (default python3)
#   LAUNCH_DRY_RUN=1  print the command instead of running it
# The logdir must be on a filesystem every node sees (rank 0 writes the checkpoints, and after a
# restart rank 0 may be on another node), or use static rendezvous so node 0 stays rank 0.
set -euo pipefail
# No cd: DATA, CONFIG, --logdir and other relative paths are the caller's, as with any command.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/launch/common.sh"

need_data "NNODES=8 RDZV_ENDPOINT=host:29400 bash launch/multinode.sh DATA [train.py args ...]" "$@"
DATA=$1
shift
[ -n "${NNODES:-}" ] || { echo "error: set NNODES (number of machines)" >&2; exit 2; }
PYTHON=${PYTHON:-python3}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}
# Static rendezvous restarts each machine's workers on its own clock: workers of different attempts can
# meet and wait on each other's keys for the whole collective timeout (seen in 2 of 5 two-machine kill
# drills, 2026-11-27). So there restarts are off unless asked for, and asking is warned about.
if [ -n "${NODE_RANK:-}" ]; then
  if [ -n "${MAX_RESTARTS:-}" ] && [ "$MAX_RESTARTS" != 0 ]; then
    echo "warning: MAX_RESTARTS=$MAX_RESTARTS with NODE_RANK (static rendezvous): a restart can hang for the whole collective timeout (train.dist_timeout_s); RDZV_ENDPOINT (c10d) restarts reliably" >&2
  fi
  MAX_RESTARTS=${MAX_RESTARTS:-0}
fi
MAX_RESTARTS=${MAX_RESTARTS:-3}
need_int NNODES 1
need_int NPROC_PER_NODE 1
need_int MAX_RESTARTS 0
CONFIG=${CONFIG:-$ROOT/configs/imagenet18/${NNODES}x8.yaml}
if [ ! -f "$CONFIG" ]; then
  echo "error: no config $CONFIG (imagenet18 schedules: $(cd "$ROOT/configs/imagenet18" && echo *.yaml)); set CONFIG" >&2
  exit 2
fi
warn_unless_8 "$CONFIG" "$NPROC_PER_NODE"
network_env

if [ -n "${NODE_RANK:-}" ] && [ -n "${RDZV_ENDPOINT:-}" ]; then
  echo "error: NODE_RANK=$NODE_RANK (static rendezvous) and RDZV_ENDPOINT=$RDZV_ENDPOINT (c10d) are both set: unset one" >&2
  exit 2
fi
cmd=("$PYTHON" -m torch.distributed.run "--nnodes=$NNODES" "--nproc_per_node=$NPROC_PER_NODE"
     "--max-restarts=$MAX_RESTARTS")
# torchrun would take a bad rank or port only after --check, to print its usage or a traceback, or
# wait for a node rank that never joins until the rendezvous times out
if [ -n "${NODE_RANK:-}" ]; then
  [ -n "${MASTER_ADDR:-}" ] || { echo "error: static rendezvous (NODE_RANK set) needs MASTER_ADDR" >&2; exit 2; }
  MASTER_PORT=${MASTER_PORT:-29500}
  need_int NODE_RANK 0 $((NNODES - 1))
  need_int MASTER_PORT 1 65535
  cmd+=("--node-rank=$NODE_RANK" "--master-addr=$MASTER_ADDR" "--master-port=$MASTER_PORT")
else
  [ -n "${RDZV_ENDPOINT:-}" ] ||
    { echo "error: set RDZV_ENDPOINT=host:port (c10d rendezvous), or NODE_RANK and MASTER_ADDR" >&2; exit 2; }
  # as torchrun splits it: [IPv6 address] or host, then :port if given
  host=$RDZV_ENDPOINT port=29400
  case "$host" in \[*\]) ;; *:*) port=${host##*:} host=${host%:*} ;; esac
  host=${host#\[} host=${host%\]}
  case "$host" in ''|*[!A-Za-z0-9_.:-]*) host= ;; esac
  if [ -z "$host" ] || ! int_in "$port" 1 65535; then
    echo "error: RDZV_ENDPOINT=$RDZV_ENDPOINT: expected host[:port] ([IPv6]:port), the port in 1..65535" >&2
    exit 2
  fi
  cmd+=(--rdzv-backend=c10d "--rdzv-endpoint=$RDZV_ENDPOINT" "--rdzv-id=${RDZV_ID:-fastimagenet}")
fi
PROCS=$NPROC_PER_NODE REJOINING=1 train_args "$@"  # a restarted machine re-runs this to rejoin its group

run_or_print "${cmd[@]}" "$ROOT/training/train.py" "${args[@]}"
