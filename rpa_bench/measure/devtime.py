"""Per-device time of a (sharded) call from one profiler capture, read once.

Every device of the call is attributed by :mod:`.capture` on its own plane:
- TPU / GPU: the plane ``/device:TPU:N`` / ``/device:GPU:N`` whose ordinal ``N`` is the
  device's ordinal on its host (``local_hardware_id``);
- CPU (forced host devices): no device plane; the XLA CPU runtime tags every op event on
  ``/host:CPU`` with ``device_ordinal``, so each device gets its own ops. These are
  host-thread spans of devices that share the same cores: they tell the devices apart
  but are not accelerator time (a warning says so).
One device is a mesh of one. When any device cannot be attributed, the result falls back
to the wall clock (``timing_source="wall"``, every device given the step's wall time) and
says why. The step time of a call is the slowest device's time for that call.

Devices are described by anything with ``id``, ``platform`` and ``local_hardware_id``
(a JAX device or ``parallel.mesh.DeviceInfo``), so this module needs nothing from
``parallel``.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from collections.abc import Sequence
from typing import Any

from rpa_bench.measure import capture, xspace

HOST_PLANE = xspace.HOST_PLANE
_PLANE_RE = re.compile(r"^/device:[A-Za-z_]+:(\d+)")


@dataclasses.dataclass(frozen=True)
class PerDeviceTiming:
    """Per-call times of every device of a mesh (mesh order), and the step time."""

    device_ids: tuple[int, ...]
    per_call_us: tuple[tuple[float, ...], ...]  # [device][call]
    kernel_per_call_us: tuple[tuple[float, ...], ...] | None  # kernel-regex events only, else None
    planes: tuple[str | None, ...]  # where each device's events came from
    timing_source: str  # device | wall
    warnings: tuple[str, ...] = ()
    span_per_call_us: tuple[tuple[float, ...], ...] | None = None  # GPU: first kernel start -> last end
    basis: str | None = None  # module_event | kernel_busy | host_ops (capture.PlaneTiming.basis)

    def __post_init__(self) -> None:
        if self.timing_source not in ("device", "wall"):
            raise ValueError(f"timing_source={self.timing_source!r}; allowed: device, wall")
        if len(self.per_call_us) != len(self.device_ids):
            raise ValueError(f"{len(self.per_call_us)} per-device series for {len(self.device_ids)} devices")
        if len({len(s) for s in self.per_call_us}) > 1:
            raise ValueError(f"devices have different numbers of calls: {[len(s) for s in self.per_call_us]}")

    @property
    def num_calls(self) -> int:
        return len(self.per_call_us[0]) if self.per_call_us else 0

    @property
    def on_device_planes(self) -> bool:
        return self.timing_source == "device" and all(str(p).startswith("/device:") for p in self.planes)

    @property
    def step_per_call_us(self) -> tuple[float, ...]:
        """Per call: the slowest device's time."""
        return tuple(max(s[i] for s in self.per_call_us) for i in range(self.num_calls))

    @property
    def step_kernel_per_call_us(self) -> tuple[float, ...] | None:
        if self.kernel_per_call_us is None:
            return None
        return tuple(max(s[i] for s in self.kernel_per_call_us) for i in range(self.num_calls))

    @property
    def step_latency_us(self) -> float:
        return float(statistics.median(self.step_per_call_us))

    @property
    def per_device_latency_us(self) -> tuple[float, ...]:
        """Median per device (the schema's ``per_device_latency_us``)."""
        return tuple(float(statistics.median(s)) for s in self.per_call_us)

    def as_step(self) -> capture.DeviceTiming:
        """The call's :class:`capture.DeviceTiming`: per call, the slowest device (empty when
        the devices were not attributed)."""
        if self.timing_source != "device":
            return capture.DeviceTiming((), None, None, 0, self.warnings)
        span = None
        if self.span_per_call_us is not None:
            span = tuple(max(s[i] for s in self.span_per_call_us) for i in range(self.num_calls))
        notes = self.warnings
        if len(self.device_ids) > 1:
            notes = (*notes, f"step time per call = slowest of {len(self.device_ids)} devices "
                             f"({', '.join(str(p) for p in self.planes)})")
        plane = self.planes[0] if len(self.planes) == 1 or self.on_device_planes else HOST_PLANE
        return capture.DeviceTiming(self.step_per_call_us, self.step_kernel_per_call_us, plane,
                                    0, notes, span, self.basis)


def plane_ordinal(name: str) -> int | None:
    m = _PLANE_RE.match(name)
    return int(m.group(1)) if m else None


