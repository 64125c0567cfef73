#!/usr/bin/env bash
# Short device call (ready for the next session): the GPU model tests with the default model form
# (unrolled on a GPU), then one decode step's kernels for NVFP4 and FP8_DYNAMIC (unrolled), to see
# where their time goes (NVFP4 1.7x and FP8 1.9x the W4A16 step on H200). $OUT: check.tgz, steps.log.
source bench/gpu/lib.sh check
log "GPU model tests"
timeout 130 python -m pytest -q -p no:cacheprovider -m gpu tests/models/test_kinds_gpu.py tests/models/test_w8a8_gpu.py \
  > "$L/models_gpu_tests.log" 2>&1; log "rc=$?"; tail -3 "$L/models_gpu_tests.log" | tee -a "$OUT/steps.log"
for V in nvfp4 fp8_dynamic; do
  log "profile $V unrolled"
  timeout 45 python -m bench.profile_decode_step --variants $V --scan off --top 14 > "$L/profile_$V.log" 2>&1; log "rc=$?"
  grep -v "^jquant:" "$L/profile_$V.log" | sed -n '/^## /,$p' | head -20 | tee -a "$OUT/steps.log"
done
pack
