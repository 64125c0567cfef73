"""Layering rules from DESIGN.md that a refactor could silently break."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_core_formats_convert_import_without_jax_or_torch():
    code = (
        "import sys\n"
        "sys.modules['jax'] = None; sys.modules['torch'] = None\n"
        "import jquant, jquant.core, jquant.formats, jquant.convert\n"
        "assert sys.modules.get('jax') is None and sys.modules.get('torch') is None\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_no_format_names_outside_formats():
    """No `if format == ...` outside jquant/formats (and convert, which dispatches on files)."""
    import re

    pattern = re.compile(r"""(format|quant_method)\s*==\s*["']""")
    offenders = []
    for sub in ("ops", "nn", "models", "pallas"):
        for p in (ROOT / "jquant" / sub).rglob("*.py") if (ROOT / "jquant" / sub).exists() else ():
            for i, line in enumerate(p.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, offenders
