"""How often an fp8 ``tl.dot`` promotes its tensor-core partial sums to the f32 accumulator.

On Hopper, ``wgmma`` with fp8 operands accumulates in reduced precision (DeepSeek-V3 measured about
14 mantissa bits on H800). Triton's ``tt.dot`` carries ``maxNumImpreciseAcc``: the number of K
elements summed that way before the partials are added to a full f32 accumulator. Triton's own
Python frontend defaults it to 2**30 on sm_90 (never promote: fastest), but Pallas' Triton
lowering builds ``tt.dot`` without the attribute, i.e. 0: promote after *every* k=32 ``wgmma``.
Measured on an H100 (bench/results/nvidia_h100/w8a8_pallas_acc.md): with 0 the fp8 kernel ran the
70b_gate_up GEMM at M = 1024 at 411 TFLOP/s against 1084 TOP/s for the same kernel on int8 codes.

Pallas exposes no parameter for it, so `install` wraps the Triton dialect's ``dot`` builder (used
only by the Pallas Triton lowering) and sets the attribute on fp8 dots inside the kernels that
`register` names, and on nothing else: other Pallas kernels in the process keep Pallas' behaviour.
The kernel is found from the ``tt.func`` that encloses the op being built. Used by
`jquant.pallas.w8a8_triton` (``W8A8Config.imprecise_acc``).
"""

from __future__ import annotations

import threading

__all__ = ["applied", "install", "register"]

_BY_KERNEL: dict[str, int] = {}
_APPLIED: dict[str, int] = {}  # kernel name -> fp8 dots built with the setting (for tests)
_LOCK = threading.Lock()
_INSTALLED = False


def register(kernel_name: str, imprecise_acc: int) -> None:
    """fp8 dots in the Pallas kernel called ``kernel_name`` promote every ``imprecise_acc`` K elements
    (0: after every MMA instruction, Pallas' default; 2**30: never, Triton's sm_90 default)."""
    if imprecise_acc < 0:
        raise ValueError(f"imprecise_acc={imprecise_acc} must be >= 0")
    install()
    _BY_KERNEL[kernel_name] = int(imprecise_acc)


def applied(kernel_name: str) -> int:
    """How many fp8 dots of ``kernel_name`` were built with its setting so far (lowering counts)."""
    return _APPLIED.get(kernel_name, 0)


def _enclosing_kernel() -> str | None:
    """Name of the ``tt.func`` around the current MLIR insertion point (None outside one)."""
    from jax._src.lib.mlir import ir

    try:
        op = ir.InsertionPoint.current.block.owner
    except ValueError:  # no insertion point
        return None
    while op is not None:
        if op.name == "tt.func":
            return ir.StringAttr(op.attributes["sym_name"]).value
        op = op.parent
    return None


def install() -> None:
    """Wraps ``jax._src.lib.triton.dialect.dot`` once (idempotent)."""
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        from jax._src.lib.mlir import ir
        from jax._src.lib.triton import dialect

        build_dot = dialect.dot

        def dot(a, b, c, *, max_num_imprecise_acc=None, **kw):
            if max_num_imprecise_acc is None and "f8E" in str(ir.RankedTensorType(a.type).element_type):
                kernel = _enclosing_kernel() or ""
                max_num_imprecise_acc = _BY_KERNEL.get(kernel)
                if max_num_imprecise_acc is not None:
                    _APPLIED[kernel] = _APPLIED.get(kernel, 0) + 1
            return build_dot(a, b, c, max_num_imprecise_acc=max_num_imprecise_acc, **kw)

        dot.__wrapped__ = build_dot
        dialect.dot = dot
        _INSTALLED = True
