"""The ``jquant`` command line: thin wrappers over the library, one module per subcommand.

Each module in `COMMANDS` defines ``register(subparsers)`` (adds its parser and sets
``func=run``) and ``run(args) -> int``. Every subcommand checks its paths before it imports JAX
or does any work, and reports errors as one line (exit status 2).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from jquant.core.errors import FormatError

COMMANDS = ("convert", "inspect", "generate", "parity", "parity_torch", "kernels", "bench")

# One example per subcommand, shown by ``jquant --help`` (tests/cli checks that each one is there).
EXAMPLES = {
    "convert": ("jquant convert Llama-2-7B-GPTQ/ out/", "canonical folder; --force replaces an existing OUT"),
    "inspect": ("jquant inspect model.gguf", "source format, per-layer bits / group / sizes"),
    "generate": ('jquant generate --prompt "What is the capital of France?"', "default: embedded SmolLM2"),
    "parity": ("jquant parity model.gguf", "logits vs transformers, ends with PASS / FAIL"),
    "parity-torch": ("jquant parity-torch out/", "spec vs Torch bridge vs JAX model"),
    "kernels": ("jquant kernels --device gpu --sm 90", "the qmatmul routing table of a device"),
    "bench": ("jquant bench decode", "run a benchmark, print its table, write results"),
}
DESCRIPTION = (
    "jquant: run the quantized LLM checkpoints of the PyTorch ecosystem (GPTQ, AWQ, GGUF,\n"
    "compressed-tensors, FP8, ...) in JAX/Flax without dequantizing them. Thin wrappers over the library."
)


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to the help of options that have a default.

    Options whose default is None or False (flags) or whose help already names the default are
    left as they are.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if (
            "default" in text
            or d is None
            or d is False
            or d is argparse.SUPPRESS
            or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))
        ):
            return text
        return f"{text} (default: %(default)s)"


class _MainFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """`HelpFormatter` that keeps the epilog's example lines as written."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *a, **kw):
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*a, **kw)


def build_parser() -> argparse.ArgumentParser:
    width = max(len(cmd) for cmd, _ in EXAMPLES.values())
    examples = (EXAMPLES[c.replace("_", "-")] for c in COMMANDS)
    epilog = "examples:\n" + "\n".join(f"  {cmd:<{width}}  # {what}" for cmd, what in examples)
    epilog += "\n\n`jquant COMMAND --help` describes each command's options and their defaults."
    parser = _Parser(prog="jquant", description=DESCRIPTION, epilog=epilog, formatter_class=_MainFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"jquant.cli.{name}").register(sub)
    return parser


def _one_line(msg: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    # one line, never wrapped (soft_wrap), whatever the terminal width
    text = " ".join(str(msg).split("\n"))
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(text)}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand; every failure is one line on stderr.

    Exit status: 0 success; 2 a jquant error (bad input: `FormatError`; an existing OUT; a file
    that cannot be read or written: `OSError`, e.g. no space left); 130 Ctrl-C; 1 an unexpected
    exception (a bug: the line asks for a report; ``JQUANT_DEBUG=1`` shows the traceback instead).
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FormatError, OSError) as e:  # FileExistsError / FileNotFoundError / ENOSPC are OSErrors
        _one_line(str(e))
        return 2
    except KeyboardInterrupt:
        _one_line("interrupted (Ctrl-C); nothing was written")
        return 130
    except Exception as e:
        if os.environ.get("JQUANT_DEBUG"):
            raise
        _one_line(
            f"unexpected {type(e).__name__}: {str(e)[:300]} -- this is a bug in jquant; please report it "
            "with the command line and the traceback that JQUANT_DEBUG=1 shows"
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
