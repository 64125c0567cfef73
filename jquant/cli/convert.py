"""``jquant convert SRC OUT``: convert a checkpoint and save it in canonical form (atomically)."""

from __future__ import annotations

from jquant.cli.progress import progress_callback


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert SRC (HF folder or .gguf) into a canonical folder OUT")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def run(args) -> int:
    import jquant

    with progress_callback("converting") as cb:
        ckpt = jquant.convert(args.src, progress=cb)
    with progress_callback("writing") as cb:
        out = jquant.save(ckpt, args.out, overwrite=args.force, progress=cb)
    print(f"{ckpt!r} -> {out}")
    return 0
