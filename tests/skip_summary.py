"""A pytest plugin: skipped tests summarized as one count per reason instead of one line per test.

A CPU run skips hundreds of tests (GPU tests, kernel cases a backend declines); ``-ra`` would list
them one by one. This prints at most `MAX_LINES` lines, most frequent reason first, with numbers
and parenthesized case descriptions folded so that "backend X declines case (m=1, ...): why"
counts once per kind of reason. ``pytest -rs`` (or ``-ra``) still lists every skip, and then this
summary is left out. Used by tests/conftest.py; usable alone as ``-p tests.skip_summary``.
"""

from __future__ import annotations

import re
from collections import Counter

MAX_LINES = 12


def reason_of(report) -> str:
    """The skip reason of a test report (``longrepr`` is ``(path, lineno, "Skipped: reason")``)."""
    lr = report.longrepr
    text = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    return text.removeprefix("Skipped: ").strip()


def reason_key(reason: str) -> str:
    """``reason`` with case details folded: parentheses holding numbers or ``=`` -> ``(...)``, numbers -> N."""
    for _ in range(3):  # nested parentheses, innermost first
        reason = re.sub(r"\([^()]*[\d=][^()]*\)", "(...)", reason)
    reason = re.sub(r"\b\d+(?:\.\d+)?\b", "N", reason)
    reason = reason.splitlines()[0] if reason else "(no reason given)"
    return reason if len(reason) <= 120 else reason[:117] + "..."


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    skipped = tr.stats.get("skipped", [])
    if not skipped or "s" in tr.reportchars:
        return
    counts = Counter(reason_key(reason_of(r)) for r in skipped)
    tr.write_sep("-", f"{len(skipped)} skipped, {len(counts)} kinds of reason (pytest -rs lists each test)")
    common = counts.most_common()
    for reason, n in common[:MAX_LINES]:
        tr.write_line(f"{n:6d}  {reason}")
    rest = common[MAX_LINES:]
    if rest:
        tr.write_line(f"{sum(n for _, n in rest):6d}  ... {len(rest)} more kinds of reason")
