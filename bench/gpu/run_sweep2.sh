#!/usr/bin/env bash
# One device call: W8A8 GPU tests after the fp8 load change, the config sweep (acc 128), wxa16 tests, e2e with Pallas W8A8.
set -u
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 150 python -m pytest -q -p no:cacheprovider -m gpu tests/pallas/test_w8a8_gpu.py -k "not timing" > "$OUT/w8a8_tests.log" 2>&1
echo "w8a8 tests rc=$?"; tail -2 "$OUT/w8a8_tests.log"
timeout 170 python -m bench.w8a8_sweep --shapes 8b_qkv,70b_o,70b_gate_up --ms 1024 --schemes fp8_pc,fp8_b128 --accs 128 \
    --budget-s 140 --out "$OUT" 2> "$OUT/sweep.log"; echo "sweep rc=$?"
timeout 90 python -m pytest -q -p no:cacheprovider -m gpu tests/pallas/test_wxa16_gpu.py > "$OUT/wxa16_tests.log" 2>&1
echo "wxa16 rc=$?"; tail -2 "$OUT/wxa16_tests.log"
JQUANT_KERNELS=pallas_triton_w8a8 timeout 100 python -m bench.decode_e2e --variants fp8_dynamic --repeats 2 --out "$OUT/e2e" > "$OUT/e2e.log" 2>&1
echo "e2e rc=$?"; tail -4 "$OUT/e2e.log"
