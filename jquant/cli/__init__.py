"""The ``jquant`` command line: thin wrappers over the library, one module per subcommand.

Each module in `COMMANDS` defines ``register(subparsers)`` (adds its parser and sets
``func=run``) and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from jquant.core.errors import FormatError

COMMANDS = ("convert", "inspect", "generate", "parity", "parity_torch", "kernels")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jquant", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"jquant.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FormatError, FileExistsError) as e:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
