"""Kernel routing as data: what each backend can run, one check, one ordered table per platform.

Shared by the JAX dispatcher (`jquant.ops.qmatmul`) and the Torch bridge (`torch_bridge.backend`),
so it imports numpy only. A `Backend` declares what it runs in one `Capabilities` record (plus
small hooks for what cannot be data: a tile edge, a driver, a library that did not build); `check`
compares a `Call` (the static facts of one ``qmatmul(x, w, act)`` on a `Device`, read from shapes
and static fields, so tracers do) with it and gives the first reason it does not fit. A `Registry`
holds the backends and one ordered tuple of names per platform: the table *is* the order.
`Registry.route` walks it: forced names first (``JQUANT_KERNELS`` or an argument; a decline is
then an error, never a silent fallback), else the table minus ``JQUANT_DISABLED_KERNELS``.
`Registry.plan` routes a layer whose M is not known yet (the Torch bridge prepares per layer): the
backends that together take every M, of which `by_m` picks one per call.

Activation recipes (W8A8 / FP8 / FP4 inputs) are a field of the call: a backend lists the recipes
it fuses in ``Capabilities.act``; any backend that takes the weight-only call also takes a recipe
it does not fuse when the caller applies the recipe's exact fake-quantization first
(`Registry.route` reports that as ``composed``), so a W4A4 layer runs on a weight-only kernel
after one XLA pass rather than on the f32 reference.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from jquant.core.qtypes import QType

__all__ = [
    "ANY",
    "Backend",
    "Call",
    "Capabilities",
    "Device",
    "Registry",
    "Route",
    "act_kind",
    "by_m",
    "check",
    "code_class",
    "env_names",
]

ANY = None  # a `Capabilities` field set to ANY accepts every value


def env_names(var: str, prefix: str = "") -> list[str]:
    """Comma-separated backend names in environment variable ``var`` (those starting with ``prefix``)."""
    return [s.strip() for s in os.environ.get(var, "").split(",") if s.strip() and s.strip().startswith(prefix)]


@dataclasses.dataclass(frozen=True)
class Device:
    """Where a call runs.

    Attributes:
        platform: JAX platform (``"cpu"``, ``"gpu"``, ``"tpu"``) or torch device type (``"cuda"``,
            ``"cpu"``, ``"xpu"``, ``"hpu"``, ...).
        cc: NVIDIA compute capability ``(major, minor)``, None elsewhere.
        num_sms: streaming multiprocessors (or compute units), None when unknown.
    """

    platform: str
    cc: tuple[int, int] | None = None
    num_sms: int | None = None

    def __str__(self) -> str:
        return self.platform + (f" sm_{self.cc[0]}{self.cc[1]}" if self.cc else "")


def code_class(q: QType) -> str:
    """The family a kernel reads a code type as: ``uint<c>`` (unsigned ints in c-bit containers, any
    bias: uint4, uint4b8, uint3b4 all read as ``uint4``), ``int8`` (two's complement), else the
    qtype's own name (``fp8_e4m3``, ``fp4_e2m1``, ``nf4``, ``iq4nl``, ...)."""
    if q.kind == "int":
        return "int8" if q.signed else f"uint{q.container_bits}"
    return q.name


def act_kind(act: Any) -> str:
    """A short name of an activation recipe (`jquant.core.activation.ActQuant` or None).

    ``"none"`` for weight-only calls; ``"fp8:token"``, ``"fp8:group<G>"``, ``"fp8:static"``,
    ``"int8:token"``, ``"int8:static"`` for the recipes W8A8 kernels fuse (symmetric, plain
    scales); ``"other:<qtype>"`` for everything else (asymmetric int8, NVFP4 / MX scales).
    """
    if act is None:
        return "none"
    name = {"fp8_e4m3": "fp8", "int8": "int8"}.get(act.qtype.name)
    if name is None or not act.symmetric or act.scale_dtype is not None:
        return f"other:{act.qtype.name}"
    if not act.dynamic:
        return f"{name}:static"
    if act.granularity == "group":
        return f"{name}:group{act.group_size}"
    return f"{name}:{act.granularity}"


def _dtype_name(dt) -> str:
    """numpy / JAX / torch dtype -> its name (``"bfloat16"``, ``"float8_e4m3fn"``)."""
    if isinstance(dt, str):
        return dt
    try:
        return np.dtype(dt).name
    except TypeError:  # a torch dtype: "torch.float16"
        return str(dt).rpartition(".")[2]


@dataclasses.dataclass(frozen=True)
class Call:
    """The static facts of ``qmatmul(x, w, act)`` that routing reads.

    Attributes:
        m: rows of x (product of its leading dims); None when selection happens per layer (Torch).
        x_k: last dim of x (None with ``m``).
        x_dtype: activation dtype name.
        qtype: the weight's code type; ``codes`` its `code_class`.
        n, k: logical weight shape.
        block: scale block (bn, bk) with bk clipped to K.
        scale_dtype, zero: scale dtype name; ``"none"`` or the zero-point dtype name.
        scale2, perm: whether the weight has a second scale / an act-order permutation.
        act: `act_kind` of the activation recipe.
        device: where it runs.
    """

    m: int | None
    x_k: int | None
    x_dtype: str
    qtype: QType
    n: int
    k: int
    block: tuple[int, int]
    scale_dtype: str
    zero: str
    scale2: bool
    perm: bool
    act: str
    device: Device

    @property
    def codes(self) -> str:
        return code_class(self.qtype)

    @property
    def group(self) -> int:
        """K columns per scale (K for per-channel / per-tensor)."""
        return self.block[1]

    @classmethod
    def of(cls, x_shape, x_dtype, w, device: Device, act: Any = None) -> Call:
        """The call for activations of ``x_shape`` / ``x_dtype`` (None, None: per layer) and `QArray` ``w``."""
        n, k = w.shape
        return cls(
            m=None if x_shape is None else math.prod(x_shape[:-1]),
            x_k=None if x_shape is None else x_shape[-1],
            x_dtype=_dtype_name(x_dtype),
            qtype=w.qtype,
            n=n,
            k=k,
            block=(w.block[0], min(w.block[1], k)),
            scale_dtype=_dtype_name(w.scale.dtype),
            zero="none" if w.zero is None else _dtype_name(w.zero.dtype),
            scale2=w.scale2 is not None,
            perm=w.perm is not None,
            act=act if isinstance(act, str) else act_kind(act),
            device=device,
        )


_FLOAT_SCALES = frozenset({"float32", "float16", "bfloat16"})
_HALF_ACTS = frozenset({"bfloat16", "float16"})


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What one backend runs. Each field restricts one fact of the `Call`; `ANY` (None) accepts all.

    Attributes:
        platforms: device platforms (JAX platform names or torch device types).
        codes: `code_class` names of the weight codes.
        zeros: ``"none"`` and/or zero-point dtype names (``"uint8"`` integer codes, ``"float16"``...).
        scale_dtypes: scale dtype names.
        scale2: whether a second per-tensor scale is read.
        row_blocks: scale block heights bn (1: group / per-channel; 128: 2-D blocks).
        group_multiple: a group narrower than K must be a multiple of this.
        group_pow2: a group narrower than K must be a power of two.
        min_group: smallest group narrower than K, per container width ``((bits, min), ...)``.
        group_divides_k: the group must divide K.
        channel_only: scales must be constant along K (per-channel / per-tensor).
        k_multiple: K must be a multiple of this.
        act_dtypes: activation dtype names.
        act: activation recipes fused in the kernel (`act_kind` names; ``"none"`` = weight-only; a
            trailing ``*`` matches any suffix, e.g. ``"fp8:group*"``).
        m_min, m_max: the range of M dispatched here (the op may take more; this is routing).
        cc_min, cc_max: compute capability bounds (both inclusive), NVIDIA only.
    """

    platforms: frozenset[str] | None
    codes: frozenset[str] | None = ANY
    zeros: frozenset[str] | None = frozenset({"none", "uint8"})
    scale_dtypes: frozenset[str] | None = _FLOAT_SCALES
    scale2: bool = False
    row_blocks: frozenset[int] | None = frozenset({1})
    group_multiple: int = 1
    group_pow2: bool = False
    min_group: tuple[tuple[int, int], ...] = ()
    group_divides_k: bool = False
    channel_only: bool = False
    k_multiple: int = 1
    act_dtypes: frozenset[str] | None = _HALF_ACTS
    act: frozenset[str] | None = frozenset({"none"})
    m_min: int = 1
    m_max: int | None = None
    cc_min: tuple[int, int] | None = None
    cc_max: tuple[int, int] | None = None

    @classmethod
    def any_weight(cls, platforms: frozenset[str] | None, **kw) -> Capabilities:
        """A record that reads every weight layout (zeros, scale dtypes and blocks, ``scale2``: `ANY`);
        ``kw`` sets the other fields (``codes``, activations, M range) or narrows these."""
        return cls(platforms, **{"zeros": ANY, "scale_dtypes": ANY, "scale2": True, "row_blocks": ANY, **kw})

    def describe(self) -> dict[str, str]:
        """The record as short strings, for tables (`jquant kernels`)."""

        def s(v):
            return "any" if v is None else ",".join(sorted(map(str, v)))

        lo, hi = _cc(self.cc_min), _cc(self.cc_max)
        act = "any" if self.act is None else ("-" if self.act == {"none"} else _recipes(self.act - {"none"}))
        return {"codes": s(self.codes), "act": act, "M": self.m_range, "cc": lo if lo == hi else f"{lo}..{hi}"}

    @property
    def m_range(self) -> str:
        """The M range as tables show it: ``"1..127"``, ``"128.."``."""
        return f"{self.m_min}..{'' if self.m_max is None else self.m_max}"

    def takes_m(self, m: int) -> bool:
        """Whether calls of ``m`` rows are routed here (the M fields of `check`)."""
        return self.m_min <= m and (self.m_max is None or m <= self.m_max)

    def operands(self) -> Capabilities:
        """This record without its routing-only fields (M range, platform, compute capability): what
        the op itself accepts when called directly (tests, benchmarks, lowering on a CPU host)."""
        return dataclasses.replace(self, platforms=None, m_min=1, m_max=None, cc_min=None, cc_max=None)


def _recipes(acts: frozenset[str]) -> str:
    """``{"fp8:token", "int8:token", "fp8:group*", ...}`` -> ``"fp8,int8: group*/token"`` when the kinds share modes."""
    by_kind: dict[str, set[str]] = {}
    for a in acts:
        kind, _, mode = a.partition(":")
        by_kind.setdefault(kind, set()).add(mode)
    modes = {frozenset(v) for v in by_kind.values()}
    if len(modes) == 1:
        return f"{','.join(sorted(by_kind))}: {'/'.join(sorted(next(iter(modes))))}"
    return ",".join(sorted(acts))


def _cc(v: tuple[int, int] | None) -> str:
    return "" if v is None else f"{v[0]}.{v[1]}"


def check(caps: Capabilities, call: Call) -> str:
    """Whether ``caps`` covers ``call``: "" if so, else the first reason it does not.

    The act recipe is checked last, so that a caller can tell a weight the backend cannot read from
    a recipe it does not fuse (`Registry.route` composes the latter with a fake-quantization).
    """
    dev = call.device
    if caps.platforms is not None and dev.platform not in caps.platforms:
        return f"runs on {'/'.join(sorted(caps.platforms))}, not {dev.platform}"
    if caps.cc_min is not None or caps.cc_max is not None:
        if dev.cc is None:
            return "needs an NVIDIA compute capability, the device has none"
        if caps.cc_min is not None and dev.cc < caps.cc_min:
            return f"needs compute capability >= {_cc(caps.cc_min)}, the device has {_cc(dev.cc)}"
        if caps.cc_max is not None and dev.cc > caps.cc_max:
            return f"needs compute capability <= {_cc(caps.cc_max)}, the device has {_cc(dev.cc)}"
    if caps.codes is not None and call.codes not in caps.codes:
        return f"qtype {call.qtype.name} ({call.codes} codes): the kernel reads {'/'.join(sorted(caps.codes))}"
    if call.x_k is not None and call.x_k != call.k:
        return f"x has K={call.x_k}, weight has K={call.k}"
    if caps.act_dtypes is not None and call.x_dtype not in caps.act_dtypes:
        return f"activation dtype {call.x_dtype} (kernel takes {'/'.join(sorted(caps.act_dtypes))})"
    if caps.row_blocks is not None and call.block[0] not in caps.row_blocks:
        return f"block {call.block}: scale rows of {'/'.join(map(str, sorted(caps.row_blocks)))} weight rows only"
    if call.k % caps.k_multiple:
        return f"K={call.k} is not a multiple of {caps.k_multiple}"
    g, k = call.group, call.k
    if g < k:
        if g % caps.group_multiple:
            return f"group size {g} is not a multiple of {caps.group_multiple}"
        if caps.group_pow2 and g & (g - 1):
            return f"group size {g} is not a power of two"
        low = dict(caps.min_group).get(call.qtype.container_bits, 1)
        if g < low:
            return f"group size {g} is below {low} for {call.qtype.container_bits}-bit codes"
    if caps.group_divides_k and k % g:
        return f"group size {g} does not divide K={k}"
    if caps.channel_only and g < k:
        return f"scale block {call.block} is not per-channel / per-tensor"
    if call.scale2 and not caps.scale2:
        return "scale2 (second-level scale) not supported"
    if caps.scale_dtypes is not None and call.scale_dtype not in caps.scale_dtypes:
        return f"scale dtype {call.scale_dtype} (kernel reads {'/'.join(sorted(caps.scale_dtypes))})"
    if caps.zeros is not None and call.zero not in caps.zeros:
        return f"zero dtype {call.zero} (kernel reads {'/'.join(sorted(caps.zeros))})"
    if call.m is not None:
        if call.m == 0:
            return "empty activations"
        if not caps.takes_m(call.m):
            return f"M={call.m} outside {caps.m_range} (this kernel's range)"
    if caps.act is not None and not any(
        call.act == a or (a.endswith("*") and call.act.startswith(a[:-1])) for a in caps.act
    ):
        return f"activation recipe {call.act} is not fused here"
    return ""


class Backend(abc.ABC):
    """One implementation of ``qmatmul``: declares `Capabilities`, computes the function or declines.

    Subclasses set ``name`` and ``caps``; the JAX side adds ``__call__(x, w, act=None)``, the Torch
    side ``prepare`` / ``run``.
    """

    name: ClassVar[str]
    caps: ClassVar[Capabilities]

    def why_not_more(self, call: Call) -> str:
        """Checks that cannot be data (tile edges, dtype pairs); "" when there is nothing against."""
        return ""

    def unavailable(self, call: Call | None) -> str:
        """Why it cannot run on this machine now (library not built, no driver); "" when it can.
        ``call`` is None when asked for no call in particular (``jquant kernels``)."""
        return ""

    def reason(self, call: Call, *, runtime: bool = True) -> str:
        """ "" when this backend takes ``call``, else why not (``runtime=False``: by its declaration only)."""
        return check(self.caps, call) or self.why_not_more(call) or (self.unavailable(call) if runtime else "")


@dataclasses.dataclass(frozen=True)
class Route:
    """The outcome of `Registry.route`.

    Attributes:
        backend: the backend that runs the call, or None (the caller falls back or raises).
        composed: the recipe is applied by the caller's fake-quantization, then the weight-only
            backend runs (the backend does not fuse this activation recipe).
        skipped: ``"name: reason"`` for every backend tried before it.
    """

    backend: Backend | None
    composed: bool
    skipped: tuple[str, ...]


class Registry:
    """Backends by name, and the ordered table of names per platform that routing walks.

    Args:
        what: the kind of backend, for messages (``"qmatmul"``, ``"torch"``).
        tables: platform -> backend names in the order they are tried; ``"*"`` serves platforms
            without a table of their own.
        env_prefix: only names in the env vars with this prefix concern this registry (the Torch
            bridge's are ``torch_``; the JAX side reads the rest).
    """

    def __init__(self, what: str, tables: Mapping[str, tuple[str, ...]], env_prefix: str = ""):
        self.what = what
        self.tables = dict(tables)
        self.env_prefix = env_prefix
        self.backends: dict[str, Backend] = {}

    def register(self, backend: Backend) -> Backend:
        """Adds ``backend`` (an instance); a second registration under a name replaces it."""
        self.backends[backend.name] = backend
        return backend

    def table(self, platform: str) -> tuple[str, ...]:
        return self.tables.get(platform, self.tables.get("*", ()))

    def ordered(self, platform: str) -> list[Backend]:
        """The registered backends of ``platform``'s table, in table order."""
        return [self.backends[n] for n in self.table(platform) if n in self.backends]

    def route(
        self,
        call: Call,
        *,
        forced: Iterable[str] | None = None,
        disabled: Iterable[str] | None = None,
        runtime: bool = True,
        compose: bool = True,
    ) -> Route:
        """The first backend that takes ``call``, and why each one before it did not.

        Args:
            forced: names that must take the call (one of them, in order); default ``JQUANT_KERNELS``.
            disabled: names skipped in the table walk; default ``JQUANT_DISABLED_KERNELS``.
            runtime: also ask each backend whether it can run on this machine (`Backend.unavailable`);
                False routes by declarations alone (tests, `jquant kernels --device`).
            compose: let a weight-only backend take a recipe it does not fuse (the caller then
                fake-quantizes the activations first).

        Raises:
            ValueError: none of the forced backends exists or takes the call.
        """
        return next(self._walk(call, forced=forced, disabled=disabled, runtime=runtime, compose=compose))

    def plan(self, call: Call, **kw) -> tuple[Route, ...]:
        """`route` (same arguments) of a layer whose M is not known yet (``call.m`` None).

        The routes, in table order, whose backends together take every M: each takes some M that
        none before it does. A call then runs on `by_m` of them. The last route has no backend
        when some M is left that no backend takes (its ``skipped`` says why). A forced backend is
        the whole plan: it takes every M (its range is routing; the op computes any M).
        """
        routes: list[Route] = []
        for r in self._walk(call, **kw):
            if r.backend is None or _leaves_some_m([p.backend.caps for p in routes], r.backend.caps):
                routes.append(r)
            if r.backend is None or not _leaves_some_m([p.backend.caps for p in routes]):
                break
        return tuple(routes)

    def _walk(self, call, *, forced=None, disabled=None, runtime=True, compose=True) -> Iterator[Route]:
        """`route`'s walk: each backend that takes ``call``, in order, then a `Route` without one
        (with every reason); forced names: the first that takes it, else ValueError."""
        forced = list(env_names("JQUANT_KERNELS", self.env_prefix) if forced is None else forced)
        disabled = set(env_names("JQUANT_DISABLED_KERNELS", self.env_prefix) if disabled is None else disabled)
        skipped: list[str] = []
        for name in forced or self.table(call.device.platform):
            b = self.backends.get(name)
            if b is None:
                why = f"unknown backend (known: {sorted(self.backends)})" if forced else "not loaded"
            elif name in disabled and not forced:
                why = "disabled by JQUANT_DISABLED_KERNELS"
            else:
                why = b.reason(call, runtime=runtime)
                composed = bool(why) and compose and call.act != "none"
                if composed:  # does it take the weight-only call (after the recipe's fake-quantization)?
                    composed = not b.reason(dataclasses.replace(call, act="none"), runtime=runtime)
                if not why or composed:
                    yield Route(b, composed, tuple(skipped))
                    if forced:
                        return
                    continue
            skipped.append(f"{name}: {why}")
        if forced:
            raise ValueError(f"requested {self.what} backend(s) {forced} cannot run {_describe(call)}: {skipped}")
        yield Route(None, False, tuple(skipped))


def by_m(plan: Sequence[Any], m: int) -> Any:
    """The entry of a `Registry.plan` (anything with a ``.backend``) that runs a call of ``m`` rows:
    the first whose backend takes M (`Capabilities.takes_m`), else the last (a forced backend; M = 0)."""
    for p in plan:  # a loop, not next(genexpr): this runs on every Torch call
        if p.backend.caps.takes_m(m):
            return p
    return plan[-1]


def _leaves_some_m(taken: list[Capabilities], within: Capabilities | None = None) -> bool:
    """Whether some M (in ``within``'s range, default every M >= 1) is taken by none of ``taken``."""
    m, hi = (within.m_min, within.m_max) if within else (1, None)
    while hi is None or m <= hi:
        c = next((c for c in taken if c.takes_m(m)), None)
        if c is None:
            return True
        if c.m_max is None:
            return False
        m = c.m_max + 1
    return False


def _describe(call: Call) -> str:
    m = "" if call.m is None else f"M={call.m} "
    return (
        f"{m}{call.x_dtype} x {call.qtype.name} [{call.n}, {call.k}] block {call.block} "
        f"(act {call.act}) on {call.device}"
    )
