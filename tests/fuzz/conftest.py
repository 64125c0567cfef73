"""Hypothesis profiles for the fuzz suite.

A plain ``pytest tests`` (CI) runs every fuzz test with the ``ci`` profile: a few dozen examples
each, a few hundred in all, derandomized so that CI is reproducible. ``pytest -m fuzz`` (any
marker expression naming ``fuzz``) switches to the ``long`` profile: thousands of random examples
per test. ``JQUANT_FUZZ_PROFILE`` overrides both.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=40, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=3000, **_COMMON)


def pytest_configure(config):
    marks = config.getoption("markexpr", "") or ""
    profile = os.environ.get("JQUANT_FUZZ_PROFILE") or ("long" if "fuzz" in marks else "ci")
    settings.load_profile(profile)


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.fuzz)
