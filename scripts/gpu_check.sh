#!/usr/bin/env bash
# The GPU check (at most ~9 minutes on an H100/H200): install what the device lacks, make CIFAR-shaped
# data if none is there, then the wide ops on and off (do they pay on the GPU?), the CUDA test suite, the CUDA
# step benchmark and a short search end to end.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # default: $OUT (the device tool's folder), else gpu-check/
#
# Wheels in .whl/ (graphviz, submitit: the packages the device image lacks) are installed into /tmp/site.
# Each stage has a time cap (seconds, from the environment) and writes its log into OUT_DIR; a stage that
# fails or runs out of time does not stop the next one. GPU_CHECK_STAGES picks stages (default: all),
# GPU_CHECK_ROWS the benchmark rows of bench_steps.py's CUDA_ROWS (default: the graphed rows of both spaces,
# fp32 and bf16, batch 64 and 256, second order and retraining, with retraining eager beside them; a row
# takes 20-40 s, most of it starting the process and warming cuDNN up; the eager search rows of
# benchmarks/results-cuda.md were measured already).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-check}}/gpu-check"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
stages="${GPU_CHECK_STAGES:-env ab tests bench search}"
log() { echo "[gpu_check $(date +%T)] $*" | tee -a "$out/gpu_check.log"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout's darts_sg for the scripts, tests and benchmarks alike
if [ -z "${DARTS_SG_DATA:-}" ] && [ ! -d ../shared/data/cifar-10-batches-py ]; then
  export DARTS_SG_DATA=/tmp/cifar-random
  [ -d "$DARTS_SG_DATA/cifar-10-batches-py" ] || python3 scripts/fake_cifar.py "$DARTS_SG_DATA" | tee -a "$out/gpu_check.log"
fi

for stage in $stages; do
  case "$stage" in
    env)
      log "environment"
      { nvidia-smi; python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"; } \
        >"$out/env.txt" 2>&1 ;;
    ab)
      # the CPU policy keeps the wide ops off (4.4x and 1.39x slower there, benchmarks/results-dispatch.md); on the GPU
      # they cut the aten ops per step 3-4x: this A/B says whether the time follows
      log "ab_switch.py wide_edges, wide_cells --device cuda (cap ${GPU_CHECK_AB_S:-40} s each)"
      for ab in "wide_edges --space darts" "wide_edges --space sgblock" "wide_cells --genotype darts_v2 --C 36 --layers 20"; do
        timeout -k 10 "${GPU_CHECK_AB_S:-40}" python3 benchmarks/ab_switch.py $ab --device cuda --turns 10 >>"$out/ab.log" 2>&1
        log "ab_switch $ab: exit code $?; $(tail -1 "$out/ab.log")"
      done ;;
    tests)
      log "pytest -m cuda (cap ${GPU_CHECK_TEST_S:-180} s)"
      timeout -k 10 "${GPU_CHECK_TEST_S:-180}" python3 -m pytest -m cuda -n "${GPU_CHECK_WORKERS:-4}" -p no:cacheprovider \
        --durations=0 -q -rfE tests/test_cuda.py >"$out/cuda-tests.log" 2>&1
      log "pytest exit code $?; $(tail -1 "$out/cuda-tests.log")" ;;
    bench)
      log "bench_steps.py --device cuda (cap ${GPU_CHECK_BENCH_S:-180} s)"
      timeout -k 10 "${GPU_CHECK_BENCH_S:-180}" python3 benchmarks/bench_steps.py --device cuda --warmup "${GPU_CHECK_WARMUP:-4}" \
        --steps "${GPU_CHECK_STEPS:-10}" --rows "${GPU_CHECK_ROWS:-2,3,5,8,9,11,12,13,14}" --timeout 60 \
        --out "$out/results-cuda.md" >"$out/bench.log" 2>&1
      log "bench exit code $?" ;;
    search)
      log "search.py end to end (cap ${GPU_CHECK_SEARCH_S:-60} s)"
      rm -rf /tmp/gpu-check-search
      timeout -k 10 "${GPU_CHECK_SEARCH_S:-60}" python3 search.py --ops sgblock --epochs 2 --subset "${GPU_CHECK_SUBSET:-5000}" \
        --device cuda --no-progress --log-every 10 --out /tmp/gpu-check-search >"$out/search.log" 2>&1
      log "search exit code $?"
      cp /tmp/gpu-check-search/metrics.jsonl "$out/search-metrics.jsonl" 2>/dev/null ;;
  esac
done
log "done"
