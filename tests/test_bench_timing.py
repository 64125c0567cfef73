"""bench.timing's correctness gate: a method is timed only after it matches the spec."""

from __future__ import annotations

import numpy as np

from bench.timing import REL_ERR_OK, check_then_time, rel_err


def test_rel_err():
    ref = np.array([3.0, 4.0])
    assert rel_err(ref, ref) == 0.0
    assert rel_err([3.0, 4.5], ref) == 0.1
    assert rel_err([np.nan, 4.0], ref) == float("inf")


def test_check_then_time_records_time_wrong_and_errors():
    res: dict = {}
    timed = []
    check_then_time(res, "ok", lambda: REL_ERR_OK / 2, lambda: timed.append(1) or 12.5)
    check_then_time(res, "wrong", lambda: 2 * REL_ERR_OK, lambda: timed.append(2) or 1.0)
    check_then_time(res, "boom", lambda: 1 / 0, lambda: timed.append(3) or 1.0)
    assert res["ok"] == 12.5 and res["ok_err"] == REL_ERR_OK / 2
    assert res["wrong"] == "WRONG" and res["wrong_err"] == 2 * REL_ERR_OK
    assert res["boom"] == "ERROR ZeroDivisionError"
    assert timed == [1]  # neither the wrong nor the failing method was timed
