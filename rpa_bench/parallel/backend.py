"""Any backend on a mesh, behind the ordinary backend interface (canonical in, canonical out).

:class:`ShardedBackend` wraps a registered backend so a caller that knows only
``KernelBackend`` (build -> layout / prepare / kernel / finish) runs it sharded:
- ``build`` splits the batch over the mesh (:func:`~rpa_bench.parallel.layout.plan_for`,
  balanced by roofline time) and builds the sharded call (:func:`build_sharded`);
- its ``layout`` takes the *unsharded* canonical inputs, lays them out per device
  (:func:`shard_inputs`, not timed) and runs the backend's own layout on every device;
- ``prepare`` / ``kernel`` are the sharded stages (the kernel stage is what is timed);
- ``finish`` returns the result in the *unsharded* canonical layout
  (:func:`gather_output`), so the reference check is the same as for one device.
``last_plan`` keeps the split of the latest build for accounting (:func:`mesh_accounting`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from rpa_bench.kernels.base import KernelOutput, KernelProvenance, PreparedCall
from rpa_bench.parallel.accounting import MeshAccounting, account, device_costs
from rpa_bench.parallel.layout import ShardPlan, gather_output, plan_for, shard_inputs
from rpa_bench.parallel.mesh import MeshSpec, make_mesh, mesh_devices
from rpa_bench.parallel.sharded import build_sharded
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.materialize import KernelInputs
from rpa_bench.workloads.model import AttentionSpec, ModelSpec


class ShardedBackend:
    """``inner`` run on a ``mesh_spec`` mesh; ``device_spec`` prices sequences for the split."""

    def __init__(self, inner: Any, mesh_spec: MeshSpec, *, device_spec: Any, devices: Sequence[Any] | None = None,
                 ckv: int | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities
        self.mesh_spec = mesh_spec
        self.mesh = make_mesh(mesh_spec, devices)
        self.device_spec = device_spec
        self.ckv = ckv
        self.last_plan: ShardPlan | None = None

    def availability(self) -> tuple[bool, str]:
        return self.inner.availability()

    def validate(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch | None = None) -> None:
        self.mesh_spec.check_model(model)
        self.inner.validate(self.mesh_spec.local_model(model), attn, batch)

    def provenance(self) -> KernelProvenance:
        return dataclasses.replace(self.inner.provenance(), mesh=self.mesh_spec.label)

    def devices(self) -> tuple:
        """The mesh's devices (DeviceInfo) in mesh order, for per-device timing and accounting."""
        return mesh_devices(self.mesh)

    def build(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch, *, interpret: bool = False) -> PreparedCall:
        plan = plan_for(batch, model, attn, self.mesh_spec, self.device_spec, ckv=self.ckv)
        call = build_sharded(self.inner, plan, attn, self.mesh, interpret=interpret)
        sharded_layout, stacked_finish = call.layout, call.finish
        latest: dict[str, Any] = {}
        self.last_plan = plan

        def layout(inputs: KernelInputs):
            latest["inputs"] = shard_inputs(inputs, plan, self.mesh, seed=inputs.seed + 1)
            return sharded_layout(latest["inputs"])

        def finish(raw) -> KernelOutput:
            if "inputs" not in latest:
                raise RuntimeError("finish() before layout(): the sharded layout of the inputs is unknown")
            return gather_output(stacked_finish(raw), latest["inputs"])

        meta = dict(call.meta, seq_ids=[list(p) for p in plan.partition.seq_ids])
        return dataclasses.replace(call, layout=layout, finish=finish, meta=meta, plan=plan, devices=self.devices())


def mesh_accounting(plan: ShardPlan, attn: AttentionSpec, devices: Sequence[Any], time_us: Sequence[float], *,
                    timing_source: str, device_spec: Any, ckv: int | None = None,
                    count: str = "executed") -> MeshAccounting:
    """:func:`account` for a plan: per-device costs from the roofline model, peaks of one
    device of ``device_spec`` (any ``num_devices``; rescaled here), chips by its layout."""
    one = device_spec.per_device_spec()
    try:
        peak = one.peak_flops_per_s(plan.model.dtype)
    except ValueError:
        peak = one.peak_flops_per_s("bfloat16")
    return account(
        device_costs(plan, attn, count=count, ckv=ckv), devices, time_us, timing_source=timing_source,
        mesh=plan.mesh.label, device_bw_bytes_per_s=one.hbm_bw_bytes_per_s, device_peak_flops_per_s=peak,
        devices_per_chip=device_spec.devices_per_chip,
        max_mxu_utilization=one.max_mxu_utilization(plan.model.head_dim),
    )
