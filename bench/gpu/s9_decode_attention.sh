#!/usr/bin/env bash
# Issue 16, ready for a session with a device (~6 min): the Pallas decode attention kernel (commit
# f6de466; interpreter- and lowering-tested on CPU only so far) on the GPU.
#   1. its tests (interpreter cases need no GPU; the model test also runs the real kernel below);
#   2. one W4A16 decode step's kernels at cache position 512, XLA vs Pallas attention (CUPTI);
#   3. bench.decode_e2e, w4a16 + bf16, bf16 and fp8_e4m3 caches, XLA vs Pallas attention.
# Then: make "pallas" the GPU default in LlamaForCausalLM if it wins (set_decode_attention).
source bench/gpu/lib.sh att
build
log "decode attention tests"
timeout 150 python -m pytest -q -x -p no:cacheprovider tests/pallas/test_decode_attention_interpret.py tests/pallas/test_decode_attention_gpu.py \
  > "$L/tests.log" 2>&1; log "rc=$?"; tail -2 "$L/tests.log" | tee -a "$OUT/steps.log"
for A in xla pallas; do
  log "profile w4a16 step, position 512, $A attention"
  timeout 60 python -m bench.profile_decode_step --variants w4a16 --position 512 --decode-attention $A --top 16 \
    > "$L/profile_$A.log" 2>&1; log "rc=$?"
  grep -v "^jquant:" "$L/profile_$A.log" | sed -n '/^## /,$p' | head -22 | tee -a "$OUT/steps.log"
  e2e "e2e_$A" 150 --variants w4a16 --kv-cache-dtype auto,fp8_e4m3 --decode-attention $A
done
pack
