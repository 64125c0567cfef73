#!/usr/bin/env bash
# Scanned vs unrolled on the GPU for the formats not on the CUDA kernels (fp8_dynamic) and bf16,
# XLA's dynamic-slice fusion for the scanned bf16 model, and the GPU model tests after the
# scan-carry change. One device call (~7 min). $OUT: forms.tgz, steps.log.
source bench/gpu/lib.sh forms
build
e2e fp8_scan 90 --scan on --variants bf16,fp8_dynamic
e2e fp8_unrolled 90 --scan off --variants fp8_dynamic
XLA_FLAGS="--xla_gpu_enable_dynamic_slice_fusion=true" e2e bf16_scan_dsf 70 --scan on --variants bf16
log "GPU model tests"
timeout 170 python -m pytest -q -p no:cacheprovider -m gpu tests/models/test_kinds_gpu.py tests/models/test_w8a8_gpu.py \
  > "$L/models_gpu_tests.log" 2>&1; log "rc=$?"; tail -4 "$L/models_gpu_tests.log" | tee -a "$OUT/steps.log"
pack
