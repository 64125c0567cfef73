#!/usr/bin/env bash
# Issue 16 measurement call (~8 min): ncu counters where the targets are missed, and the
# qmatmul table with the gemlite (.bench_vendor/, autotuned "fast") and tinygemm columns.
#   1. ncu on the decode kernel, the four 8B shapes at M = 1 and 8b_gate_up / 70b_o at M = 16;
#   2. ncu on the wgmma kernel at M = 128 (70b_o, 8b_qkv) and M = 1024 (8b_qkv);
#   3. bench.profile_cuda_decode: kernel alone vs op (kernel + split-K reduction), 8B shapes;
#   4. bench.qmatmul, 8 shapes x M = 1, 16, 128, 1024, against the faster bf16.
source bench/gpu/lib.sh meas
build
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
SECTIONS="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats"
log "ncu decode ($NCU)"
timeout 150 "$NCU" --clock-control none -k regex:decode_kernel $SECTIONS \
  python -m bench.profile_cuda_decode --once --shapes 8b_qkv,8b_o,8b_gate_up,8b_down --ms 1 > "$L/ncu_decode_m1.txt" 2>&1
log "rc=$?"
timeout 90 "$NCU" --clock-control none -k regex:decode_kernel $SECTIONS \
  python -m bench.profile_cuda_decode --once --shapes 8b_gate_up,70b_o --ms 16 > "$L/ncu_decode_m16.txt" 2>&1
log "rc=$?"
log "ncu wgmma"
timeout 120 "$NCU" --clock-control none -k regex:wgmma $SECTIONS \
  python -m bench.profile_cuda_gemm --kernel wgmma --once --shapes 70b_o,8b_qkv --ms 128,1024 > "$L/ncu_wgmma.txt" 2>&1
log "rc=$?"
grep -E "decode_kernel|wgmma|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Stall|Issued Warp" "$L/ncu_decode_m1.txt" | head -60 >> "$OUT/steps.log"
log "profile_cuda_decode 8B"
timeout 90 python -m bench.profile_cuda_decode --shapes 8b_qkv,8b_o,8b_gate_up,8b_down --ms 1,16 > "$L/profile_cuda_decode.log" 2>&1
log "rc=$?"; tail -12 "$L/profile_cuda_decode.log" | tee -a "$OUT/steps.log"
log "qmatmul with gemlite/tinygemm"
timeout 300 python -m bench.qmatmul --out "$L/qmatmul" --log-dir "" --ms 1,16,128,1024 --no-extras --iters 10 --budget-s 260 \
  --methods torch_bf16,xla_bf16,gemlite,tinygemm,cuda_decode,cuda_wgmma,jquant > "$L/qmatmul.log" 2>&1
log "rc=$?"; tail -40 "$L/qmatmul.log" | tee -a "$OUT/steps.log"
pack
