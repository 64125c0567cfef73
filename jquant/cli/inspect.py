"""``jquant inspect SRC``: what a checkpoint holds, per layer, and what it saves over bf16."""

from __future__ import annotations

import re
import sys

import numpy as np

from jquant.cli.common import check_src, format_label, human_bytes


def register(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="show format, per-layer quantization and sizes of a checkpoint",
        description="Show a checkpoint's source format, each quantized tensor's qtype / bits / group / symmetry / "
        "act-order / shape / bytes (layers in numeric order), and the size against bf16. Sizes in MB (10^6 bytes).",
    )
    p.add_argument("src", metavar="SRC", help="HF checkpoint folder, .gguf file or canonical folder")
    p.add_argument("--all", action="store_true", help="list unquantized tensors too (default: quantized ones only)")
    p.add_argument(
        "--kernels",
        action="store_true",
        help="also show, per kind of quantized layer, the qmatmul backend at M = 1 / 16 / 128 / 1024 and why "
        "the ones before it in the routing table declined (default device: the current one)",
    )
    p.add_argument("--device", choices=("cpu", "gpu", "tpu"), help="with --kernels: route for this platform")
    p.add_argument("--sm", help="with --kernels: compute capability of that GPU, e.g. 90")
    p.set_defaults(func=run)


KERNEL_MS = (1, 16, 128, 1024)


def kernel_rows(ckpt, device) -> list[dict]:
    """Per kind of quantized layer (code type, block, zero, activation recipe): the layers, the backend
    at each M in `KERNEL_MS` (``+fq``: after the recipe's fake-quantization) and the reasons at M = 16."""
    import jax
    import jax.numpy as jnp

    from jquant.core.routing import act_kind
    from jquant.ops.qmatmul import select

    kinds: dict[tuple, dict] = {}
    for name, w in ckpt.quantized().items():
        act = ckpt.weights.get(name.rpartition(".")[0] + ".input_quant")
        zero = "none" if w.zero is None else np.dtype(w.zero.dtype).name
        key = (w.qtype.name, w.block if w.block != w.shape else "tensor", zero, act_kind(act), w.k)
        if key in kinds:
            kinds[key]["layers"] += 1
            continue
        routes = {}
        for m in KERNEL_MS:
            r = select(jax.ShapeDtypeStruct((m, w.k), jnp.bfloat16), w, act, device=device)
            routes[m] = r.backend.name + ("+fq" if r.composed else "")
            if m == 16:
                why = list(r.skipped)
        kinds[key] = dict(
            kind=f"{key[0]} K={w.k} block {key[1]} zero {zero} act {key[3]}", layers=1, routes=routes, why=why
        )
    return list(kinds.values())


def layer_rows(ckpt, include_dense: bool = False) -> list[dict]:
    """One row per tensor: name, kind, bits, group, sym, act-order, shape, bytes (no format knowledge)."""
    from jquant.core.qarray import QArray

    rows = []
    for name, w in ckpt.weights.items():
        if isinstance(w, QArray):
            rows.append(
                dict(
                    name=name,
                    qtype=w.qtype.name,
                    bits=w.qtype.bits,
                    group=_granularity(w),
                    sym="asym" if w.zero is not None else "sym",
                    act_order="yes" if w.perm is not None else "",
                    shape=f"{w.n}x{w.k}",
                    bytes=w.nbytes,
                    bf16_bytes=2 * w.n * w.k,
                )
            )
        elif include_dense:
            a = np.asarray(w)
            rows.append(
                dict(
                    name=name,
                    qtype=a.dtype.name,
                    bits=8 * a.dtype.itemsize,
                    group="",
                    sym="",
                    act_order="",
                    shape="x".join(map(str, a.shape)),
                    bytes=a.nbytes,
                    bf16_bytes=2 * a.size,
                )
            )
    return sorted(rows, key=lambda r: natural_key(r["name"]))


def natural_key(name: str) -> tuple:
    """Sort key that orders the numbers inside a name by value: layers 0, 1, 2, ..., 10, not 0, 1, 10, 2."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t)


def _granularity(w) -> str:
    if w.block == w.shape:
        return "tensor"
    if w.block == (1, w.k):
        return "channel"
    return str(w.block[1]) if w.block[0] == 1 else "x".join(map(str, w.block))


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    import jquant

    ckpt = jquant.convert(check_src(args.src))
    console = Console(width=None if sys.stdout.isatty() else 200)  # full tensor names when piped
    arch = (ckpt.config.get("architectures") or [ckpt.config.get("model_type", "?")])[0]
    console.print(
        f"[bold]{args.src}[/]: format [cyan]{format_label(ckpt)}[/], architecture {arch}, {len(ckpt.weights)} tensors"
    )
    rows = layer_rows(ckpt, include_dense=args.all)
    table = Table(show_lines=False)
    for col in ("tensor", "qtype", "bits", "group", "sym", "act-order", "shape", "bytes"):
        table.add_column(col, justify="right" if col in ("bits", "bytes") else "left")
    for r in rows:
        table.add_row(
            r["name"],
            r["qtype"],
            str(r["bits"]),
            r["group"],
            r["sym"],
            r["act_order"],
            r["shape"],
            human_bytes(r["bytes"]),
        )
    console.print(table)
    total = sum(np.asarray(w).nbytes if not isinstance(w, jquant.QArray) else w.nbytes for w in ckpt.weights.values())
    bf16 = sum(2 * (w.n * w.k if isinstance(w, jquant.QArray) else np.asarray(w).size) for w in ckpt.weights.values())
    nq = len(ckpt.quantized())
    console.print(
        f"quantized tensors: {nq}/{len(ckpt.weights)}; total {human_bytes(total)} vs bf16 {human_bytes(bf16)} "
        f"([bold green]{bf16 / max(total, 1):.2f}x[/] smaller)"
    )
    if args.kernels:
        from jquant.cli.kernels import _device

        device = _device(args.device, args.sm)
        kt = Table(title=f"qmatmul backends on {device} (bf16 activations; jquant kernels shows the table)")
        for col in ("layer kind", "layers", *(f"M={m}" for m in KERNEL_MS)):
            kt.add_column(col)
        rows = kernel_rows(ckpt, device)
        for r in rows:
            kt.add_row(r["kind"], str(r["layers"]), *(r["routes"][m] for m in KERNEL_MS))
        console.print(kt)
        for r in rows:
            if r["why"]:
                console.print(f"{r['kind']}, M=16 -> {r['routes'][16]}; before it:")
                for why in r["why"]:
                    console.print(f"  {why}", highlight=False)
    return 0
