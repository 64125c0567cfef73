#!/usr/bin/env bash
# Issue 16 probe + issue 18 bench, one device call (~9 min): where a W4A16 decode step's time goes.
#   1. bench/gpu/scan_probe.py: a CUDA custom call under lax.scan, weights closed over vs scan xs vs unrolled;
#   2. bench.profile_decode_step, W4A16, scanned and unrolled (kernels of one step, CUPTI);
#   3. bench.decode_e2e bf16 + w4a16 (host-timed tok/s);
#   4. bench/gpu/issue18.sh (grouped kernel tests, fp8 KV cache at 4k / 16k, grouped timings).
set -u
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT/p16"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/probe.log"; }
log "build kernels_cuda"; timeout 200 python -c "import kernels_cuda, jquant.pallas; print(kernels_cuda.__name__)" > "$OUT/p16/build.log" 2>&1; log "rc=$?"
log "scan probe"; timeout 90 python bench/gpu/scan_probe.py > "$OUT/p16/scan_probe.log" 2>&1; log "rc=$?"
cat "$OUT/p16/scan_probe.log" | grep -v Warning | tail -45 | tee -a "$OUT/probe.log"
for S in auto off; do
  log "profile step w4a16 scan=$S"
  timeout 100 python -m bench.profile_decode_step --variants w4a16 --scan $S --top 14 > "$OUT/p16/profile_$S.log" 2>&1; log "rc=$?"
  tail -18 "$OUT/p16/profile_$S.log" | tee -a "$OUT/probe.log"
done
log "decode_e2e bf16,w4a16"
timeout 150 python -m bench.decode_e2e --variants bf16,w4a16 --repeats 2 --out "$OUT/p16/e2e" > "$OUT/p16/e2e.log" 2>&1; log "rc=$?"
tail -12 "$OUT/p16/e2e.log" | tee -a "$OUT/probe.log"
(cd "$OUT" && tar czf p16.tgz p16 && rm -rf p16)
bash bench/gpu/issue18.sh
