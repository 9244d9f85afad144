"""The run pipeline compiled for a TPU this machine does not have (``run.compile_only=<gen>``).

Every (point, kernel) of the plan goes through the same path as on that TPU — the
generation's block-size defaults, the mesh over one chip's devices (both TensorCores of a
TPU7x chip with ``mesh=auto``), both timed variants — but each program is compiled by the
real TPU compiler for a topology (libtpu's compile-only client, :mod:`rpa_bench.kernels.
compiling`) instead of executed. Nothing runs, so nothing is timed or checked: rows get
status ``compiled`` (or ``failed`` with ``compile_status`` vmem_oom / hbm_oom / failed) and
the compile facts (VMEM used by the largest Mosaic kernel, headroom, HBM footprint).
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from typing import Any

from rpa_bench.kernels import compiling, tpu_target
from rpa_bench.kernels.lowering import _ARRAY_FIELDS, abstract_inputs
from rpa_bench.measure.calls import VARIANTS, split_arrays
from rpa_bench.parallel.lowering import abstract_inputs as sharded_inputs
from rpa_bench.status import Status
from rpa_bench.store.rows import BlockColumns, CompileColumns

COMPILED = Status.COMPILED


@dataclasses.dataclass(frozen=True)
class VariantCompile:
    """One variant's compile for a generation: the row's status, error and typed parts."""

    status: str
    error: str | None
    columns: CompileColumns
    blocks: BlockColumns | None = None


def target_devices(generation: str) -> tuple:
    """One chip of ``generation`` as compile targets (refused when libtpu is missing)."""
    ok, reason = compiling.libtpu_status()
    if not ok:
        raise ValueError(f"run.compile_only={generation}: {reason}")
    return compiling.topology_devices(generation)


def _single_device_programs(prepared: Any, batch: Any, model: Any, padding: dict, device: Any) -> dict:
    """(function, abstract args) of both variants of a one-device call, placed on ``device``."""
    import jax
    from jax.sharding import SingleDeviceSharding

    inputs = abstract_inputs(batch, model, **padding)
    held: dict[str, Any] = {}

    def state_leaves(*arrays):
        state = prepared.state(dataclasses.replace(inputs, **dict(zip(_ARRAY_FIELDS, arrays))))
        leaves, held["state"] = split_arrays(state)
        return leaves

    state = jax.eval_shape(state_leaves, *(getattr(inputs, f) for f in _ARRAY_FIELDS))

    def arg_leaves(*leaves):
        leaves_out, held["args"] = split_arrays(prepared.prepare(held["state"](list(leaves))))
        return leaves_out

    args = jax.eval_shape(arg_leaves, *state)

    def incl(*leaves):
        return prepared.kernel(*prepared.prepare(held["state"](list(leaves))))

    def excl(*leaves):
        return prepared.kernel(*held["args"](list(leaves)))

    sharding = SingleDeviceSharding(device)
    return {"excl_prep": (excl, compiling.place_on(list(args), sharding)),
            "incl_prep": (incl, compiling.place_on(list(state), sharding))}


def _sharded_programs(call: Any, mesh: Any) -> dict:
    """The same for a sharded call (its jitted stages, traced on the topology mesh)."""

    state = tuple(call.layout_jit.trace(*sharded_inputs(call.plan, mesh)).out_info)
    args = tuple(call.prepare_jit.trace(*state).out_info)

    def incl(*leaves):
        return call.kernel_jit(tuple(call.prepare_jit(*leaves)))

    def excl(*leaves):
        return call.kernel_jit(tuple(leaves))

    return {"excl_prep": (excl, list(args)), "incl_prep": (incl, list(state))}


def compile_variants(backend: Any, model: Any, attn: Any, batch: Any, *, padding: dict, generation: str,
                     devices: tuple) -> dict[str, VariantCompile]:
    """Per variant: its compile for ``generation`` (never raises)."""
    import jax

    kind = compiling.generation_kind(generation)
    capacity = int(tpu_target.tpu_info(kind).vmem_capacity_bytes)
    out: dict[str, VariantCompile] = {}
    try:
        inner = getattr(backend, "inner", backend)  # the run turned its own VMEM-estimate check off
        module = inner.module() if hasattr(inner, "module") else None
        prepared = backend.build(model, attn, batch, interpret=False)
        if getattr(prepared, "layout_jit", None) is not None:
            programs = _sharded_programs(prepared, backend.mesh)
        else:
            programs = _single_device_programs(prepared, batch, model, padding, devices[0])
    except Exception as exc:  # noqa: BLE001 - the build itself failed: both variants say so
        err = compiling.short_error(exc)
        return {v: VariantCompile(Status.FAILED, err, CompileColumns(
            compile_target=kind, compile_status=compiling.classify(str(exc)), vmem_capacity_bytes=capacity))
            for v in VARIANTS}
    meta = dict(prepared.meta or {})
    blocks = BlockColumns.from_meta(meta)
    for variant in VARIANTS:
        fn, args = programs[variant]
        fn.__name__ = fn.__qualname__ = f"rpa_bench_{variant}"
        start = time.perf_counter()
        try:
            with jax.default_device(devices[0]), tpu_target.as_tpu(module, kind), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
                compiled = jax.jit(fn).trace(*args).lower().compile()
            seconds = time.perf_counter() - start
            vmem = compiling.vmem_used(compiled.as_text())
            hbm = compiling.hbm_of(compiled)
            used = max(vmem.values()) if vmem else None
            out[variant] = VariantCompile(COMPILED, None, CompileColumns(
                compile_target=kind, compile_status="ok", compile_time_s=seconds,
                vmem_used_bytes=used, vmem_capacity_bytes=capacity,
                vmem_headroom=None if used is None else 1.0 - used / capacity,
                compiled_hbm_bytes=compiling.hbm_footprint_bytes(hbm) or None,
                compile_facts=json.dumps({"vmem_used_bytes": vmem, "hbm": hbm,
                                          "block_sizes": compiling._block_sizes(meta),
                                          "vmem_limit_bytes": meta.get("vmem_limit_bytes")}, sort_keys=True)),
                blocks)
        except Exception as exc:  # noqa: BLE001 - a failed compile is a row, the sweep goes on
            out[variant] = VariantCompile(Status.FAILED, compiling.short_error(exc), CompileColumns(
                compile_target=kind, compile_status=compiling.classify(str(exc)),
                compile_time_s=time.perf_counter() - start, vmem_capacity_bytes=capacity), blocks)
    return out
