#!/usr/bin/env bash
# Issue 16, ready for a session with a device (~2 min): which way of streaming the 4-bit codes reaches
# >= 80% of copy bandwidth on the 8B / 70B shapes, memory side only (bench/gpu/membench.cu's header).
# The table goes to $OUT/membench.md; the winner is what a persistent decode kernel should load with.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/membench.md"
nvcc -O3 -std=c++17 -arch=sm_90a -o /tmp/membench bench/gpu/membench.cu 2>&1 | tail -3
timeout 240 /tmp/membench | tee -a "$OUT/membench.md"