def _ordinal(dev: Any, local_ids: Sequence[int]) -> int:
    local = getattr(dev, "local_hardware_id", None)
    if local is not None:
        return int(local)
    return sorted(local_ids).index(dev.id)


def per_device_timing(path_or_data: Any, *, module_name: str, num_calls: int, devices: Sequence[Any],
                      wall_latency_us: float | None = None,
                      kernel_regex: str | None = capture.DEFAULT_KERNEL_REGEX) -> PerDeviceTiming:
    """Attribute ``module_name``'s time per call to each of ``devices`` (this process's).

    ``path_or_data``: a capture path, ProfileData or an already read :class:`xspace.Space`.
    ``wall_latency_us``: the step's wall-clock latency, used for every device when some
    device cannot be attributed (then ``timing_source="wall"``; None: raise instead).
    """
    space = xspace.read(path_or_data)
    kernel_re = re.compile(kernel_regex) if kernel_regex else None
    windows = capture.call_windows(space)
    device_planes = {p.ordinal: p for p in space.device_planes}
    local_ids = [d.id for d in devices]
    notes: list[str] = []
    series, kernels, spans, planes, basis = [], [], [], [], None
    for dev in devices:
        ordinal = _ordinal(dev, local_ids)
        if device_planes:
            plane = device_planes.get(ordinal)
            if plane is None:
                notes.append(f"device {dev.id}: no plane for ordinal {ordinal} among {sorted(device_planes)}")
                break
            t = capture.plane_timing(space, plane, module_name, kernel_re=kernel_re, windows=windows)
            if t is None:
                notes.append(f"device {dev.id}: {capture.missing_on(space, plane, module_name)}")
                break
        else:
            t = capture.host_timing(space, module_name, kernel_re=kernel_re, windows=windows,
                                    device_ordinal=ordinal if len(devices) > 1 else None)
            if t is None:
                notes.append(f"device {dev.id}: capture has no device plane and no XLA op events of "
                             f"{module_name} on {HOST_PLANE}")
                break
        timing = capture.to_device_timing(t, num_calls)
        notes += [f"device {dev.id}: {w}" if len(devices) > 1 else w for w in timing.warnings]
        if not timing.available:
            break
        series.append(timing.per_call_us)
        kernels.append(timing.kernel_per_call_us)
        spans.append(timing.span_per_call_us)
        planes.append(timing.plane)
        basis = timing.basis
    else:
        if not device_planes and len(devices) > 1:
            notes.append("forced host devices: per-device times are XLA CPU op spans on shared host cores, "
                         "not accelerator time")
        kernel = tuple(kernels) if all(k is not None for k in kernels) else None
        span = tuple(spans) if all(s is not None for s in spans) else None
        return PerDeviceTiming(tuple(local_ids), tuple(series), kernel, tuple(planes), "device", tuple(notes),
                               span, basis)
    if not any("timing_source=wall" in n for n in notes):
        notes.append("device time not attributed; timing_source=wall")
    if wall_latency_us is None:
        raise ValueError("per-device time not attributable and no wall_latency_us given: " + "; ".join(notes))
    return wall_timing(devices, wall_latency_us, warnings=notes)


def wall_timing(devices: Sequence[Any], wall_latency_us: float, *, warnings: Sequence[str] = ()) -> PerDeviceTiming:
    """Every device given the step's wall time: marked ``timing_source="wall"``."""
    note = ("per-device times unavailable: each device is given the step's wall-clock latency "
            "(timing_source=wall); per-device figures and load imbalance are not measured")
    notes = tuple(warnings) if len(devices) == 1 else (*warnings, note)
    return PerDeviceTiming(
        device_ids=tuple(d.id for d in devices), per_call_us=tuple((float(wall_latency_us),) for _ in devices),
        kernel_per_call_us=None, planes=(None,) * len(devices), timing_source="wall", warnings=notes,
    )


def step_device_timing(path_or_data: Any, *, module_name: str, num_calls: int, devices: Sequence[Any],
                       kernel_regex: str | None = capture.DEFAULT_KERNEL_REGEX) -> capture.DeviceTiming:
    """The call's :class:`capture.DeviceTiming` with each call's *slowest* device; not
    attributable: an empty result with the reasons (the caller falls back to wall time)."""
    try:
        t = per_device_timing(path_or_data, module_name=module_name, num_calls=num_calls, devices=devices,
                              kernel_regex=kernel_regex)
    except ValueError as e:
        return capture.DeviceTiming((), None, None, 0, (str(e),))
    return t.as_step()
