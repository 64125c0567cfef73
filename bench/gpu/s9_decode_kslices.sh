#!/usr/bin/env bash
# Issue 16, ready for a session with a device (~7 min): check and time the decode kernel's in-block
# K slices and direct store (commit a7b9a5b, compiled and lowered on CPU only so far).
#   1. the decode kernel's GPU tests (poisoned outputs), the new slice tests included;
#   2. bench.qmatmul --kslice-sweep: 1/2/4/8 slices x 1..16 grid splits on the 8B shapes (M = 1, 16)
#      and 70b_o, each config checked against the f32 spec before timing;
#   3. what decode_config picks today and with slices + direct store allowed, per swept case.
# Then: calibrate kernels_cuda/w4a16.py (KSLICE_CHOICES, REDUCTION_STEPS, max_split_bytes) from
# the "Config sweeps" table of ks/qmatmul.md (in $OUT/ks.tgz) and re-run bench/gpu/issue16_e2e.sh.
source bench/gpu/lib.sh ks
build
log "decode GPU tests"
timeout 200 python -m pytest -q -x -p no:cacheprovider -m gpu tests/kernels_cuda/test_w4a16_gpu.py \
  tests/kernels_cuda/test_decode_kinds_gpu.py > "$L/decode_gpu_tests.log" 2>&1
log "rc=$?"; tail -3 "$L/decode_gpu_tests.log" | tee -a "$OUT/steps.log"
log "kslice sweep"
timeout 260 python -m bench.qmatmul --out "$L" --log-dir "" --kslice-sweep --shapes 8b_o --ms 1 --no-extras \
  --methods cuda_decode,jquant --iters 10 --budget-s 230 > "$L/sweep.log" 2>&1
log "rc=$?"
python - <<'PY' 2>&1 | tee -a "$OUT/steps.log"
from bench.shapes import SHAPES_BY_NAME
from kernels_cuda.w4a16 import blocks_per_sm_query, decode_config
import jax.numpy as jnp
for name, m in (("8b_o", 1), ("8b_qkv", 1), ("8b_down", 1), ("8b_gate_up", 1), ("8b_o", 16), ("8b_qkv", 16), ("70b_o", 1)):
    sh = SHAPES_BY_NAME[name]
    occ = blocks_per_sm_query(jnp.bfloat16, jnp.float16, m, 128, 4, 8)
    now = decode_config(m, sh.n, sh.k, blocks_per_sm=occ)
    wide = decode_config(m, sh.n, sh.k, blocks_per_sm=occ, kslice_choices=(1, 2, 4, 8), direct=True,
                         max_split_bytes=96 * 1024)
    print(f"{name} M={m}: today {now}  |  slices allowed {wide}")
PY
sed -n '/^## Config sweeps/,$p' "$L/qmatmul.md" 2>/dev/null | head -240 >> "$OUT/steps.log"
pack
