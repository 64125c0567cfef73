#!/usr/bin/env bash
# One device call: W8A8 correctness on the GPU after the fp8 rounding fix, then the W8A8 bench at
# every M (Pallas forced, XLA fp8 dot, scaled_mm, int_mm, bf16), then the e2e FP8_DYNAMIC decode.
set -u
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/steps.log"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/card.txt"
echo "commit ${JQ_COMMIT:-unknown}" >> "$OUT/card.txt"
(python -m kernels_cuda.build > "$OUT/build.log" 2>&1; echo "build rc=$?" >> "$OUT/build.log") &
log "w8a8 gpu tests"
timeout 150 python -m pytest -q -p no:cacheprovider -m gpu tests/pallas/test_w8a8_gpu.py -k "not timing" -x \
    > "$OUT/w8a8_tests.log" 2>&1; log "w8a8 tests rc=$?"; tail -4 "$OUT/w8a8_tests.log"
log "model w8a8 gpu tests"
JQUANT_GPU_FIXTURES=.gpu_fixtures timeout 100 python -m pytest -q -s -p no:cacheprovider -m gpu tests/models/test_w8a8_gpu.py \
    > "$OUT/model_w8a8.log" 2>&1; log "model rc=$?"; tail -4 "$OUT/model_w8a8.log"
wait
log "bench w8a8 (pallas forced)"
JQUANT_KERNELS=pallas_triton_w8a8 timeout 230 python -m bench.qmatmul_w8a8 --schemes fp8_pc,fp8_b128,int8_pc \
    --shapes 8b_qkv,70b_o,70b_gate_up,70b_down --ms 1,16,128,1024,4096 --iters 10 --budget-s 190 --out "$OUT/w8a8" \
    > "$OUT/bench_w8a8.log" 2>&1; log "bench rc=$?"; tail -30 "$OUT/bench_w8a8.log"
log "decode e2e"
timeout 150 python -m bench.decode_e2e --variants bf16,fp8_dynamic --repeats 2 --out "$OUT/e2e" > "$OUT/e2e.log" 2>&1
log "e2e rc=$?"; tail -15 "$OUT/e2e.log"
# $OUT brings back at most 8 files: pack the folders.
cd "$OUT" && tar czf results.tgz --exclude results.tgz . && find . -mindepth 1 -maxdepth 1 ! -name results.tgz ! -name steps.log -exec rm -rf {} +
