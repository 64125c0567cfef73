"""The command line as a newcomer meets it: help texts and defaults, examples, packaging, setup output,
the README's command list, and the skip summary of the test run (all fast: no model is loaded)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

from jquant.cli import COMMANDS, EXAMPLES, build_parser

ROOT = Path(__file__).resolve().parents[2]


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_has_help_and_shows_its_default():
    for name, sub in _subparsers(build_parser()).items():
        text = sub.format_help()
        for a in sub._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help, f"jquant {name}: {a.dest} has no help text"
            if a.default not in (None, False, argparse.SUPPRESS) and (a.option_strings or a.nargs == "?"):
                flag = a.option_strings[-1] if a.option_strings else a.metavar
                body = text.split("\n\n", 1)[1]  # past the usage lines
                block = body[body.index(flag) :].split("\n  -")[0]
                assert "default" in block, f"jquant {name} {flag}: default {a.default!r} not shown"


def test_main_help_shows_one_example_per_command(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        cmd = name.replace("_", "-")
        lines = [ln for ln in out.splitlines() if ln.strip().startswith(f"jquant {cmd} ")]
        assert len(lines) == 1, f"`jquant --help` should show one example of {cmd}: {lines}"
        assert EXAMPLES[cmd][0] in lines[0]


def test_readme_lists_every_command():
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("Command line (thin wrappers") :].split("```")[1]
    for name in COMMANDS:
        assert re.search(rf"^jquant {name.replace('_', '-')}\b", block, re.M), f"README's command block lacks {name}"


def test_readme_example_output_is_what_generate_prints_and_is_dated():
    """The two commands' example: the lines `jquant generate` prints, and the machine and date it was measured on."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The two commands") : readme.index("## Usage")]
    assert re.search(r"measured on [^()]+?, 20\d\d-\d\d-\d\d", section)
    assert re.search(
        r"^\[gguf\] \S+: weights [\d.]+ MB on device \(bf16: [\d.]+ MB, [\d.]+x\), loaded in", section, re.M
    )
    assert re.search(
        r"^\d+ tokens; first token after [\d.]+ s \(compile \+ prefill\), decode [\d.]+ tokens/s$", section, re.M
    )
    src = (ROOT / "jquant/cli/generate.py").read_text()
    assert "weights {mb(held)} on device (bf16: {mb(bf16)}" in src
    assert "(compile + prefill), {rate}" in src and 'rate = f"decode {steps:.2f} tokens/s"' in src


def test_pyproject_spdx_license_and_no_setuptools_warnings():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(pyproject["project"]["license"], str)  # SPDX string: no BuildBackendWarning
    from setuptools.config.pyprojecttoml import read_configuration

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_configuration(ROOT / "pyproject.toml")


def test_bench_ships_with_jquant(tmp_path):
    from setuptools import find_packages

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = find_packages(str(ROOT), include=cfg["include"])
    assert "bench" in found and not any(p.startswith("tests") for p in found)
    # installed (editable here): importable from anywhere, not only from the repository root
    out = subprocess.run(
        [sys.executable, "-c", "import bench.env, bench.qmatmul as q; print(q.__name__)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "bench.qmatmul", out.stderr[-2000:]


def test_setup_output_is_progress_plus_one_line():
    """Every install in scripts/setup.sh goes through `step` (its output to a log), and the script keeps -euo pipefail."""
    text = (ROOT / "scripts/setup.sh").read_text()
    assert "set -euo pipefail" in text
    logical = re.sub(r"\\\n\s*", " ", text).splitlines()
    installs = [ln.strip() for ln in logical if re.search(r"\bpip install\b", ln)]
    assert installs and all(ln.startswith("step ") for ln in installs), installs
    to_stdout = [ln for ln in logical if re.match(r"\s*(echo|python -c .*print)", ln) and ">&2" not in ln]
    assert len(to_stdout) == 2, to_stdout  # the progress line in `step` and the final line


def test_step_failure_fails_setup(tmp_path):
    """`step` shows the log's tail and exits nonzero when its command fails (set -e semantics kept)."""
    text = (ROOT / "scripts/setup.sh").read_text()
    fn = text[text.index("step() {") : text.index("\n}\n") + 3]
    script = tmp_path / "s.sh"
    script.write_text(
        f"set -euo pipefail\nLOG={tmp_path}/log\nn=0\ntotal=2\n{fn}\nstep ok true\nstep bad sh -c 'echo boom; exit 3'\necho unreachable\n"
    )
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "unreachable" not in r.stdout
    assert r.stdout.splitlines() == ["setup [1/2] ok", "setup [2/2] bad"] and "boom" in r.stderr


def test_skips_are_summarized_per_reason(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('i', range(5))\n"
        "def test_gpu(i): pytest.skip('needs a CUDA GPU')\n"
        "@pytest.mark.parametrize('m', [1, 16, 128])\n"
        "def test_case(m): pytest.skip(f'backend declines Case(m={m}, k=256): M={m} > 8')\n"
        "def test_ok(): pass\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "tests.skip_summary",
        "-rfEX",
        "-c",
        str(tmp_path / "pytest.ini"),
    ]
    kw = dict(capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    r = subprocess.run([*cmd, str(tmp_path)], **kw)
    assert r.returncode == 0, r.stdout
    assert "SKIPPED [" not in r.stdout
    assert "8 skipped, 2 kinds of reason" in r.stdout
    assert re.search(r"^\s+5  needs a CUDA GPU$", r.stdout, re.M)
    assert re.search(r"^\s+3  backend declines Case\(\.\.\.\): M=N > N$", r.stdout, re.M)
    r = subprocess.run([*cmd, "-rs", str(tmp_path)], **kw)
    assert "SKIPPED [" in r.stdout and "kinds of reason" not in r.stdout  # -rs still lists each
