"""Everything a run needs before its first measurement, and every check.

:func:`prepare_run` builds the workloads, resolves and validates the backends on every
point and applies the device-awareness limits before anything is allocated; a config
problem is a ``ValueError`` naming the field, raised before any expensive work.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from rpa_bench.kernels.base import KernelProvenance
from rpa_bench.kernels.registry import PALLAS_BACKENDS, KernelConfig, get_backend
from rpa_bench.parallel.backend import ShardedBackend
from rpa_bench.parallel.mesh import chip_major_order, mesh_spec_from_config
from rpa_bench.pipeline.compile_only import target_devices
from rpa_bench.pipeline.plan import RunPlan, WorkloadEntry
from rpa_bench.pipeline.point import (
    cost_of,
    error_text,
)
from rpa_bench.roofline.calibration import Roofline, resolve_roofline
from rpa_bench.roofline.specs import with_device_peaks
from rpa_bench.workloads.materialize import estimate_bytes, padded_shape
from rpa_bench.workloads.points import (
    build_workload,
    point_attention,
    workload_spec_from_dict,
)


@dataclasses.dataclass
class KernelSlot:
    entry: KernelConfig
    backend: Any | None
    interpret: bool
    available: bool
    reason: str
    provenance: KernelProvenance


@dataclasses.dataclass
class PreparedRun:
    plan: RunPlan
    workloads: list[tuple[WorkloadEntry, Any]]  # (entry, Workload)
    kernels: list[KernelSlot]
    roof: Roofline
    platform: str
    device_kind: str
    num_devices: int
    mesh_label: str
    unsupported: dict = dataclasses.field(default_factory=dict)  # (workload, point, kernel) -> reason

    @property
    def num_jobs(self) -> int:
        return sum(len(self.points(w)) for _, w in self.workloads) * len(self.kernels)

    def points(self, workload: Any) -> list:
        pts = list(workload.points)
        return pts if self.plan.max_points is None else pts[: self.plan.max_points]


def interpret_work(batch: Any, model: Any) -> int:
    """Rough cost of an interpret-mode call: cached KV tokens x KV heads."""
    return int(sum(batch.kv_lens)) * int(model.num_kv_heads)


def _resolve_kernels(plan: RunPlan, platform: str) -> list[KernelSlot]:
    slots = []
    for k in plan.kernels:
        backend = get_backend(k.name, source=k.source, options=dict(k.options) or None)
        ok, reason = backend.availability()
        if not ok:  # a kernel the user asked for that cannot be loaded: a config error, before any point
            raise ValueError(f"kernel={k.name} cannot be loaded: {reason}")
        if k.interpret == "auto":
            interpret = platform != "tpu" and k.name in PALLAS_BACKENDS
        else:
            interpret = bool(k.interpret)
        try:
            prov = backend.provenance() if ok else KernelProvenance(kernel=k.name)
        except Exception as exc:  # noqa: BLE001 - provenance is recorded, never fatal
            prov = KernelProvenance(kernel=k.name, error=error_text(exc))
        slots.append(KernelSlot(k, backend, interpret, bool(ok), str(reason), prov))
    return slots


def build_workloads(plan: RunPlan) -> list[tuple[WorkloadEntry, Any]]:
    out = []
    for entry in plan.workloads:
        spec = entry.spec if entry.spec is not None else workload_spec_from_dict(dict(entry.config))
        # a trace's step-time model: one tensor-parallel device's share of the model
        step_model = plan.model.tensor_parallel_shard(plan.mesh.model or 1)
        out.append((entry, build_workload(spec, step_model, with_device_peaks(plan.scheduler), seed=plan.seed)))
    return out


def _check_limits(plan: RunPlan, workloads, kernels: list[KernelSlot], platform: str) -> dict:
    problems: list[str] = []
    unsupported: dict[tuple[str, str, str], str] = {}
    unfit: dict[str, str] = {}
    for slot in kernels:  # model-level support: a config error for the whole run (or, asked, skipped rows)
        if slot.available:
            try:
                slot.backend.validate(plan.model, plan.attention, None)
            except ValueError as e:
                if plan.unfit_kernels == "skip":
                    unfit[slot.entry.label] = f"not supported: {e}"
                else:
                    problems.append(str(e))
    for entry, wl in workloads:
        for p in (wl.points if plan.max_points is None else wl.points[: plan.max_points]):
            for slot in kernels:  # point-level support (e.g. no causal mask): skipped rows
                if slot.entry.label in unfit:
                    unsupported[(entry.name, p.point_id, slot.entry.label)] = unfit[slot.entry.label]
                elif slot.available:
                    try:
                        slot.backend.validate(plan.model, point_attention(plan.attention, p), p.batch)
                    except ValueError as e:
                        unsupported[(entry.name, p.point_id, slot.entry.label)] = f"not supported: {e}"
            if platform != "cpu":
                continue
            shape = padded_shape(p.batch, max_num_batched_tokens=p.max_num_batched_tokens, max_num_seqs=p.max_num_seqs)
            nbytes = estimate_bytes(p.batch, plan.model, max_num_batched_tokens=shape.max_num_batched_tokens,
                                    max_num_seqs=shape.max_num_seqs, num_pages=shape.num_pages)
            flops = cost_of(p.batch, plan.model, point_attention(plan.attention, p), causal=p.causal).flops
            if nbytes > plan.scale.cpu_max_input_bytes or flops > plan.scale.cpu_max_call_flops:
                problems.append(
                    f"scale={plan.scale.name} on cpu: workload {entry.name} point {p.point_id} needs "
                    f"{nbytes / 2**30:.2f} GiB of inputs and {flops / 1e12:.2f} TFLOP per call (limits: "
                    f"scale.cpu_max_input_bytes={plan.scale.cpu_max_input_bytes:.3g}, "
                    f"scale.cpu_max_call_flops={plan.scale.cpu_max_call_flops:.3g}); it would not fit or "
                    "would take hours on this CPU. "
                    + ("Use a smaller workload (e.g. scheduler.max_num_batched_tokens, workload.max_requests, "
                       "shorter contexts), or run on a TPU/GPU" if plan.scale.reduced
                       else "Use scale=cpu_smoke, or run on a TPU/GPU")
                )
    if problems:
        head = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise ValueError("the run cannot start:\n  " + "\n  ".join(head))
    return unsupported


def _roofline(plan: RunPlan, num_devices: int) -> Roofline:
    n = num_devices if plan.compile_only is not None else int(plan.device.num_devices or num_devices)
    return resolve_roofline(plan.device.name, num_devices=n, results_dir=plan.results_dir,
                            compile_only=plan.compile_only)


def _check_every_process_in_mesh(mesh: Any) -> None:
    """On several hosts every process runs the same program: the mesh must reach each one."""
    import jax

    if jax.process_count() == 1:
        return
    chosen = chip_major_order(jax.devices())[: mesh.num_devices]
    idle = sorted(set(range(jax.process_count())) - {int(d.process_index) for d in chosen})
    if idle:
        raise ValueError(
            f"mesh {mesh.label} uses {mesh.num_devices} of {jax.device_count()} devices and leaves process(es) "
            f"{idle} without one; a multi-host run needs a mesh over every host (e.g. mesh.data={jax.device_count()})"
        )


def _compile_targets(plan: RunPlan) -> tuple:
    """``run.compile_only``: one chip of the target generation (compile targets), else the devices."""
    import jax

    if plan.compile_only is None:
        return tuple(jax.devices())

    return target_devices(plan.compile_only)


def _untimed_aa_dropped(kernels: list[KernelSlot], plan: RunPlan) -> list[KernelSlot]:
    """``run.aa_check``: an A/A twin checks the timing noise; a kernel that is only checked
    here (interpret mode, not timed) or only compiled has no timing, so its twin is dropped
    (said on stderr) rather than running the same check twice."""
    untimed = {s.entry.label for s in kernels
               if plan.compile_only is not None or (s.interpret and not plan.timing.time_interpret)}
    dropped = [s.entry.label for s in kernels if s.entry.label.endswith(".aa") and s.entry.label[:-3] in untimed]
    if dropped:
        print(f"rpa-bench: run.aa_check: no A/A twin for {', '.join(d[:-3] for d in dropped)}: checked in "
              "interpret mode (or compiled only) here, not timed; the A/A check needs timings (a TPU, or "
              "timing.time_interpret=true, which is never kernel performance)", file=sys.stderr)
    return [s for s in kernels if s.entry.label not in dropped]


def prepare_run(plan: RunPlan, workloads: list[tuple[WorkloadEntry, Any]] | None = None) -> PreparedRun:
    """Everything but the measurements; raises ValueError for any config problem.
    ``workloads``: the plan's workloads already built (e.g. a subset of their points)."""

    devices = _compile_targets(plan)
    dev = devices[0]
    mesh = mesh_spec_from_config(plan.mesh.to_dict(), device_kind=dev.device_kind, num_devices=len(devices))
    if plan.compile_only is None:
        _check_every_process_in_mesh(mesh)
    kernels = _untimed_aa_dropped(_resolve_kernels(plan, dev.platform), plan)
    if plan.compile_only is not None:
        for slot in kernels:  # compiled for the TPU with its own defaults, never interpreted
            slot.interpret = False
            if slot.available and hasattr(slot.backend, "generation"):
                slot.backend.generation = plan.compile_only
            if slot.available and hasattr(slot.backend, "check_vmem_estimate"):
                slot.backend.check_vmem_estimate = False  # the compiler, not the estimate, decides
    roof = _roofline(plan, mesh.num_devices)
    if mesh.num_devices > 1:  # each kernel sharded over the mesh, canonical in and out (rpa_bench.parallel)
        for slot in kernels:
            if slot.available:
                slot.backend = ShardedBackend(slot.backend, mesh, device_spec=roof.device,
                                              devices=devices if plan.compile_only else None)
                slot.provenance = dataclasses.replace(slot.provenance, mesh=mesh.label)
    workloads = build_workloads(plan) if workloads is None else workloads
    unsupported = _check_limits(plan, workloads, kernels, dev.platform)
    return PreparedRun(plan, workloads, kernels, roof, dev.platform, dev.device_kind, mesh.num_devices, mesh.label,
                       unsupported)


