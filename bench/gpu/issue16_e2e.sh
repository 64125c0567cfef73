#!/usr/bin/env bash
# Issue 16 (after the in-place layer slice and the pipelined generate loop) + issue 18's 8B KV run,
# one device call (~8 min). Results under $OUT: e2e.tgz (reports + logs) and steps.log.
source bench/gpu/lib.sh e2e
build
e2e scan 150 --scan on --variants bf16,w4a16,q4_k,nvfp4
e2e unrolled 120 --scan off --variants bf16,w4a16
XLA_FLAGS="--xla_gpu_graph_min_graph_size=1 --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,WHILE,CONDITIONAL" \
  e2e unrolled_cmdbuf 90 --scan off --variants bf16,w4a16
XLA_FLAGS="--xla_gpu_graph_min_graph_size=1 --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,WHILE,CONDITIONAL" \
  e2e scan_cmdbuf 70 --scan on --variants w4a16
e2e kv8b_4096 120 --scan on --variants w4a16 --prompt-len 4096 --tokens 32 --kv-cache-dtype auto,fp8_e4m3
log "profile w4a16 scan"
timeout 100 python -m bench.profile_decode_step --variants w4a16 --scan on --top 24 > "$L/profile_scan.log" 2>&1; log "rc=$?"
tail -28 "$L/profile_scan.log" | tee -a "$OUT/steps.log"
pack
