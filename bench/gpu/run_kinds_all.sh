#!/usr/bin/env bash
# One device call (<= 10 minutes): issue 15's kernels for every 4-bit kind (decode + wgmma prefill),
# the Torch bridge's Triton GPU tests and a short bench, the grouped (MoE) Pallas kernel's GPU tests,
# the per-kind qmatmul bench at prefill M, and decode_e2e for the GGUF / NVFP4 variants.
# Tests that do not need the CUDA library run while it builds. Results: $OUT/results.tgz, steps.log.
set -u
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
L=$OUT/logs
mkdir -p "$L"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/steps.log"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/card.txt"
echo "commit ${JQ_COMMIT:-unknown}" >> "$OUT/card.txt"
(python -m kernels_cuda.build > "$L/build.log" 2>&1; echo "build rc=$?" >> "$L/build.log") &
log "torch triton gpu tests"
timeout 90 python -m pytest -q -p no:cacheprovider -m gpu tests/torch_bridge/test_gpu.py > "$L/torch_tests.log" 2>&1
log "torch tests rc=$?"; tail -4 "$L/torch_tests.log" | cut -c1-300
log "grouped gpu tests"
timeout 80 python -m pytest -q -p no:cacheprovider -m gpu tests/pallas/test_grouped_gpu.py > "$L/grouped_tests.log" 2>&1
log "grouped tests rc=$?"; tail -4 "$L/grouped_tests.log" | cut -c1-300
wait; tail -2 "$L/build.log"
log "decode + wgmma kinds gpu tests"
timeout 110 python -m pytest -q -p no:cacheprovider -m gpu tests/kernels_cuda/test_decode_kinds_gpu.py > "$L/kinds_tests.log" 2>&1
log "kinds rc=$?"; grep -E "^FAILED|passed|failed" "$L/kinds_tests.log" | head -12 | cut -c1-300
log "wgmma integer regression"
timeout 70 python -m pytest -q -p no:cacheprovider -m gpu tests/kernels_cuda/test_w4a16_wgmma_gpu.py -x > "$L/wgmma_tests.log" 2>&1
log "wgmma rc=$?"; tail -2 "$L/wgmma_tests.log" | cut -c1-300
log "qmatmul kinds at prefill M"
timeout 85 python -m bench.qmatmul_wxa16 --kinds uint4b8_g128,q4_1,q4_k,nf4,mxfp4,nvfp4 --shapes 8b_down,70b_gate_up \
    --ms 128,1024 --iters 10 --budget-s 65 --out "$L/qm" --log-dir "" > "$L/qm.log" 2>&1
log "qmatmul rc=$?"; tail -26 "$L/qm.log"
log "decode_e2e kinds"
timeout 115 python -m bench.decode_e2e --variants bf16,w4a16,q4_k,nvfp4 --repeats 2 --out "$L/e2e" > "$L/e2e.log" 2>&1
log "e2e rc=$?"; tail -8 "$L/e2e.log"
log "torch bench (8b_down)"
timeout 50 python -m bench.torch_qmatmul --jax --shapes 8b_down --ms 1,16,128,1024 --budget-s 35 --iters 10 --out "$L/tq" \
    > "$L/tq.log" 2>&1
log "torch bench rc=$?"; grep '^|' "$L/tq/torch_qmatmul.md" | head -40
cd "$OUT" && tar czf /tmp/kinds_all.tgz logs && mv /tmp/kinds_all.tgz results.tgz && rm -rf logs
