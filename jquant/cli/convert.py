"""``jquant convert SRC OUT``: convert a checkpoint and save it in canonical form (atomically).

SRC and OUT are checked first (SRC must exist; OUT must not, unless ``--force``), so a mistake is
reported before any conversion work.
"""

from __future__ import annotations

import os
from pathlib import Path

from jquant.cli.common import check_src, format_label, mb
from jquant.cli.progress import progress_callback


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

    import jquant

    with progress_callback("converting") as cb:
        ckpt = jquant.convert(src, progress=cb, check_model=False if args.weights_only else None)
    with progress_callback("writing") as cb:
        out = jquant.save(ckpt, out, overwrite=args.force, progress=cb)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(
        f"Converted {src} ({format_label(ckpt)}, {len(ckpt.weights)} tensors, {len(ckpt.quantized())} quantized) "
        f"into the canonical folder {out} ({mb(size)})."
    )
    return 0
