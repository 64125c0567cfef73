#!/usr/bin/env bash
# One device call: the Pallas W8A8 config / fp8 accumulation sweep at M = 1024, then the wxa16 GPU tests.
set -u
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 380 python -m bench.w8a8_sweep --shapes 8b_qkv,70b_o,70b_gate_up --ms 1024 --schemes fp8_pc,fp8_b128 \
    --budget-s 330 --out "$OUT" 2> "$OUT/sweep.log"; echo "sweep rc=$?"
timeout 130 python -m pytest -q -p no:cacheprovider -m gpu tests/pallas/test_wxa16_gpu.py -x > "$OUT/wxa16_tests.log" 2>&1
echo "wxa16 rc=$?"; tail -3 "$OUT/wxa16_tests.log"
