"""``jquant convert SRC OUT``: convert a checkpoint and save it in canonical form (atomically).

SRC and OUT are checked first (SRC must exist; OUT must not, unless ``--force``), so a mistake is
reported before any conversion work.
"""

from __future__ import annotations

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
    p.set_defaults(func=run)


def run(args) -> int:
    src = check_src(args.src)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    if out.exists() and out.resolve() == src.resolve():
        raise FileExistsError(f"{out} is the source itself; choose another OUT")

    import jquant

    with progress_callback("converting") as cb:
        ckpt = jquant.convert(src, progress=cb)
    with progress_callback("writing") as cb:
        out = jquant.save(ckpt, out, overwrite=args.force, progress=cb)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(
        f"Converted {src} ({format_label(ckpt)}, {len(ckpt.weights)} tensors, {len(ckpt.quantized())} quantized) "
        f"into the canonical folder {out} ({mb(size)})."
    )
    return 0
