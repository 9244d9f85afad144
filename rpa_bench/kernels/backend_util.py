"""Small pieces the Pallas RPA backends share: option parsing, the call context, loading from
tpu-inference by module, the attention arguments every RPA takes, and the call of a kernel with
v3's signature (new K/V in, cache updated in place and returned)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from rpa_bench.generations import ALIASES, generation_kind
from rpa_bench.kernels import compat_interpret, loader, tpu_target
from rpa_bench.kernels.base import KernelOutput, PreparedCall
from rpa_bench.kernels.compat_interpret import tpu_interpret_mode
from rpa_bench.workloads.materialize import KernelInputs

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


def sized_tuple(kernel: str, field: str, value: Any, fields: Sequence[str]) -> tuple[int, ...] | None:
    """``len(fields)`` positive ints (a list or tuple), or None; refused naming the fields."""
    if value is None:
        return None
    items = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else ()
    if len(items) != len(fields) or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in items):
        raise ValueError(f"kernel={kernel}: {field}={value!r} must be [{', '.join(fields)}] "
                         f"({len(fields)} positive integers) or null")
    return tuple(int(x) for x in items)


def block_sizes(kernel: str, field: str, value: Any) -> BlockSizes | None:
    """A 4-tuple ``(bq_sz, bkv_sz, bq_csz, bkv_csz)`` of positive ints, or None."""
    return sized_tuple(kernel, field, value, ("bq_sz", "bkv_sz", "bq_csz", "bkv_csz"))  # type: ignore[return-value]


def attention_kwargs(model, attn) -> dict[str, Any]:
    """The attention arguments every RPA kernel takes, as Python scalars (static under jit)."""
    return dict(
        sm_scale=float(attn.scale(model.head_dim)),
        sliding_window=attn.sliding_window,
        soft_cap=None if attn.soft_cap is None else float(attn.soft_cap),
        k_scale=None if attn.k_scale is None else float(attn.k_scale),
        v_scale=None if attn.v_scale is None else float(attn.v_scale),
    )


class UpstreamKernel:
    """``module`` / ``availability`` / ``provenance`` of a kernel loaded from tpu-inference.

    Subclasses set ``name``, ``upstream`` (a short name of ``loader.KERNEL_MODULES`` or a module
    path inside the package) and ``missing`` (what to call it when a revision lacks it), and
    keep ``self.source`` (installed release, checkout path, or path@ref).
    """

    name: str
    upstream: str
    missing: str = ""
    source: str | None = None

    def module(self):
        return loader.kernel_module(self.upstream, self.source)

    def availability(self) -> tuple[bool, str]:
        ok, why = loader.availability(self.source)
        if not ok or self.upstream in loader.KERNEL_MODULES:  # every release has those: not imported here
            return ok, why
        try:
            self.module()
        except (ImportError, AttributeError) as e:
            return False, f"this tpu-inference has no {self.missing or self.upstream} ({e})"
        return True, why

    def provenance(self):
        return loader.load_source(self.source).provenance(self.upstream, self.name)


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
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(out)):
        return out
    return jax.block_until_ready(out)


def largest_divisor_at_most(n: int, limit: int, *, multiple_of: int = 1) -> int:
    """Largest ``x <= limit`` with ``n % x == 0`` and ``x % multiple_of == 0`` (>= multiple_of)."""
    for x in range(min(limit, n) // multiple_of * multiple_of, 0, -multiple_of):
        if n % x == 0:
            return x
    return multiple_of


def v3_signature_call(rpa, static: Mapping[str, Any], *, merge, split, meta: dict, interpret: bool,
                      target: str | None = None, overhanging_dmas: bool = False, sinks: bool = False):
    """The :class:`PreparedCall` of a kernel called as v3 is: ``rpa(q, k, v, kv_cache, kv_lens,
    page_indices (flat), cu_q_lens, distribution[, attention_sink], **static)`` returning
    ``(out, kv_cache)``, the cache donated and updated in place. ``merge(k_cache, v_cache)`` /
    ``split(kv_cache)``: canonical caches to the kernel's layout and back (jitted here)."""
    merge, split = jax.jit(merge), jax.jit(split)

    def layout(inputs: KernelInputs) -> tuple:
        args = (inputs.queries, inputs.new_keys, inputs.new_values, merge(inputs.k_cache, inputs.v_cache),
                inputs.kv_lens, inputs.page_indices.reshape(-1), inputs.cu_q_lens, inputs.distribution)
        return (*args, inputs.attention_sink) if sinks else args

    def prepare(state) -> tuple:
        return layout(state) if isinstance(state, KernelInputs) else tuple(state)

    def kernel(*args):
        with call_context(interpret, target=target, overhanging_dmas=overhanging_dmas):
            return settled(interpret, rpa(*args, **static))

    def finish(raw) -> KernelOutput:
        out, kv_cache = raw
        k_cache, v_cache = split(kv_cache)
        return KernelOutput(output=out, k_cache=k_cache, v_cache=v_cache)

    return PreparedCall(prepare=prepare, kernel=kernel, finish=finish, donates=True, meta=meta, layout=layout)
