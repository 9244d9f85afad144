"""Per-device time of a sharded call from one profiler capture, via measure/capture.py.

The capture parser attributes a module's device time on *one* plane. A sharded call runs
on several devices, so each device is handed to that same parser on a view of the
capture that holds only that device's events:
- TPU / GPU: one device plane each (``/device:TPU:N``, ``/device:GPU:N``; ``N`` is the
  device's ordinal on its host), beside the host planes (call annotations);
- CPU (forced host devices): no device plane; the XLA CPU runtime tags every op event on
  ``/host:CPU`` with ``device_ordinal``, so the view keeps one ordinal's ops. These are
  host-thread spans of devices that share the same cores: they tell the devices apart
  but are not accelerator time (a warning says so).
When any device cannot be attributed, the result falls back to the wall clock
(``timing_source="wall"``, every device given the step's wall time) and says why.
The step time of a call is the slowest device's time for that call.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import warnings as _warnings
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from rpa_bench.measure import capture
from rpa_bench.parallel.mesh import DeviceInfo

HOST_PLANE = "/host:CPU"
_PLANE_RE = re.compile(r"^/device:[A-Za-z_]+:(\d+)")


@dataclasses.dataclass(frozen=True)
class PerDeviceTiming:
    """Per-call times of every device of a mesh (mesh order), and the step time."""

    device_ids: tuple[int, ...]
    per_call_us: tuple[tuple[float, ...], ...]  # [device][call]
    kernel_per_call_us: tuple[tuple[float, ...], ...] | None  # Pallas events only (TPU), else None
    planes: tuple[str | None, ...]  # where each device's events came from
    timing_source: str  # device | wall
    warnings: tuple[str, ...] = ()

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
    def step_per_call_us(self) -> tuple[float, ...]:
        """Per call: the slowest device's time."""
        return tuple(max(s[i] for s in self.per_call_us) for i in range(self.num_calls))

    @property
    def step_latency_us(self) -> float:
        return float(statistics.median(self.step_per_call_us))

    @property
    def per_device_latency_us(self) -> tuple[float, ...]:
        """Median per device (the schema's ``per_device_latency_us``)."""
        return tuple(float(statistics.median(s)) for s in self.per_call_us)


def plane_ordinal(name: str) -> int | None:
    m = _PLANE_RE.match(name)
    return int(m.group(1)) if m else None


def _ordinal(info: DeviceInfo, local_ids: Sequence[int]) -> int:
    if info.local_hardware_id is not None:
        return info.local_hardware_id
    return sorted(local_ids).index(info.id)


def _host_view(host_planes: list, ordinal: int) -> SimpleNamespace:
    with _warnings.catch_warnings():  # jaxlib's stats type warns on first use
        _warnings.simplefilter("ignore", DeprecationWarning)
        lines = [SimpleNamespace(name=line.name,
                                 events=[e for e in line.events if dict(e.stats).get("device_ordinal") == ordinal])
                 for plane in host_planes for line in plane.lines]
    return SimpleNamespace(planes=[SimpleNamespace(name=HOST_PLANE, lines=lines)])


def per_device_timing(path_or_data: Any, *, module_name: str, num_calls: int, devices: Sequence[DeviceInfo],
                      wall_latency_us: float | None = None,
                      kernel_regex: str | None = capture.DEFAULT_KERNEL_REGEX) -> PerDeviceTiming:
    """Attribute ``module_name``'s time per call to each of ``devices`` (this process's).

    ``wall_latency_us``: the step's wall-clock latency, used for every device when some
    device cannot be attributed (then ``timing_source="wall"``; None: raise instead).
    """
    data = capture.load(path_or_data)
    device_planes = {plane_ordinal(p.name): p for p in data.planes if p.name.startswith("/device:")}
    others = [p for p in data.planes if not p.name.startswith("/device:")]
    hosts = [p for p in others if p.name == HOST_PLANE]
    local_ids = [d.id for d in devices]
    notes: list[str] = []
    series, kernels, planes = [], [], []
    for info in devices:
        ordinal = _ordinal(info, local_ids)
        if device_planes:
            plane = device_planes.get(ordinal)
            if plane is None:
                notes.append(f"device {info.id}: no plane for ordinal {ordinal} among {sorted(device_planes)}")
                break
            timing = capture.parse(SimpleNamespace(planes=[plane, *others]), module_name=module_name,
                                   num_calls=num_calls, kernel_regex=kernel_regex)
        else:
            timing = capture.parse(_host_view(hosts, ordinal), module_name=module_name, num_calls=num_calls,
                                   kernel_regex=kernel_regex)
        notes += [f"device {info.id}: {w}" for w in timing.warnings]
        if not timing.available:
            break
        series.append(timing.per_call_us)
        kernels.append(timing.kernel_per_call_us)
        planes.append(timing.plane if device_planes else f"{HOST_PLANE}#device_ordinal={ordinal}")
    else:
        if not device_planes:
            notes.append("forced host devices: per-device times are XLA CPU op spans on shared host cores, "
                         "not accelerator time")
        kernel = tuple(kernels) if all(k is not None for k in kernels) else None
        return PerDeviceTiming(tuple(local_ids), tuple(series), kernel, tuple(planes), "device", tuple(notes))
    if wall_latency_us is None:
        raise ValueError("per-device time not attributable and no wall_latency_us given: " + "; ".join(notes))
    return wall_timing(devices, wall_latency_us, warnings=notes)


def wall_timing(devices: Sequence[DeviceInfo], wall_latency_us: float, *, warnings: Sequence[str] = ()) -> PerDeviceTiming:
    """Every device given the step's wall time: marked ``timing_source="wall"``."""
    note = ("per-device times unavailable: each device is given the step's wall-clock latency "
            "(timing_source=wall); per-device figures and load imbalance are not measured")
    return PerDeviceTiming(
        device_ids=tuple(d.id for d in devices), per_call_us=tuple((float(wall_latency_us),) for _ in devices),
        kernel_per_call_us=None, planes=(None,) * len(devices), timing_source="wall",
        warnings=(*warnings, note),
    )


def step_device_timing(path_or_data: Any, *, module_name: str, num_calls: int, devices: Sequence[DeviceInfo],
                       kernel_regex: str | None = capture.DEFAULT_KERNEL_REGEX) -> capture.DeviceTiming:
    """``capture.parse``'s result for a sharded call: each call's time is its *slowest*
    device's (``capture.parse`` alone reads the first device plane). Not attributable:
    an empty result with the reasons, as ``capture.parse`` returns (the caller falls back
    to wall time)."""
    try:
        t = per_device_timing(path_or_data, module_name=module_name, num_calls=num_calls, devices=devices,
                              kernel_regex=kernel_regex)
    except ValueError as e:
        return capture.DeviceTiming((), None, None, 0, (str(e),))
    kernel = None
    if t.kernel_per_call_us is not None:
        kernel = tuple(max(s[i] for s in t.kernel_per_call_us) for i in range(t.num_calls))
    plane = t.planes[0] if all(str(p).startswith("/device:") for p in t.planes) else HOST_PLANE
    note = f"step time per call = slowest of {len(devices)} devices ({', '.join(str(p) for p in t.planes)})"
    return capture.DeviceTiming(t.step_per_call_us, kernel, plane, sum(len(s) for s in t.per_call_us),
                                (*t.warnings, note))
