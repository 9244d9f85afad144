"""The two timed functions of a backend's call: ``excl_prep`` and ``incl_prep``.

From a :class:`~rpa_bench.kernels.base.PreparedCall` and canonical inputs:

- ``state = layout(inputs)`` (untimed: the backend's resident layout, e.g. the KV cache as
  a serving engine keeps it);
- ``incl_prep``: one jitted function ``kernel(*prepare(state))`` named
  ``rpa_bench_incl_prep`` (the paper's "Incl. Prep": Q reshape, K/V merge and the kernel);
- ``excl_prep``: ``args = prepare(state)`` computed once, untimed, then one jitted
  function ``kernel(*args)`` named ``rpa_bench_excl_prep`` ("Excl. Prep": the kernel alone).

Each is lowered and compiled apart (compile time recorded), and its HLO module name is
what the profiler parser attributes device time to. A backend that donates its inputs has
every array argument of both functions donated, so callers pass fresh copies (the timing
protocol does). Interpret-mode kernels are lowered, compiled and called inside the
backend's interpret context.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable
from typing import Any

from rpa_bench.measure.capture import module_name_of
from rpa_bench.measure.timing import Clock, compile_apart

VARIANTS = ("excl_prep", "incl_prep")


@dataclasses.dataclass
class TimedCall:
    variant: str  # excl_prep | incl_prep
    compiled: Any  # call as compiled(*args)
    args: tuple  # the array arguments
    donates: bool
    module_name: str  # HLO module name, for capture attribution
    compile_time_s: float
    context: Callable[[], contextlib.AbstractContextManager]  # wrap every call in it

    def __call__(self, *args: Any) -> Any:
        return self.compiled(*args)

    def fresh_args(self) -> tuple:
        """The arguments, copied when the call donates them."""
        if not self.donates:
            return self.args
        import jax

        return tuple(a.copy() if isinstance(a, jax.Array) else a for a in self.args)


def split_arrays(obj: Any) -> tuple[list, Callable[[list], Any]]:
    """(array leaves, rebuild): a pytree or a plain dataclass (e.g. KernelInputs) by its arrays."""
    import jax

    flat, tree = jax.tree.flatten(obj)
    if len(flat) == 1 and flat[0] is obj and dataclasses.is_dataclass(obj):
        names = [f.name for f in dataclasses.fields(obj) if isinstance(getattr(obj, f.name), jax.Array)]

        def rebuild_dc(leaves: list) -> Any:
            return dataclasses.replace(obj, **dict(zip(names, leaves)))

        return [getattr(obj, n) for n in names], rebuild_dc
    idx = [i for i, x in enumerate(flat) if isinstance(x, jax.Array)]

    def rebuild(leaves: list) -> Any:
        out = list(flat)
        for i, x in zip(idx, leaves):
            out[i] = x
        return jax.tree.unflatten(tree, out)

    return [flat[i] for i in idx], rebuild


def _named(name: str, fn: Callable) -> Callable:
    fn.__name__ = fn.__qualname__ = name
    return fn


def build_timed_calls(
    prepared: Any,
    inputs: Any,
    *,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    clock: Clock = time.perf_counter,
    variants: tuple[str, ...] = VARIANTS,
    compiler_options: dict | None = None,
    program_tag: str | None = None,
) -> dict[str, TimedCall]:
    """Compile the ``variants`` (default both) for ``inputs`` (see the module docstring).

    ``program_tag``: appended to the program names (``rpa_bench_excl_prep__<tag>``) so that
    several kernel entries profiled in one capture session (interleaved) each own their
    programs' executions: device time is attributed by program name."""
    import jax

    donates = bool(prepared.donates)
    with context():
        state = prepared.state(inputs)
        state_leaves, rebuild_state = split_arrays(state)

        def incl(*leaves):
            return prepared.kernel(*prepared.prepare(rebuild_state(list(leaves))))

        # prepare may donate its input (an in-place cache write): give it its own copy
        args = prepared.prepare(rebuild_state([x.copy() for x in state_leaves]) if donates else state)
        if not isinstance(args, tuple):
            raise TypeError(f"prepare() must return a tuple of kernel arguments, got {type(args).__name__}")
        arg_leaves, rebuild_args = split_arrays(args)

        def excl(*leaves):
            return prepared.kernel(*rebuild_args(list(leaves)))

        out = {}
        unknown = sorted(set(variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"variants {unknown} unknown; allowed: {', '.join(VARIANTS)}")
        for variant, fn, leaves in (("excl_prep", excl, arg_leaves), ("incl_prep", incl, state_leaves)):
            if variant not in variants:
                continue
            donate = tuple(range(len(leaves))) if donates else ()
            name = f"rpa_bench_{variant}" + (f"__{program_tag}" if program_tag else "")
            jitted = jax.jit(_named(name, fn), donate_argnums=donate)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
                compiled, seconds = compile_apart(jitted, tuple(leaves), clock=clock,
                                                  compiler_options=compiler_options)
            out[variant] = TimedCall(variant, compiled, tuple(leaves), donates, module_name_of(compiled),
                                     seconds, context)
    return out
