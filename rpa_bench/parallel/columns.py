"""Run-store columns of one sharded measurement: the run pipeline's single call.

After timing a :class:`~rpa_bench.parallel.backend.ShardedBackend` call and capturing a
few calls with ``measure.capture.capture`` (parsed once, per device, by
``measure.devtime.per_device_timing``), :func:`mesh_row_columns` turns that timing into the schema's multi-device columns (``num_devices``, ``mesh``,
``per_device_latency_us``, ``load_imbalance``), the step latency (slowest device), the
full :class:`~rpa_bench.parallel.accounting.MeshAccounting` (per device, per chip) and
the warnings to record. On several hosts every process must call it (the per-device
times are gathered collectively); only the writer stores the row.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import TYPE_CHECKING, Any

from rpa_bench.parallel.accounting import MeshAccounting
from rpa_bench.parallel.backend import mesh_accounting
from rpa_bench.parallel.distributed import allgather_device_times
from rpa_bench.store.rows import mesh_columns

if TYPE_CHECKING:  # a type only: parallel never imports measure (measure drives parallel)
    from rpa_bench.measure.devtime import PerDeviceTiming


@dataclasses.dataclass(frozen=True)
class MeshColumns:
    columns: Any  # the row part (rpa_bench.store.rows.MeshColumns): num_devices, mesh, per-device figures
    timing_source: str  # device | wall
    on_device_planes: bool  # device times from accelerator planes (False: CPU host-op spans or wall)
    step_latency_us: float  # slowest device (median over calls of the per-call maximum)
    step_samples_us: tuple[float, ...]  # per captured call: the slowest device's time
    accounting: MeshAccounting
    warnings: tuple[str, ...]


def _series(timing: PerDeviceTiming, kernel_only: bool) -> tuple[tuple[float, ...], ...]:
    if kernel_only and timing.kernel_per_call_us is not None:
        return timing.kernel_per_call_us
    return timing.per_call_us


def mesh_row_columns(plan: Any, attn: Any, timing: PerDeviceTiming, devices: Any, *, wall_latency_us: float,
                     device_spec: Any, kernel_only: bool = False, ckv: int | None = None) -> MeshColumns:
    """Multi-device columns of a sharded call (``plan``: its ShardPlan) from its per-device
    timing (parsed once from the capture, :func:`rpa_bench.measure.devtime.per_device_timing`).

    ``devices``: the mesh's devices (DeviceInfo) in mesh order; ``wall_latency_us``: the
    wall-clock median, used for every device when device time cannot be attributed;
    ``kernel_only``: per-device times from the kernel-regex events when the capture has
    them (the ``excl_prep`` variant); ``device_spec``: the run's DeviceSpec.
    """
    import jax

    series = _series(timing, kernel_only)
    medians = [float(statistics.median(s)) for s in series]
    is_device = 1.0 if timing.timing_source == "device" else 0.0
    gathered = allgather_device_times(timing.device_ids, [[m, is_device] for m in medians])
    source = "device" if all(v[1] == 1.0 for v in gathered.values()) else "wall"
    times = [gathered[d.id][0] if source == "device" else float(wall_latency_us) for d in devices]
    acc = mesh_accounting(plan, attn, devices, times, timing_source=source, device_spec=device_spec, ckv=ckv)
    if source == "device" and jax.process_count() == 1:
        steps = tuple(max(s[i] for s in series) for i in range(len(series[0])))
    else:  # across hosts only the per-device medians travel; the step is their maximum
        steps = (max(times),)
    warnings = tuple(dict.fromkeys([*timing.warnings, *acc.warnings]))
    planes_ok = source == "device" and all(str(p).startswith("/device:") for p in timing.planes)
    return MeshColumns(columns=mesh_columns(acc), timing_source=source, on_device_planes=planes_ok,
                       step_latency_us=float(statistics.median(steps)), step_samples_us=steps,
                       accounting=acc, warnings=warnings)


def row_updates(backend: Any, plan: Any, attn: Any, *, timing_source: str, per_device: PerDeviceTiming | None,
                wall_latency_us: float, device_spec: Any, kernel_only: bool = False,
                ckv: int | None = None, **_: Any) -> tuple[Any, list[str]]:
    """The multi-device columns of a run row, consistent with the row's ``timing_source``.

    Per-device times and the measured imbalance come only from accelerator device planes
    (a row timed on the wall clock gets null for both, and the modelled split in the
    warnings' place); ``per_device``: the capture's per-device timing, or None when no
    capture was taken (whether or not the capture file is kept). ``ckv``: the KV block of
    executed causal FLOPs, as for the row's own cost, so the per-device FLOPs sum to the
    row's. Returns (columns to set, warnings to append).
    """
    devices = backend.devices()
    notes: list[str] = []
    if per_device is not None:
        mc = mesh_row_columns(plan, attn, per_device, devices, wall_latency_us=wall_latency_us,
                              device_spec=device_spec, kernel_only=kernel_only, ckv=ckv)
        notes += mc.warnings
        if timing_source == "device" and mc.on_device_planes:
            return mc.columns, notes
    acc = mesh_accounting(plan, attn, devices, [float(wall_latency_us)] * len(devices),
                          timing_source="wall", device_spec=device_spec, ckv=ckv)
    notes += acc.warnings
    if acc.modelled_imbalance is not None:
        notes.append(f"modelled load imbalance (roofline bound times, max/mean): {acc.modelled_imbalance:.3f}")
    return mesh_columns(acc), list(dict.fromkeys(notes))
