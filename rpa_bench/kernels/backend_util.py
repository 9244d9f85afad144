"""Small pieces the Pallas RPA backends share: option parsing and the call context."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from rpa_bench.generations import ALIASES, generation_kind
from rpa_bench.kernels import tpu_target
from rpa_bench.kernels import compat_interpret
from rpa_bench.kernels.compat_interpret import tpu_interpret_mode

BlockSizes = tuple[int, int, int, int]  # (bq_sz, bkv_sz, bq_csz, bkv_csz)


def take_options(kernel: str, options: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with ``options``; unknown option names are refused."""
    given = dict(options or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"kernel={kernel}: option(s) {unknown} unknown; allowed: {', '.join(defaults)}")
    return {**defaults, **given}


def positive_int(kernel: str, field: str, value: Any, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    try:
        out = int(value)
    except (TypeError, ValueError):
        out = 0
    if out < 1 or out != value:
        raise ValueError(f"kernel={kernel}: {field}={value!r} must be a positive integer" + (" or null" if allow_none else ""))
    return out


def block_sizes(kernel: str, field: str, value: Any) -> BlockSizes | None:
    """A 4-tuple ``(bq_sz, bkv_sz, bq_csz, bkv_csz)`` of positive ints, or None."""
    if value is None:
        return None
    items = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else ()
    if len(items) != 4 or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in items):
        raise ValueError(
            f"kernel={kernel}: {field}={value!r} must be [bq_sz, bkv_sz, bq_csz, bkv_csz] "
            "(4 positive integers) or null"
        )
    return tuple(int(x) for x in items)  # type: ignore[return-value]


def device_kind(kernel: str, value: str | None) -> str:
    """The TPU generation block-size defaults are chosen for: given, attached, else TPU7x."""
    kind = value or tpu_target.attached_device_kind() or "TPU7x"
    try:
        return generation_kind(kind)
    except ValueError:
        pass
    try:  # a device kind JAX knows that the table does not list (an attached TPU's own name)
        tpu_target.generation(kind)
        return kind
    except ValueError:
        raise ValueError(f"kernel={kernel}: generation={kind!r} unknown; allowed: {', '.join(ALIASES)}") from None


@contextlib.contextmanager
def call_context(interpret: bool, *, target: str | None = None, overhanging_dmas: bool = False):
    """TPU interpret mode (with the interpreter fixes) when ``interpret``, else nothing.

    In interpret mode the CPU cannot reuse the buffers a kernel donates; that warning is
    silenced there (on TPU it would mean something and is left alone). ``target``: a device
    kind the kernel asks ``pltpu.get_tpu_info()`` about while it runs (off TPU, answered for
    that generation). ``overhanging_dmas``: the kernel copies past the end of its own buffers
    (see :func:`compat_interpret.overhanging_dmas`).
    """
    with contextlib.ExitStack() as stack:
        if target is not None and tpu_target.attached_device_kind() is None:
            stack.enter_context(tpu_target.abstract_tpu(target))
        if not interpret:
            yield
            return
        import dataclasses
        import warnings

        from jax.experimental.pallas import tpu as pltpu

        if overhanging_dmas:
            params = compat_interpret.params_override() or pltpu.InterpretParams()
            stack.enter_context(compat_interpret.interpret_params(
                dataclasses.replace(params, out_of_bounds_reads="uninitialized")))
            stack.enter_context(compat_interpret.overhanging_dmas())
        stack.enter_context(tpu_interpret_mode())
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        yield


def settled(interpret: bool, out):
    """In interpret mode, wait for ``out`` before the interpret context is left.

    JAX dispatches asynchronously: the interpreter's host callbacks may still be running
    after the call returns, and they look the interpreter fixes up at run time. Leaving
    the context first would let them run unpatched. Tracers (a call inside ``jax.jit``)
    are returned as they are: the jitted call's caller runs it inside the context.
    """
    if not interpret:
        return out
    import jax

    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(out)):
        return out
    return jax.block_until_ready(out)


def largest_divisor_at_most(n: int, limit: int, *, multiple_of: int = 1) -> int:
    """Largest ``x <= limit`` with ``n % x == 0`` and ``x % multiple_of == 0`` (>= multiple_of)."""
    for x in range(min(limit, n) // multiple_of * multiple_of, 0, -multiple_of):
        if n % x == 0:
            return x
    return multiple_of
