"""Probe: does a CUDA custom call under lax.scan copy its layer's weights? (issue 16)

Eight stacked W4A16 layers (14336 x 4096, g128), M = 1, three forms of one loop:
  closed  - the stack closed over, ``take_layer`` (dynamic index) inside the scan body (HEAD's form)
  xs      - the stack passed as the scan's xs (the form before commit c5e2c46)
  unroll  - a Python loop over static slices
Prints GPU time per loop (CUPTI, all kernels), the kernel names with their summed time, and the
copy-like instructions of the optimized HLO.
"""

import collections
import re

import jax
import jax.numpy as jnp
from jax.experimental.mosaic.gpu import profiler

from jquant.core.experts import stack_experts
from jquant.ops import qmatmul
from jquant.ops.qmatmul import take_layer
from tests.ops.qmatmul_suite import QCase, make_qarray

L = 8
one = make_qarray(QCase(m=1, n=14336, k=4096, qtype="uint4b8", block=(1, 128)))
w = jax.device_put(stack_experts([one] * L))
x = jnp.ones((1, 4096), jnp.bfloat16)


def closed(x, w):
    def body(h, i):
        y = qmatmul(h, take_layer(w, i))
        return h + y[:, :4096] * 0.001, None

    return jax.lax.scan(body, x, jnp.arange(L, dtype=jnp.int32))[0]


def xs(x, w):
    def body(h, wl):
        y = qmatmul(h, wl)
        return h + y[:, :4096] * 0.001, None

    return jax.lax.scan(body, x, w)[0]


def layer_arg(x, w):
    def body(h, i):
        y = qmatmul(h, w, layer=i)
        return h + y[:, :4096] * 0.001, None

    return jax.lax.scan(body, x, jnp.arange(L, dtype=jnp.int32))[0]


def carried(x, w):
    def body(c, _):
        h, i = c
        y = qmatmul(h, take_layer(w, i))
        return (h + y[:, :4096] * 0.001, i + 1), None

    return jax.lax.scan(body, (x, jnp.int32(0)), None, length=L)[0][0]


def unroll(x, w):
    h = x
    for i in range(L):
        y = qmatmul(h, take_layer(w, i))
        h = h + y[:, :4096] * 0.001
    return h


for name, fn in [("closed", closed), ("xs", xs), ("layer_arg", layer_arg), ("carried", carried), ("unroll", unroll)]:
    f = jax.jit(fn)
    jax.block_until_ready(f(x, w))
    hlo = f.lower(x, w).compile().as_text()
    copies = [ln.strip()[:160] for ln in hlo.splitlines() if re.search(r"\b(copy|copy-start|dynamic-slice)\(", ln)]
    _, kernels = profiler.measure(f, aggregate=False)(x, w)
    by = collections.defaultdict(list)
    for k, ms in kernels:
        by[k].append(ms)
    total = sum(ms for _, ms in kernels)
    print(f"\n## {name}: {len(kernels)} kernels, {1e3 * total:.1f} us GPU per loop of {L} layers")
    for k, ts in sorted(by.items(), key=lambda kv: -sum(kv[1]))[:6]:
        print(f"  {1e3 * sum(ts):8.1f} us  x{len(ts):3d}  {k[:100]}")
    print(f"  HLO copy / dynamic-slice instructions: {len(copies)}")
    for c in copies[:8]:
        print("   ", c)
