#!/usr/bin/env bash
# The main job: install, fetch CIFAR-10, train it on the GPU if there is one, else on the CPU.
#   [DATA=DIR] bash launch/cifar10.sh [extra train.py args, e.g. --runs 5 or train.seed=3]
# Each invocation logs to its own runs/cifar10-DATE-TIME (a logdir holds one run; --logdir DIR wins).
# No cd: a DATA and paths in the args you give are the caller's, as with any command; the defaults,
# data/ and runs/, are the repo's, wherever it is run from (one download of CIFAR-10).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# pip only when something is missing or too old: a no-op install costs seconds of every run. DALI is
# the ImageNet loaders' alone: where pip cannot install it (an offline GPU machine), this job goes on.
if ! python3 "$ROOT/launch/requirements_met.py" "$ROOT/requirements.txt" &&
   ! python3 -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements.txt"; then
  python3 "$ROOT/launch/requirements_met.py" --without nvidia-dali-cuda130 "$ROOT/requirements.txt" || exit 1
  echo "warning: pip could not install requirements.txt; going on without DALI, which this job does not use" >&2
fi
DATA=${DATA:-$ROOT/data}
SHARED=${SHARED_DIR:-$ROOT/../shared}
if [ ! -d "$DATA/cifar-10-batches-py" ] && [ -f "$SHARED/datasets/cifar10/materialize.py" ]; then
  python3 "$SHARED/datasets/cifar10/materialize.py" "$DATA"  # offline copy of the real data set
fi
# torch is asked only where a GPU driver is (its import takes seconds, and train.py imports it again)
gpu_driver() {
  command -v nvidia-smi >/dev/null 2>&1 && return 0
  local d
  for d in /dev/nvidiactl /dev/kfd /dev/dxg; do [ -e "$d" ] && return 0; done  # NVIDIA (any GPU), ROCm, WSL
  return 1
}
if gpu_driver && python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  CONFIG=configs/cifar10.yaml
else
  echo "no CUDA device: using the CPU configuration (configs/cifar10_cpu.yaml)" >&2
  CONFIG=configs/cifar10_cpu.yaml
fi
exec python3 "$ROOT/training/train.py" --config "$ROOT/$CONFIG" --data "$DATA" \
  --logdir "$ROOT/runs/cifar10-$(date +%Y%m%d-%H%M%S)" "$@"
