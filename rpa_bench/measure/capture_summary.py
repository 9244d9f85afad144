"""What a capture holds: devices, programs, and per program per device the per-call time.

The library side of ``rpa-bench capture``: works on any capture (the suite's own, or one
taken by a serving engine), with or without the suite's call annotations. Every figure
comes from :mod:`.capture`'s attribution rules, so the numbers match a run's rows.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import statistics
from typing import Any

from rpa_bench.measure import capture, xspace


@dataclasses.dataclass(frozen=True)
class ProgramTiming:
    """One program on one device: its executions' per-call times (us)."""

    device: str  # plane label: TPU:0, GPU:3, /host:CPU
    program: str
    calls: int
    basis: str  # module_event | kernel_busy | host_ops
    per_call_us: tuple[float, ...]  # TPU: module event; GPU: kernels' busy time; CPU: span of host ops
    span_us: tuple[float, ...] | None  # GPU: first kernel start -> last kernel end
    kernel_us: tuple[float, ...] | None  # union of ops matching the kernel regex
    events_per_call: tuple[int, ...]
    warnings: tuple[str, ...]

    def stat(self, values: tuple[float, ...] | None, how: str) -> float | None:
        if not values:
            return None
        return float({"median": statistics.median, "mean": statistics.fmean, "min": min, "max": max}[how](values))

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("per_call_us", "span_us", "kernel_us"):
            d[f"{key}_median"] = self.stat(getattr(self, key), "median")
            d[f"{key}_mean"] = self.stat(getattr(self, key), "mean")
        return d


@dataclasses.dataclass(frozen=True)
class CaptureSummary:
    source: str | None
    devices: tuple[dict, ...]  # name, kind, ordinal, device type
    ignored_planes: tuple[str, ...]
    annotated_calls: int  # the suite's call annotations (0: not a suite capture)
    programs: tuple[ProgramTiming, ...]
    notes: tuple[str, ...]
    complete: bool = True  # the capture's last plane was found (not cut short)
    available: tuple[str, ...] = ()  # every program in the capture (what --module can name)
    missing_module: str | None = None  # --module named a program this capture does not have

    def as_dict(self) -> dict:
        return {"source": self.source, "devices": list(self.devices), "ignored_planes": list(self.ignored_planes),
                "annotated_calls": self.annotated_calls, "programs": [p.as_dict() for p in self.programs],
                "notes": list(self.notes), "complete": self.complete, "available_programs": list(self.available),
                "missing_module": self.missing_module}


def _device_type(plane: xspace.Plane) -> str | None:
    for key in ("device_type_string", "device_vendor"):
        v = plane.stats.get(key)
        if isinstance(v, str) and v:
            return v
    return None


def program_names(space: xspace.Space) -> dict[str, list[str]]:
    """Per device plane label (or ``/host:CPU`` without device planes): the programs seen, by count."""
    out: dict[str, list[str]] = {}
    for p in space.device_planes:
        counts: collections.Counter = collections.Counter()
        if p.kind == "tpu" or "XLA Modules" in p.lines:
            counts.update(xspace.module_of(e.name)[0] for e in p.lines.get("XLA Modules", ()))
        if p.kind == "gpu":
            counts.update(e.stats["hlo_module"] for e in p.events(derived=False)
                          if isinstance(e.stats.get("hlo_module"), str))
        out[p.label] = [name for name, _ in counts.most_common()]
    if not space.device_planes:
        counts = collections.Counter(e.stats["hlo_module"] for hp in space.host_planes if hp.name == xspace.HOST_PLANE
                                     for e in hp.events() if "hlo_op" in e.stats and isinstance(e.stats.get("hlo_module"), str))
        out[xspace.HOST_PLANE] = [name for name, _ in counts.most_common()]
    return out


def summarize_capture(path_or_data: Any, *, module: str | None = None,
                      kernel_regex: str | None = None) -> CaptureSummary:
    """Per program (or only ``module``) per device: calls and per-call times."""
    space = xspace.read(path_or_data)
    if kernel_regex is not None:
        re.compile(kernel_regex)  # a bad regex is the caller's error, raised before the work
    names = program_names(space)
    available = tuple(dict.fromkeys(n for ns in names.values() for n in ns))
    missing = module if module and module not in available else None
    wanted = ([] if missing else [module]) if module else list(available)
    notes: list[str] = []
    if missing:
        notes.append(f"--module {module}: no such program in this capture; its programs: "
                     + (", ".join(available) or "none"))
    if not space.complete:
        notes.append(f"the capture ends without its '{xspace.TASK_ENVIRONMENT}' plane (the profiler writes it "
                     f"last): it was cut short and may lack devices ({len(space.device_planes)} device planes read)")
    programs: list[ProgramTiming] = []
    for name in wanted:
        timings = capture.module_timings(space, name, kernel_regex=kernel_regex)
        if not timings:
            notes.append(f"{name}: no executions in this capture; not attributable")
            continue
        for t in timings:
            label = t.plane.removeprefix("/device:")
            programs.append(ProgramTiming(
                device=label, program=name, calls=len(t.executions), basis=t.basis, per_call_us=t.busy_us,
                span_us=t.span_us if t.kind == "gpu" else None, kernel_us=t.kernel_us,
                events_per_call=tuple(e.num_events for e in t.executions), warnings=t.warnings))
    if not space.device_planes:
        notes.append("no TPU/GPU device plane: times are XLA CPU op spans on host threads, not accelerator time")
    windows = space.annotations()
    if windows:
        notes.append(f"{len(windows)} '{xspace.ANNOTATION}' call annotations: executions outside them are not counted")
    devices = tuple({"name": p.name, "kind": p.kind, "ordinal": p.ordinal, "device_type": _device_type(p)}
                    for p in space.device_planes)
    return CaptureSummary(space.source, devices, space.ignored_planes, len(windows), tuple(programs), tuple(notes),
                          complete=space.complete, available=available, missing_module=missing)
