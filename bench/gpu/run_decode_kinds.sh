#!/usr/bin/env bash
# One device call: the CUDA decode kernel for every 4-bit code kind (issue 15): GPU tests (new kinds,
# then the integer regression suite), then bench.qmatmul_wxa16 on the 4-bit kinds at M = 1 / 16.
set -u
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/steps.log"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/card.txt"
echo "commit ${JQ_COMMIT:-unknown}" >> "$OUT/card.txt"
log "build"; python -m kernels_cuda.build > "$OUT/build.log" 2>&1; log "build rc=$?"; tail -2 "$OUT/build.log"
log "decode kinds gpu tests"
timeout ${T_TESTS:-170} python -m pytest -q -p no:cacheprovider -m gpu tests/kernels_cuda/test_decode_kinds_gpu.py -x \
    > "$OUT/kinds_tests.log" 2>&1; log "kinds rc=$?"; tail -25 "$OUT/kinds_tests.log" | cut -c1-400
log "w4a16 regression"
timeout ${T_REG:-90} python -m pytest -q -p no:cacheprovider -m gpu tests/kernels_cuda/test_w4a16_gpu.py -x \
    > "$OUT/w4a16_tests.log" 2>&1; log "w4a16 rc=$?"; tail -3 "$OUT/w4a16_tests.log"
log "bench"
timeout ${T_BENCH:-230} python -m bench.qmatmul_wxa16 --kinds ${KINDS:-uint4b8_g128,q4_0,q4_1,q4_k,q3_k,iq4_nl,nf4,bnb_fp4,mxfp4,nvfp4} \
    --shapes ${SHAPES:-8b_qkv,8b_down,70b_o,70b_gate_up} --ms ${MS:-1,16} --iters 10 --budget-s ${BUDGET:-200} --out "$OUT/bench" \
    > "$OUT/bench.log" 2>&1; log "bench rc=$?"; tail -45 "$OUT/bench.log"
