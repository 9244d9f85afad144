"""Any registered kernel backend run on a ``data`` x ``model`` mesh with ``jax.shard_map``.

:func:`build_sharded` wraps a backend's own ``layout`` / ``prepare`` / ``kernel`` /
``finish`` (see kernels/base.py) so that one program, traced once with the common
per-device shapes of a :class:`~rpa_bench.parallel.layout.ShardPlan`, runs on every
device. What the backend's stages pass between them (its own cache layout, its own
argument tuple, its raw result) stays per device: each array leaf becomes a global
``[data, model, ...local]`` array sharded ``P("data", "model")``, and non-array parts
(static knobs, dataclass shells) are kept aside at trace time. So every backend works
unchanged, and the timed ``kernel`` stage is exactly the backend's kernel on each device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from rpa_bench.kernels.backend_util import call_context
from rpa_bench.kernels.base import KernelOutput, PreparedCall
from rpa_bench.parallel.layout import ARRAY_FIELDS, FIELD_SPECS, ShardPlan, ShardedInputs
from rpa_bench.parallel.mesh import DATA, MODEL
from rpa_bench.workloads.materialize import KernelInputs
from rpa_bench.workloads.model import AttentionSpec

PER_DEVICE = P(DATA, MODEL)  # backend-private arrays: [data, model, ...local]

Rebuild = Callable[[Iterator[Any]], Any]


def flatten(obj: Any) -> tuple[list[Any], Rebuild]:
    """Array leaves of ``obj`` (tuples, lists, dicts and dataclasses walked) and a function
    rebuilding ``obj`` from an iterator over replacement leaves; anything else is static."""
    if isinstance(obj, (jax.Array, np.ndarray)):
        return [obj], lambda it: next(it)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = [f.name for f in dataclasses.fields(obj) if f.init]
        parts = {n: flatten(getattr(obj, n)) for n in names}
        return ([leaf for leaves, _ in parts.values() for leaf in leaves],
                lambda it: dataclasses.replace(obj, **{n: r(it) for n, (_, r) in parts.items()}))
    if isinstance(obj, (tuple, list)):
        parts = [flatten(x) for x in obj]
        kind = type(obj)

        def rebuild_seq(it):
            items = [r(it) for _, r in parts]
            return kind(*items) if hasattr(kind, "_fields") else kind(items)

        return [leaf for leaves, _ in parts for leaf in leaves], rebuild_seq
    if isinstance(obj, dict):
        parts = {k: flatten(v) for k, v in obj.items()}
        return ([leaf for leaves, _ in parts.values() for leaf in leaves],
                lambda it: {k: r(it) for k, (_, r) in parts.items()})
    return [], lambda it: obj


def _lift(leaves: list) -> tuple:
    return tuple(jnp.asarray(x)[None, None] for x in leaves)


@dataclasses.dataclass
class ShardedCall(PreparedCall):
    """A :class:`PreparedCall` over a mesh; its jitted stages are kept for lowering:
    ``layout_jit(*arrays)`` (ARRAY_FIELDS order), ``prepare_jit(*state)``, ``kernel_jit(args)``."""

    plan: ShardPlan | None = None
    layout_jit: Any = None
    prepare_jit: Any = None
    kernel_jit: Any = None


def build_sharded(backend, plan: ShardPlan, attn: AttentionSpec, mesh, *, interpret: bool = False) -> ShardedCall:
    """The backend's call, split the same way, run on every device of ``mesh`` at once.

    ``layout(sharded_inputs) -> state`` (not timed): each device's inputs in the
    backend's resident layout; ``prepare(state) -> args``: each device's preprocessing;
    ``kernel(*args) -> raw``: the kernel alone on every device (one program: what the
    timer measures); ``finish(raw) -> KernelOutput``: per-device canonical outputs stacked
    ``[data, ...]`` with heads re-joined (:func:`~rpa_bench.parallel.layout.gather_output`
    gives the unsharded layout). ``mesh`` may be an ``AbstractMesh`` for cross-lowering.
    Use ``call.prepare(call.state(inputs))`` as with any PreparedCall.
    """
    plan.mesh.check_model(plan.model)
    backend.validate(plan.local_model, attn, plan.batch)
    inner = backend.build(plan.local_model, attn, plan.build_batch, interpret=interpret)
    rebuild: dict[str, Rebuild] = {}  # stage -> how to rebuild its output from leaves (set at trace)

    def leaves_of(stage: str, obj: Any) -> tuple:
        leaves, rebuild[stage] = flatten(obj)
        return _lift(leaves)

    def unlift(stage: str, leaves: tuple) -> Any:
        return rebuild[stage](iter(x[0, 0] for x in leaves))

    def layout_body(*arrays):
        local = KernelInputs(
            batch=plan.build_batch, model=plan.local_model,
            max_num_batched_tokens=plan.max_num_batched_tokens, max_num_seqs=plan.max_num_seqs,
            **{k: v[0] for k, v in zip(ARRAY_FIELDS, arrays)},
        )
        return leaves_of("state", inner.state(local))

    def prepare_body(*state):
        return leaves_of("args", tuple(inner.prepare(unlift("state", state))))

    def kernel_body(*args):
        return leaves_of("raw", inner.kernel(*unlift("args", args)))

    def sm(body, in_specs):
        return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=PER_DEVICE, check_vma=False)

    layout_jit = jax.jit(sm(layout_body, tuple(FIELD_SPECS[k] for k in ARRAY_FIELDS)))
    prepare_jit = jax.jit(sm(prepare_body, PER_DEVICE))
    kernel_sm = sm(kernel_body, PER_DEVICE)
    kernel_jit = jax.jit(lambda args: kernel_sm(*args), donate_argnums=(0,) if inner.donates else ())

    # Interpret mode patches JAX's TPU interpreter while active, and its host callbacks run
    # when the program executes, on one thread per device: so in interpret mode each stage
    # blocks on its result inside the context (interpret timings are never performance).
    def run(fn, *args):
        if not interpret:
            return fn(*args)
        with call_context(True):
            return jax.block_until_ready(fn(*args))

    def layout(inputs: ShardedInputs) -> tuple:
        return run(layout_jit, *(getattr(inputs, k) for k in ARRAY_FIELDS))

    def prepare(state: tuple) -> tuple:
        return run(prepare_jit, *state)

    def kernel(*args):
        return run(kernel_jit, args)

    def finish(raw) -> KernelOutput:
        return stacked_output(inner, rebuild["raw"], raw, plan)

    meta = dict(inner.meta, mesh=plan.mesh.label, num_devices=plan.mesh.num_devices,
                modelled_imbalance=plan.partition.modelled_imbalance)
    return ShardedCall(prepare=prepare, kernel=kernel, finish=finish, donates=inner.donates, meta=meta,
                       layout=layout, plan=plan, layout_jit=layout_jit, prepare_jit=prepare_jit,
                       kernel_jit=kernel_jit)


def _host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def stacked_output(inner: PreparedCall, rebuild_raw: Rebuild, raw: tuple, plan: ShardPlan) -> KernelOutput:
    """Each device's canonical output via the backend's own ``finish``, heads re-joined over
    ``model``: output [D, T_loc, h_q, d], caches [D, P_loc, page_size, h_kv, d] (host arrays)."""
    raw = [_host(x) for x in raw]
    fields: dict[str, list] = {"output": [], "k_cache": [], "v_cache": []}
    for d in range(plan.mesh.data):
        per_m = [inner.finish(rebuild_raw(iter(jnp.asarray(x[d, m]) for x in raw))) for m in range(plan.mesh.model)]
        for name in fields:
            parts = [getattr(o, name) for o in per_m]
            fields[name].append(None if parts[0] is None else np.concatenate([np.asarray(p) for p in parts], axis=-2))
    return KernelOutput(**{k: None if v[0] is None else np.stack(v) for k, v in fields.items()})
