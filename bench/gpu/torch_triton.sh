#!/usr/bin/env bash
# One device call (<= 4 minutes), issue 15 (Torch bridge): the Torch bridge's Triton GPU tests, then
# bench.torch_qmatmul:
#   A. tile sweep of the fused kernel on 8b_down (M = 1 / 16 / 64 / 127: block sizes, stages, warps,
#      split-K, swap_ab), for tuning torch_bridge/triton/configs.py;
#   B. every code type x SHAPES x M = 1, 16, 128, 1024 with the JAX dispatcher's time on the same
#      weight (the target: triton/jax <= 1.15), budgeted: rows run shape by shape in SHAPES
#      order, the rest are left for a later call.
# Env: SHAPES (default 8b_down,70b_o,8b_qkv,70b_gate_up), SKIP_TESTS=1, SWEEP=0, JAX=0, BUDGET_B (s).
# A second call for the remaining shapes: SKIP_TESTS=1 SWEEP=0 SHAPES=70b_o,8b_qkv,70b_gate_up BUDGET_B=190.
# Results: $OUT/results.tgz (tests.log, bench_{a,b}.log, a/ and b/torch_qmatmul.{md,json}), steps.log, card.txt.
set -u
export PYTHONPATH=$PWD
export TRITON_DEFAULT_FP_FUSION=1
OUT=${OUT:-/tmp/out}
SHAPES=${SHAPES:-8b_down,70b_o,8b_qkv,70b_gate_up}
BUDGET_B=${BUDGET_B:-65}
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/steps.log"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/card.txt"
JAXFLAG=""
if [ "${JAX:-1}" = "1" ]; then
    JAXFLAG="--jax"  # the JAX column routes to cuda_w4a16_* once kernels_cuda is built (cached by source hash)
    (python -m kernels_cuda.build > "$OUT/build.log" 2>&1; echo "build rc=$?" >> "$OUT/build.log") &
fi
if [ "${SKIP_TESTS:-0}" != "1" ]; then
    log "torch triton gpu tests"
    timeout 90 python -m pytest -q -p no:cacheprovider -m gpu tests/torch_bridge/test_gpu.py > "$OUT/tests.log" 2>&1
    log "tests rc=$?"; tail -8 "$OUT/tests.log"
fi
if [ "${SWEEP:-1}" = "1" ]; then
    log "bench A: tile sweep"
    timeout 50 python -m bench.torch_qmatmul --sweep --kinds none --budget-s 35 --out "$OUT/a" > "$OUT/bench_a.log" 2>&1
    log "bench A rc=$?"; grep '^|' "$OUT/a/torch_qmatmul.md"
fi
wait
[ -f "$OUT/build.log" ] && tail -1 "$OUT/build.log"
log "bench B: code types x $SHAPES x M $JAXFLAG"
timeout $((BUDGET_B + 20)) python -m bench.torch_qmatmul $JAXFLAG --shapes "$SHAPES" --ms 1,16,128,1024 \
    --budget-s "$BUDGET_B" --iters 10 --out "$OUT/b" > "$OUT/bench_b.log" 2>&1
log "bench B rc=$?"; grep '^|' "$OUT/b/torch_qmatmul.md"
grep -h "ERROR\|WRONG\|Traceback\|budget" "$OUT"/bench_*.log | head -20
# $OUT brings back at most 8 files: pack the folders and logs.
cd "$OUT" && tar czf /tmp/torch_triton_results.tgz --exclude results.tgz . && mv /tmp/torch_triton_results.tgz results.tgz \
    && find . -mindepth 1 -maxdepth 1 ! -name results.tgz ! -name steps.log ! -name card.txt -exec rm -rf {} +
