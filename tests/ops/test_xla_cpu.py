"""The CPU chunked qmatmul backend (`jquant.ops.xla_cpu`) against the float64 oracle and the reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.ops import explain
from jquant.ops.xla_cpu import _planes_ok, chunk_rows
from tests.ops.qmatmul_suite import CASES, QCase, check_backend, make_qarray

NAME = "xla_cpu_chunked"

# Cases with N above the chunk height (K=320 -> 2048 rows), with and without a remainder chunk, for
# every row-block kind: per-row groups (plane path), 2-D blocks and per-tensor (generic path), act order.
CHUNKED = [
    QCase("uint4", (1, 32), 3, 4096, 320, zero="float"),  # Q4_1: two full chunks
    QCase("uint4", (1, 32), 1, 4500, 320, zero="float"),  # + remainder
    QCase("uint4", (1, 64), 2, 2100, 320, zero="int", perm=True),
    QCase("int8", (1, 32), 1, 2100, 320),
    QCase("fp8_e4m3", (128, 128), 2, 2200, 320, scale_dtype="float32"),
    QCase("fp8_e4m3", "tensor", 1, 2100, 320, scale_dtype="float32"),
    QCase("nf4", (1, 64), 1, 2100, 320, scale_dtype="float32"),
    QCase("uint2", (1, 64), 1, 2100, 320, zero="int"),
]


@pytest.mark.parametrize("case", CASES + CHUNKED, ids=str)
def test_matches_float64_oracle(case):
    check_backend(NAME, case)


def test_chunked_cases_really_chunk():
    for case in CHUNKED:
        w = make_qarray(case)
        assert case.n > chunk_rows(w), case
    assert _planes_ok(make_qarray(CHUNKED[0])) and not _planes_ok(make_qarray(CHUNKED[4]))


def test_dispatcher_prefers_it_on_cpu():
    w = jax.device_put(make_qarray(QCase("uint4", (1, 32), 64, 64, 64, zero="float")))
    # M = 64: past kernels_cpu's decode range (it takes M <= 32 first in the CPU table)
    assert explain(jnp.zeros((64, 64)), w, platform="cpu").startswith(f"qmatmul (64, 64) x {w!r} -> {NAME}")


@pytest.mark.parametrize("m", [1, 5])
def test_close_to_reference_on_lm_head_shape(m):
    """The Q4_1 LM-head shape (49152 x 576): same result as the reference up to f32 summation order."""
    from jquant.ops import qmatmul

    case = QCase("uint4", (1, 32), m, 49152, 576, zero="float")
    w, x = (
        jax.device_put(make_qarray(case)),
        jnp.asarray(np.random.default_rng(3).standard_normal((m, 576)), jnp.float32),
    )
    ref = jax.jit(lambda x, w: qmatmul(x, w, implementation="xla_reference"))(x, w)
    got = jax.jit(lambda x, w: qmatmul(x, w, implementation=NAME))(x, w)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=0, atol=1e-5 * np.abs(np.asarray(ref)).max())


@pytest.fixture(scope="module")
def smollm2():
    import jquant
    from jquant.convert.default_model import default_model_path
    from jquant.models import from_checkpoint
    from jquant.models.tokenizer import load_tokenizer, prompt_ids

    path = default_model_path()
    model = from_checkpoint(jquant.convert(path), dtype=jnp.float32)
    tok = load_tokenizer(path)
    return model, [prompt_ids(tok, p) for p in ("What is the capital of France?", "Write a haiku about the sea.")]


def test_smollm2_greedy_tokens_equal_reference(smollm2, monkeypatch):
    """16 greedy tokens on 2 prompts: identical to the XLA reference's."""
    from jquant.models import Generator

    model, prompts = smollm2
    outs = {}
    for name in ("xla_reference", NAME):
        monkeypatch.setenv("JQUANT_KERNELS", name)
        gen = Generator(model)  # a new Generator traces anew, so the env var takes effect
        outs[name] = [np.asarray(gen(ids, max_new_tokens=16)) for ids in prompts]
    for ref, got in zip(outs["xla_reference"], outs[NAME], strict=True):
        assert ref.shape == (1, 16)
        np.testing.assert_array_equal(got, ref)
