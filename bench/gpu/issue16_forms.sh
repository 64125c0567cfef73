#!/usr/bin/env bash
# Scanned vs unrolled on the GPU for the formats not on the CUDA kernels (fp8_dynamic) and bf16,
# XLA's dynamic-slice fusion for the scanned bf16 model, and the GPU model tests after the
# scan-carry change. One device call (~7 min). $OUT: forms.tgz, steps.log.
set -u
export PYTHONPATH=$PWD JQUANT_GPU_FIXTURES=.gpu_fixtures
OUT=${OUT:-/tmp/out}
L=$OUT/forms; mkdir -p "$L"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/steps.log"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$OUT/steps.log"
log "build"; timeout 200 python -c "from kernels_cuda.build import register; register()" > "$L/build.log" 2>&1; log "rc=$?"
e2e() {  # name, timeout, args...
  local name=$1 t=$2; shift 2
  log "decode_e2e $name: $*"
  timeout "$t" python -m bench.decode_e2e --repeats 2 --out "$L/$name" "$@" > "$L/$name.log" 2>&1; log "rc=$?"
  grep -E "^\| |tok/s" "$L/$name.log" | tail -6 | tee -a "$OUT/steps.log"
}
e2e fp8_scan 90 --variants bf16,fp8_dynamic
e2e fp8_unrolled 90 --scan off --variants fp8_dynamic
XLA_FLAGS="--xla_gpu_enable_dynamic_slice_fusion=true" e2e bf16_scan_dsf 70 --variants bf16
log "GPU model tests"
timeout 170 python -m pytest -q -p no:cacheprovider -m gpu tests/models/test_kinds_gpu.py tests/models/test_w8a8_gpu.py \
  > "$L/models_gpu_tests.log" 2>&1; log "rc=$?"; tail -4 "$L/models_gpu_tests.log" | tee -a "$OUT/steps.log"
(cd "$OUT" && tar czf forms.tgz forms && rm -rf forms)
