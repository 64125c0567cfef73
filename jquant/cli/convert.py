"""``jquant convert SRC OUT``: convert a checkpoint and save it in canonical form (atomically).

SRC and OUT are checked first (SRC must exist; OUT must not, unless ``--force``), so a mistake is
reported before any conversion work. ``--quantize SCHEME`` quantizes a float SRC's linear weights
on the way (`jquant.quantize`); ``--ignore`` / ``--include-embeddings`` / ``--include-lm-head``
choose which.
"""

from __future__ import annotations

import os
from pathlib import Path

from jquant.cli.common import check_src, format_label, mb
from jquant.cli.progress import progress_callback
from jquant.core.errors import FormatError


def register(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert SRC (HF folder or .gguf) into a canonical folder OUT",
        description="Convert SRC into a canonical jquant folder OUT (written under a temporary name, then renamed: "
        "never a partial OUT). Every jquant command and jquant.convert() read OUT directly afterwards.",
    )
    p.add_argument("src", metavar="SRC", help="HF checkpoint folder, .gguf file or canonical folder to convert")
    p.add_argument("out", metavar="OUT", help="folder to create (must not exist, unless --force)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists (default: refuse)")
    p.add_argument(
        "--weights-only",
        action="store_true",
        help="convert the weights without checking them as a Llama-family model (architectures jquant does not run)",
    )
    from jquant.quantize import SCHEMES

    p.add_argument(
        "--quantize",
        metavar="SCHEME",
        choices=sorted(SCHEMES),
        help="quantize a float SRC's linear weights online with SCHEME, one of: "
        + "; ".join(f"{n} ({s.description})" for n, s in sorted(SCHEMES.items())),
    )
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="MODULE",
        help="with --quantize: leave this module unquantized (name, dotted prefix or suffix, or re:REGEX); repeatable",
    )
    p.add_argument("--include-embeddings", action="store_true", help="with --quantize: quantize token embeddings too")
    p.add_argument("--include-lm-head", action="store_true", help="with --quantize: quantize lm_head too")
    p.set_defaults(func=run)


def run(args) -> int:
    src = check_src(args.src)
    out = Path(args.out)
    if os.path.lexists(out) and not args.force:
        what = "exists" if out.exists() else "exists (a dangling symbolic link)"
        raise FileExistsError(f"{out} {what}; pass --force to replace it")
    if out.exists() and out.resolve() == src.resolve():
        raise FileExistsError(f"{out} is the source itself; choose another OUT")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent} (the folder OUT goes into) does not exist")
    if args.quantize is None and (args.ignore or args.include_embeddings or args.include_lm_head):
        raise FormatError("--ignore / --include-embeddings / --include-lm-head go with --quantize SCHEME")

    import jquant

    with progress_callback("converting") as cb:
        ckpt = jquant.convert(src, progress=cb, check_model=False if args.weights_only else None)
    if args.quantize is not None:
        with progress_callback(f"quantizing ({args.quantize})") as cb:
            ckpt = jquant.quantize(
                ckpt,
                args.quantize,
                ignore=args.ignore,
                include_embeddings=args.include_embeddings,
                include_lm_head=args.include_lm_head,
                progress=cb,
            )
    with progress_callback("writing") as cb:
        out = jquant.save(ckpt, out, overwrite=args.force, progress=cb)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    label = format_label(ckpt)
    if args.quantize is not None:
        label = f"{ckpt.metadata['source_format']} quantized online with {args.quantize}"
    print(
        f"Converted {src} ({label}, {len(ckpt.weights)} tensors, {len(ckpt.quantized())} quantized) "
        f"into the canonical folder {out} ({mb(size)})."
    )
    return 0
