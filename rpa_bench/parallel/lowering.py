"""Lower a sharded call for a TPU slice on any machine (no TPU needed).

The sharded program (:func:`~rpa_bench.parallel.sharded.build_sharded`) is built on an
``AbstractMesh`` of abstract TPU devices of one generation and traced from abstract
inputs (``jax.ShapeDtypeStruct`` with ``NamedSharding`` on that mesh), then lowered with
``lowering_platforms=("tpu",)``, as kernels/lowering.py does for one TensorCore. The
StableHLO carries the mesh (``mhlo.num_partitions``, the ``sdy`` mesh) and each Pallas
kernel as a Mosaic ``tpu_custom_call``. Compiling for TPU still needs libtpu and a TPU.
"""

from __future__ import annotations

import copy
import re
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from rpa_bench.kernels import tpu_target
from rpa_bench.kernels.lowering import LoweringResult
from rpa_bench.parallel.layout import ARRAY_FIELDS, FIELD_SPECS, ShardPlan, plan_for
from rpa_bench.parallel.mesh import MeshSpec, abstract_mesh
from rpa_bench.parallel.sharded import ShardedCall, build_sharded
from rpa_bench.roofline.specs import spec_for_device_kind
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

_CUSTOM_CALL = re.compile(r"custom_call\s*@tpu_custom_call\b")
_KERNEL_NAME = re.compile(r'kernel_name\s*=\s*"([^"]+)"')


def abstract_inputs(plan: ShardPlan, mesh) -> tuple[jax.ShapeDtypeStruct, ...]:
    """Shapes, dtypes and shardings of :class:`ShardedInputs`' arrays (ARRAY_FIELDS order)."""
    m, D = plan.local_model, plan.mesh.data
    h_q, h_kv, d = plan.model.num_q_heads, plan.model.num_kv_heads, m.head_dim
    T, S, pps, P_loc = plan.max_num_batched_tokens, plan.max_num_seqs, plan.pages_per_seq, plan.num_pages
    dt, kvdt, i32 = jnp.dtype(m.dtype), jnp.dtype(m.kv_dtype), jnp.dtype(jnp.int32)
    page = plan.batch.page_size
    shapes = {
        "queries": ((D, T, h_q, d), dt), "new_keys": ((D, T, h_kv, d), kvdt),
        "new_values": ((D, T, h_kv, d), kvdt),
        "k_cache": ((D, P_loc, page, h_kv, d), kvdt), "v_cache": ((D, P_loc, page, h_kv, d), kvdt),
        "kv_lens": ((D, S), i32), "page_indices": ((D, S, pps), i32), "cu_q_lens": ((D, S + 1), i32),
        "num_seqs": ((D, 1), i32), "distribution": ((D, 3), i32),
    }
    return tuple(jax.ShapeDtypeStruct(shapes[k][0], shapes[k][1], sharding=NamedSharding(mesh, FIELD_SPECS[k]))
                 for k in ARRAY_FIELDS)


def lower_sharded(call: ShardedCall, mesh, *, platforms: tuple[str, ...] = ("tpu",)) -> dict[str, Any]:
    """Lower the call's three stages from abstract inputs: {"layout"|"prepare"|"kernel": Lowered}."""
    out = {}
    with jax.sharding.use_abstract_mesh(mesh), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        traced = call.layout_jit.trace(*abstract_inputs(call.plan, mesh))
        out["layout"] = traced.lower(lowering_platforms=platforms)
        traced = call.prepare_jit.trace(*traced.out_info)
        out["prepare"] = traced.lower(lowering_platforms=platforms)
        traced = call.kernel_jit.trace(tuple(traced.out_info))
        out["kernel"] = traced.lower(lowering_platforms=platforms)
    return out


def lower_sharded_for_tpu(backend: Any, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch, generation: str,
                          mesh_spec: MeshSpec, *, device_spec: Any = None, keep_text: bool = False) -> LoweringResult:
    """Lower ``backend`` sharded over ``mesh_spec`` abstract devices of ``generation``.

    The result's ``kernel`` is ``<name>@<mesh label>``; ``custom_calls`` / ``kernel_names``
    come from the kernel stage. Never raises for kernel errors (they are ``error``).
    """
    start = time.perf_counter()
    name = f"{backend.name}@{mesh_spec.label}"
    try:
        tpu_target.generation(generation)
        if device_spec is None:
            device_spec = spec_for_device_kind(generation)
        target = backend
        if hasattr(backend, "generation"):  # defaults (block sizes, VMEM) for the target
            target = copy.copy(backend)
            target.generation = generation
        plan = plan_for(batch, model, attn, mesh_spec, device_spec)
        mesh = abstract_mesh(mesh_spec, generation)
        module = target.module() if hasattr(target, "module") else None
        with tpu_target.as_tpu(module, generation):
            lowered = lower_sharded(build_sharded(target, plan, attn, mesh), mesh)
        text = lowered["kernel"].as_text()
        if f"mhlo.num_partitions = {mesh_spec.num_devices}" not in text:
            raise AssertionError(f"lowered kernel is not partitioned over {mesh_spec.num_devices} devices")
    except Exception as e:  # noqa: BLE001 - a failed lowering is a result, not a crash
        first = (str(e).strip().splitlines() or [""])[0]
        return LoweringResult(name, generation, False, 0, (), f"{type(e).__name__}: {first}"[:300],
                              time.perf_counter() - start)
    return LoweringResult(name, generation, True, len(_CUSTOM_CALL.findall(text)), tuple(_KERNEL_NAME.findall(text)),
                          None, time.perf_counter() - start, text if keep_text else None)
