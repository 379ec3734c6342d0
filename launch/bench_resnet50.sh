#!/usr/bin/env bash
# ResNet-50 measurements for a lent GPU, one stage per 10-minute device call (docs/BENCHMARKS.md,
# "ResNet-50 throughput"). Tables go to stdout and $OUT/*.txt, full figures to $OUT/*.json.
#   bash launch/bench_resnet50.sh eager     # both paths eager at 128/224/288, decode_jpeg, a --profile'd trainer epoch (~4 min)
#   bash launch/bench_resnet50.sh compile   # ours under torch.compile (mode default) at 128/224/288 (~6 min)
#   bash launch/bench_resnet50.sh ablate    # at 224 px: ours without cudnn.benchmark, fp16, NCHW (~4 min)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench}
mkdir -p "$OUT"
B=256  # images per step per GPU
T=${T:-540}  # seconds a command may run before it is cut (a device call allows 600)

bench() {  # name, then bench args: table to stdout and $OUT/name.txt, JSON to $OUT/name.json
  local name=$1; shift
  # a failed measurement is reported and the stage goes on to the next one
  timeout "$T" python3 -m training.bench "$@" --json "$OUT/$name.json" 2>"$OUT/$name.err" | tee "$OUT/$name.txt" \
    || { echo "FAILED: $name (see $OUT/$name.err)"; tail -5 "$OUT/$name.err"; }
}

case "${1:-}" in
  eager)
    { nvidia-smi -L; python3 -c 'import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__)'; } | tee "$OUT/env.txt"
    bench tp_eager throughput --arch resnet50 --sizes 128 224 288 --batch-size $B --steps 50 --warmup 10 --repeats 3
    bench decode decode --images 1024 --batch-size 128 --repeats 5
    # the trainer itself, one epoch of 1x8's first phase (128 px, bs 512) on synthetic data, bf16
    timeout "$T" python3 training/train.py --config configs/imagenet18/1x8.yaml --loader synthetic \
      data.synthetic_images=51200 data.synthetic_classes=1000 --bf16 --max-epochs 1 train.print_freq=25 \
      --profile --profile-trace "$OUT/trace" train.logdir=/tmp/bench-trainer 2>&1 | tee "$OUT/trainer_profile.txt"
    ;;
  compile)
    bench tp_compile throughput --arch resnet50 --sizes 128 224 288 --batch-size $B --steps 50 --warmup 10 --repeats 3 \
      --compile default
    ;;
  ablate)
    bench tp_no_cudnn_benchmark throughput --sizes 224 --batch-size $B --no-cudnn-benchmark
    bench tp_fp16 throughput --sizes 224 --batch-size $B --precision fp16
    bench tp_nchw throughput --sizes 224 --batch-size $B --no-channels-last
    ;;
  *)
    echo "usage: bash launch/bench_resnet50.sh eager|compile|ablate" >&2
    exit 2
    ;;
esac
