"""Killing ``jquant convert``: SIGTERM / SIGINT clean up at once; after SIGKILL the next run does.

Either way there is never a partial OUT, and after the next run no ``.OUT.tmp-PID`` either. A
driver slows the write down (a sleep after the safetensors file is written) so that the kill lands
while the temporary folder exists; other runs are killed at random moments.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fuzz import builders as B

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "import sys; from jquant.cli import main; sys.exit(main(sys.argv[1:]))"]
# The driver restores Python's SIGINT handler: a shell starts background jobs (`cmd &`, nohup)
# with SIGINT ignored, and Python then keeps it ignored, which is not what this test is about.
DRIVER = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from jquant.convert import canonical
real = canonical.write_safetensors
def slow(*a, **k):
    real(*a, **k)
    print("WRITING", flush=True)
    time.sleep(float(sys.argv[3]))
canonical.write_safetensors = slow
from jquant.cli import main
sys.exit(main(["convert", sys.argv[1], sys.argv[2]]))
"""


def _start(src: Path, out: Path, sleep: float = 30.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(src), str(out), str(sleep)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_writing(p: subprocess.Popen) -> None:
    for line in p.stdout:  # progress bars come first
        if "WRITING" in line:
            return
    raise AssertionError(f"the driver ended before writing: {p.stderr.read()[-2000:]}")


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return B.write_hf(tmp_path_factory.mktemp("kill") / "src", tensors=B.hf_tensors(layers=1))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_clean_up_at_once(src, tmp_path, sig):
    out = tmp_path / "out"
    p = _start(src, out)
    _wait_writing(p)
    assert _leftovers(tmp_path) == [f".out.tmp-{p.pid}"]
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == (143 if sig == signal.SIGTERM else 130), err
    assert "Traceback" not in err, err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_sigkill_leftover_is_removed_by_the_next_run(src, tmp_path):
    out = tmp_path / "out"
    p = _start(src, out)
    _wait_writing(p)
    p.kill()
    p.communicate(timeout=60)
    assert not out.exists() and _leftovers(tmp_path) == [f".out.tmp-{p.pid}"]  # what SIGKILL leaves
    r = subprocess.run([*CLI, "convert", str(src), str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f".out.tmp-{p.pid}" in r.stderr and "no longer runs" in r.stderr
    assert (out / "jquant.json").is_file() and _leftovers(tmp_path) == []


def test_kills_at_random_moments(src, tmp_path):
    rng = random.Random(int(os.environ.get("JQUANT_KILL_SEED", "21")))
    for i in range(4):
        out = tmp_path / f"out{i}"
        p = _start(src, out, sleep=rng.uniform(0.0, 0.3))
        time.sleep(rng.uniform(0.2, 1.5))
        p.send_signal(rng.choice([signal.SIGKILL, signal.SIGTERM]))
        p.communicate(timeout=60)
        partial = out.exists() and not (out / "jquant.json").is_file()
        assert not partial, f"partial {out}"
        r = subprocess.run(
            [*CLI, "convert", str(src), str(out), "--force"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert (out / "jquant.json").is_file() and _leftovers(tmp_path) == [], _leftovers(tmp_path)
