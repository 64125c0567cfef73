"""The shared qmatmul suite (tests/ops/qmatmul_suite.py) through the Pallas backends, interpreted on CPU.

Interpret-mode twins of the two registered backends are registered under their own names for the
duration of the module; cases they decline (f32 activations, codebooks, fp8, 2-bit, float zeros,
scale2, 2-D blocks) are skipped with the backend's reason, everything else must match the float64
oracle within the suite's sqrt(K) tolerance.
"""

from __future__ import annotations

import pytest

import jquant.pallas  # noqa: F401
from jquant.ops.backend import BACKENDS, register_backend
from jquant.pallas import WNA16Backend
from tests.ops.qmatmul_suite import CASES, check_backend

NAMES = {"decode": "pallas_triton_wna16_decode_interpret", "prefill": "pallas_triton_wna16_prefill_interpret"}
# The int-code cases with 16-bit activations: the ones these backends take (the rest are skipped
# by reason anyway, but interpret runs are the slow part of CPU CI, so keep the list explicit).
RUN = [c for c in CASES if c.dtype != "float32"]


@pytest.fixture(scope="module", autouse=True)
def interpret_backends():
    for mode, name in NAMES.items():
        register_backend(WNA16Backend(mode, interpret=True, name=name))
    yield
    for name in NAMES.values():
        BACKENDS.pop(name, None)


@pytest.mark.parametrize("mode", sorted(NAMES))
@pytest.mark.parametrize("case", RUN, ids=str)
def test_suite_case(mode, case):
    check_backend(NAMES[mode], case, skip_unsupported=True)


def test_suite_has_runnable_cases():
    """Guard against a suite change that would skip everything for these backends."""
    import jax

    from tests.ops.qmatmul_suite import make_qarray, make_x

    taken = [
        c
        for c in RUN
        if WNA16Backend("prefill", interpret=True).supports(jax.numpy.asarray(make_x(c)), make_qarray(c))[0]
    ]
    assert len(taken) >= 8, [str(c) for c in taken]
