#!/usr/bin/env bash
# Short device call: the GPU model tests with the new default (unrolled on a GPU), then one decode
# step's kernels for NVFP4 and FP8_DYNAMIC (unrolled), to see where their time goes. $OUT: logs.
set -u
export PYTHONPATH=$PWD JQUANT_GPU_FIXTURES=.gpu_fixtures
OUT=${OUT:-/tmp/out}
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/steps.log"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$OUT/steps.log"
log "GPU model tests"
timeout 130 python -m pytest -q -p no:cacheprovider -m gpu tests/models/test_kinds_gpu.py tests/models/test_w8a8_gpu.py \
  > "$OUT/models_gpu_tests.log" 2>&1; log "rc=$?"; tail -3 "$OUT/models_gpu_tests.log" | tee -a "$OUT/steps.log"
for V in nvfp4 fp8_dynamic; do
  log "profile $V unrolled"
  timeout 45 python -m bench.profile_decode_step --variants $V --scan off --top 14 > "$OUT/profile_$V.log" 2>&1; log "rc=$?"
  grep -v "^jquant:" "$OUT/profile_$V.log" | sed -n '/^## /,$p' | head -20 | tee -a "$OUT/steps.log"
done
