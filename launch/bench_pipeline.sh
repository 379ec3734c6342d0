#!/usr/bin/env bash
# The ImageNet input pipeline on a lent GPU, in one prepared sequence (docs/BENCHMARKS.md, "Pipeline"):
# DALI's GPU checks, then `bench pipeline` (torchvision vs DALI on a generated ImageNet-like tree and
# its imagenet18 copies), then the trainer end to end (compiled step) against its synthetic-data rate.
#
# The calls, in order (the machine keeps /tmp only while warm, ~30 s between calls):
#   here, once, in the project's root:   ../shared/device/stage-dali.sh      (.gpudata/dali/p1..p5)
#   runs 1-4: command "bash .gpudata/dali/pK/keep.sh"          carry [".gpudata/dali/pK"]   K = 1..4
#   run 5:    command "bash .gpudata/dali/p5/keep.sh && STEPS=... bash launch/bench_pipeline.sh"
#             carry [".gpudata/dali/p5"]                       timeout_s 600
# A call may run 600 s: steps start only while BUDGET (540 s) lasts, each cut to what is left, so the
# call ends with its log and JSON. From the H200's 2026-11-26 timings: tree ~45 s (20,480 JPEGs + 2 copies),
# loaders ~170 s, full ~80 s, e2e ~270 s (two ~120-150 s trainer runs): checks,loaders,full,e2e does
# not fit one call. Steps run in the order of the list below, so the last picked is the one cut.
# keep.sh exits 3 when an earlier part is gone (the machine went cold): start again from part 1.
# Without DALI the checks skip and the DALI rows report their error; the rest still runs.
#
# Env: OUT (default runs/bench-pipeline), TREE (default /tmp/bench-imagenet), IMAGES (20480: a multiple
# of every batch, so no partial batch adds a compiled shape), SECONDS_PER (6), STEPS (all, or some of
# checks,loaders,hwload,full,float,e2e,e2e_synthetic; the tree is made first whenever a bench step is
# picked), BUDGET (540: seconds from this script's start, its DALI install included; keep.sh's time is
# not), BENCH_DRY_RUN=1 (print the commands and exit).
# All steps take ~14 min on an H200 (estimate): pick with STEPS to fit the lease.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench-pipeline}
TREE=${TREE:-/tmp/bench-imagenet}
IMAGES=${IMAGES:-20480}
SECONDS_PER=${SECONDS_PER:-6}
STEPS=${STEPS:-all}
BUDGET=${BUDGET:-540}
deadline=$(( $(date +%s) + BUDGET ))  # from the start: the DALI install and the env lines below count too
WORKERS=$(nproc)

if ls /tmp/stage/dali/files/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site/nvidia/dali ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/stage/dali/files/*.whl
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}

bench=(python3 -m training.bench pipeline "$TREE" --generate "$IMAGES" --workers "$WORKERS")
# step|command; STEPS picks steps by name (comma-separated) or all. The first H200 run (2026-11-26)
# timed out in checks and loaders (150 s, 60 s) with ROI + fancy-upsampling warnings flooding the log.
# The tree (generated on every core, ~45 s there) gets a step of its own: inside the first bench step
# it took that step's timeout. hwload measures dali:whole with the hardware decoder off, against
# loaders' dali:whole row (its default share): the hardware decoder decodes whole images only.
cmds=(
  "checks|timeout 120 python3 -m pytest -q -x -p no:cacheprovider --durations=5 tests/test_dali_gpu.py"
  "tree|timeout 180 ${bench[*]} --sizes 128 224 --loader"
  "loaders|timeout 210 ${bench[*]} --sizes 128 224 --loader dali torchvision dali:whole --batch-size 256 --seconds $SECONDS_PER --json $OUT/pipeline.json"
  "hwload|timeout 60 ${bench[*]} --sizes 128 --loader dali:whole --dali-hw-load 0 --batch-size 256 --seconds $SECONDS_PER --json $OUT/pipeline_hw0.json"
  "full|timeout 90 ${bench[*]} --source full --sizes 128 --loader dali torchvision --batch-size 256 --seconds $SECONDS_PER --json $OUT/pipeline_full.json"
  "float|timeout 60 ${bench[*]} --sizes 128 --loader torchvision torchvision:float --batch-size 256 --seconds $SECONDS_PER --json $OUT/pipeline_float.json"
  "e2e|timeout 330 ${bench[*]} --sizes 128 224 --loader --end-to-end dali torchvision --json $OUT/end_to_end.json"
  "e2e_synthetic|timeout 170 ${bench[*]} --sizes 128 224 --loader --end-to-end synthetic --json $OUT/end_to_end_synthetic.json"
)
if [ -n "${BENCH_DRY_RUN:-}" ]; then
  for c in "${cmds[@]}"; do echo "${c#*|}"; done
  exit 0
fi
mkdir -p "$OUT"
{ nvidia-smi -L || true; python3 -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'
  python3 -c 'import nvidia.dali as d; print("dali", d.__version__)' 2>&1 | tail -1; } | tee "$OUT/env.txt"
NOISE='nvtiff|nvTIFF|nvjpeg2k|nvJPEG2000|nvImageCodec|^\s*$'
status=0
for c in "${cmds[@]}"; do
  step=${c%%|*} cmd=${c#*|}
  [ "$STEPS" = all ] || [[ ",$STEPS," == *",$step,"* ]] || { [ "$step" = tree ] && [ "$STEPS" != checks ]; } || continue
  left=$(( deadline - $(date +%s) ))
  if [ "$left" -lt 20 ]; then
    echo "== skipped $step: BUDGET ($BUDGET s) spent" | tee -a "$OUT/log.txt"; status=1; continue
  fi
  secs=${cmd#timeout } secs=${secs%% *}
  [ "$secs" -le "$left" ] || cmd="timeout $left ${cmd#timeout $secs }"  # the call's limit, not the step's, would cut it
  echo "== $cmd" | tee -a "$OUT/log.txt"
  t0=$(date +%s)
  # DALI's optional-codec notices (nvTIFF, nvJPEG2000) repeat per process: keep them out of the log
  $cmd 2>&1 | grep --line-buffered -v -E "$NOISE" | tee -a "$OUT/log.txt" | grep -v '^  '
  rc=${PIPESTATUS[0]}
  echo "== rc $rc in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/log.txt"
  # pytest's 5: nothing ran (tests/test_dali_gpu.py skips whole without DALI or without CUDA)
  [ "$step" = checks ] && [ "$rc" = 5 ] && echo "== no check ran: DALI or CUDA missing (stage DALI: ../shared/device/README.md)" | tee -a "$OUT/log.txt"
  [ "$rc" = 0 ] || status=1
done
exit $status
