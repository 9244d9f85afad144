"""Device time from profiler captures: one module's executions, per device, per call.

A capture (XSpace, read by :mod:`.xspace`) covers a few calls of one compiled function;
the suite wraps each in a ``TraceAnnotation`` named :data:`ANNOTATION`. Device time is
attributed to the executions of that function's XLA module (``module_name``, e.g.
``jit_rpa_bench_excl_prep``), compared by **equality** of module names:

- **TPU** (``/device:TPU:N``): each ``XLA Modules`` event of the module is one execution;
  its duration (times the ``time_scale_multiplier`` clock-scaling stat when present) is the
  call's device time. The kernel alone is the union of the ``XLA Ops`` events inside it
  whose short name (the HLO instruction's ``%name``; see :func:`.xspace.display_name`) or
  stats match ``kernel_regex`` (RPA v3's Pallas calls are ``RPAd-...``, ``RPAp-...``,
  ``RPAm-...``): preprocessing separated out.
- **GPU** (``/device:GPU:N``, one line per stream): the kernels whose ``hlo_module`` stat
  equals the module. They are grouped into executions by the host's
  ``GpuExecutable::ExecuteThunks`` events (``module_name`` stat) through the launches'
  ``correlation_id``, or, in captures without them, by the suite's call annotations. Per
  call two figures: **busy** (the union of the kernels' intervals: the device time the
  kernels took) and **span** (first kernel start -> last kernel end, which adds the launch
  gaps the profiler itself widens). ``per_call_us`` is the busy time (docs/captures.md says
  why); the span is kept beside it.
- **CPU** (no device plane): the XLA ops executed for the module on ``/host:CPU`` (events
  with ``hlo_op`` / ``hlo_module`` stats), grouped by execution (``run_id``); a call's time
  is the span of its ops (host threads, not accelerator time).

Where the suite's annotations exist, executions outside them are not counted. A plane is
used only if it holds executions of the module (or is the device the call ran on); per-call
event counts are checked against each other and shortfalls flagged; a kernel regex that
matches nothing inside a module that exists is said. When nothing can be attributed, or
the count of executions differs from the calls captured, the result has no per-call times
and says why in ``warnings`` (the caller falls back to the wall clock). Nothing is guessed.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rpa_bench.measure import xspace
from rpa_bench.measure.phases import credit
from rpa_bench.measure.xspace import ANNOTATION, Event, Plane, Space, union_us

# RPA v3 names its Pallas calls RPAd-/RPAp-/RPAm- (decode, prefill, mixed); older
# revisions and JAX's kernel carry ragged_paged_attention in their names or tf_op.
DEFAULT_KERNEL_REGEX = r"^RPA[dpmDPM]-|ragged_paged_attention"
GPU_EXECUTION_EVENT = "GpuExecutable::ExecuteThunks"


@dataclasses.dataclass(frozen=True)
class Execution:
    """One execution of a module on one device."""

    start_ns: float
    end_ns: float
    busy_us: float  # TPU: the module event; GPU: union of its kernels; CPU: span of its ops
    span_us: float  # first event start -> last event end (TPU: = busy)
    num_events: int  # ops (TPU, CPU) or kernels (GPU) inside it
    kernel_us: float | None = None  # union of the events matching the kernel regex (None: no regex)
    kernel_events: int = 0


@dataclasses.dataclass(frozen=True)
class PlaneTiming:
    """A module's executions on one plane (one device), in time order."""

    plane: str
    kind: str  # tpu | gpu | cpu
    module: str
    executions: tuple[Execution, ...]
    basis: str  # module_event | kernel_busy | host_ops
    warnings: tuple[str, ...] = ()

    @property
    def busy_us(self) -> tuple[float, ...]:
        return tuple(e.busy_us for e in self.executions)

    @property
    def span_us(self) -> tuple[float, ...]:
        return tuple(e.span_us for e in self.executions)

    @property
    def kernel_us(self) -> tuple[float, ...] | None:
        if not self.executions or any(e.kernel_us is None for e in self.executions):
            return None
        if not any(e.kernel_events for e in self.executions):
            return None
        return tuple(float(e.kernel_us) for e in self.executions)

    @property
    def num_events(self) -> int:
        return sum(e.num_events for e in self.executions)


@dataclasses.dataclass(frozen=True)
class DeviceTiming:
    """Per-call device time attributed from one capture (one device)."""

    per_call_us: tuple[float, ...]  # the module's device time per call (empty: not attributable)
    kernel_per_call_us: tuple[float, ...] | None  # only events matching kernel_regex, else None
    plane: str | None  # the plane the events came from
    num_events: int
    warnings: tuple[str, ...] = ()
    span_per_call_us: tuple[float, ...] | None = None  # GPU: first kernel start -> last kernel end
    basis: str | None = None  # module_event | kernel_busy | host_ops

    @property
    def available(self) -> bool:
        return bool(self.per_call_us)


def module_name_of(compiled: Any) -> str:
    """The HLO module name of a compiled JAX function (``jit_<fn name>``)."""
    first = compiled.as_text().lstrip().splitlines()[0]
    m = re.match(r"HloModule\s+([^\s,]+)", first)
    if not m:
        raise ValueError(f"cannot read the HLO module name from {first[:80]!r}")
    return m.group(1)


PROFILE_DIR = ("plugins", "profile")  # where xprof and TensorBoard look for sessions under a logdir


def session_path(captures_root: Path, session: str) -> Path:
    """Where a capture is stored so that xprof / TensorBoard list it as a session:
    ``<captures_root>/plugins/profile/<session>/<host>.xplane.pb`` (``xprof --logdir
    <captures_root>``; ``rpa-bench xprof RUN`` starts it)."""
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname()) or "host"
    return Path(captures_root).joinpath(*PROFILE_DIR, session, f"{host}.xplane.pb")


class CaptureNotKept(OSError):
    """The capture was taken but could not be written to its destination (read-only folder,
    disk full); ``space`` holds it, read, so the measurement keeps its device time."""

    def __init__(self, message: str, space: Space):
        super().__init__(message)
        self.space = space


def capture(
    call: Callable[[int], Any],
    num_calls: int,
    dest: Path,
    *,
    hlo: bool = False,
    block: Callable[[Any], Any] | None = None,
) -> Path:
    """Profile ``call(0) .. call(num_calls - 1)`` (each blocked on) into ``dest`` (xplane.pb)."""
    return capture_programs([(call, contextlib.nullcontext, 0.0)], num_calls, dest, hlo=hlo, block=block)


def capture_programs(
    programs: Sequence[tuple[Callable[[int], Any], Callable[[], contextlib.AbstractContextManager], float]],
    num_calls: int,
    dest: Path,
    *,
    hlo: bool = False,
    block: Callable[[Any], Any] | None = None,
) -> Path:
    """One profiler session for several programs (e.g. every kernel and variant of a point):
    each ``(call, context, seconds)`` makes ``num_calls`` annotated calls in turn, inside its
    context. Device time is read per program (its own module), so one session serves all of
    them, and the session's start-up and write are paid once. ``seconds``: the program's
    per-call time without the profiler; up to that much of each call is counted as timed
    samples (the device-time samples), the rest (the profiler's own slowdown) as capture."""
    import jax

    block = block or jax.block_until_ready
    opts = jax.profiler.ProfileOptions()
    opts.python_tracer_level = 0
    opts.host_tracer_level = 2
    opts.enable_hlo_proto = hlo
    with tempfile.TemporaryDirectory(prefix="rpa_bench_capture_") as tmp:
        with jax.profiler.trace(tmp, profiler_options=opts):
            for call, context, seconds in programs:
                with context():
                    for i in range(num_calls):
                        with jax.profiler.TraceAnnotation(ANNOTATION, call=i):
                            t0 = time.perf_counter()
                            block(call(i))
                            credit("timed samples", min(time.perf_counter() - t0, seconds))
        found = sorted(glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True))
        if not found:
            raise RuntimeError(f"jax.profiler.trace wrote no xplane.pb under {tmp}")
        dest = Path(dest)
        part = dest.with_name(dest.name + ".tmp")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found[-1], part)
            os.replace(part, dest)
        except OSError as err:
            raise CaptureNotKept(f"{type(err).__name__}: {err}", xspace.read(found[-1])) from None
        finally:
            try:
                part.unlink(missing_ok=True)
            except OSError:
                pass
    return dest


# ---------------------------------------------------------------- attribution per plane


def _in_windows(t_ns: float, windows: Sequence[tuple[float, float]] | None) -> bool:
    return windows is None or any(s <= t_ns <= e for s, e in windows)


def _overlaps(s_ns: float, e_ns: float, windows: Sequence[tuple[float, float]] | None) -> bool:
    return windows is None or any(s_ns <= we and e_ns >= ws for ws, we in windows)


def _matches(ev: Event, kernel_re: re.Pattern | None) -> bool:
    return kernel_re is not None and any(kernel_re.search(t) for t in ev.texts())


def _count_warnings(label: str, module: str, execs: Sequence[Execution], what: str) -> list[str]:
    if not execs:
        return []
    counts = collections.Counter(e.num_events for e in execs)
    top = max(counts.values())
    expected = max(n for n, c in counts.items() if c == top)  # the usual count (ties: the larger)
    short = [(i, e.num_events) for i, e in enumerate(execs) if e.num_events < expected]
    if not short:
        return []
    listed = ", ".join(f"call {i}: {n} of {expected}" for i, n in short[:6])
    more = f" (+{len(short) - 6} more)" if len(short) > 6 else ""
    return [f"{label}: {len(short)} of {len(execs)} executions of {module} have fewer {what} than the usual "
            f"({listed}{more}): events lost by the profiler; those calls' times are incomplete"]


def _regex_warning(label: str, module: str, execs: Sequence[Execution], kernel_re: re.Pattern | None,
                   what: str) -> list[str]:
    if kernel_re is None or not execs or any(e.kernel_events for e in execs):
        return []
    return [f"{label}: kernel regex {kernel_re.pattern!r} matched none of the {sum(e.num_events for e in execs)} "
            f"{what} inside {len(execs)} executions of {module}; no kernel-only time"]


def _tpu_timing(plane: Plane, module: str, kernel_re: re.Pattern | None,
                windows: Sequence[tuple[float, float]] | None) -> PlaneTiming | None:
    mods = sorted((e for e in plane.lines.get("XLA Modules", ()) if xspace.module_of(e.name)[0] == module),
                  key=lambda e: e.start_ns)
    if not mods:
        return None
    mods = [m for m in mods if _overlaps(m.start_ns, m.end_ns, windows)]
    ops = sorted(plane.lines.get("XLA Ops", ()), key=lambda e: e.start_ns)
    execs, scaled = [], False
    for m in mods:
        scale = m.scale or 1.0
        scaled |= m.scale is not None
        inside = [o for o in ops if o.start_ns >= m.start_ns and o.end_ns <= m.end_ns]
        hits = [o for o in inside if _matches(o, kernel_re)]
        op_scale = next((o.scale for o in inside if o.scale is not None), None) or scale
        dur = (m.end_ns - m.start_ns) / 1e3 * scale
        execs.append(Execution(
            m.start_ns, m.end_ns, dur, dur, len(inside),
            None if kernel_re is None else union_us([(o.start_ns, o.end_ns) for o in hits]) * op_scale,
            len(hits)))
    notes = _count_warnings(plane.label, module, execs, "XLA ops")
    notes += _regex_warning(plane.label, module, execs, kernel_re, "XLA ops")
    if scaled:
        notes.append(f"{plane.label}: durations scaled by the capture's time_scale_multiplier (TPU clock scaling)")
    return PlaneTiming(plane.name, "tpu", module, tuple(execs), "module_event", tuple(notes))


def _gpu_host_executions(space: Space, module: str,
                         windows: Sequence[tuple[float, float]] | None) -> dict[Any, int] | None:
    """correlation_id -> execution index, from the host's execution events and kernel launches.

    XLA:GPU runs each execution inside a host ``GpuExecutable::ExecuteThunks`` event (one
    line per executing thread); the driver's launch events (``correlation_id``, the same id
    as the kernel's on the device plane) are recorded on the launching thread's own line.
    Several devices' executions overlap in time, so each launch line is first paired with
    the execution line whose windows hold most of its launches, and a launch is assigned to
    the window of *that* line containing it.
    """
    execs: list[tuple[str, float, float]] = []
    for p in space.host_planes:
        for line, evs in p.lines.items():
            for e in evs:
                if e.name == GPU_EXECUTION_EVENT and e.stats.get("module_name") == module:
                    if _in_windows(e.start_ns, windows):
                        execs.append((p.name + "/" + line, e.start_ns, e.end_ns))
    if not execs:
        return None
    execs.sort(key=lambda x: x[1])
    by_line: dict[str, list[int]] = collections.defaultdict(list)
    for i, (key, _, _) in enumerate(execs):
        by_line[key].append(i)
    launches: dict[str, list[Event]] = collections.defaultdict(list)
    for p in space.host_planes:
        for line, evs in p.lines.items():
            for ev in evs:
                if ev.stats.get("correlation_id") is not None:
                    launches[p.name + "/" + line].append(ev)

    def inside(ev: Event, idx: list[int]) -> int | None:
        for i in idx:
            if execs[i][1] <= ev.start_ns <= execs[i][2]:
                return i
        return None

    corr: dict[Any, int] = {}
    for evs in launches.values():
        votes = collections.Counter(key for key, idx in by_line.items() for ev in evs if inside(ev, idx) is not None)
        if not votes:
            continue
        owner = votes.most_common(1)[0][0]
        for ev in evs:
            i = inside(ev, by_line[owner])
            if i is not None:
                corr[ev.stats["correlation_id"]] = i
    return corr


def _gpu_timing(space: Space, plane: Plane, module: str, kernel_re: re.Pattern | None,
                windows: Sequence[tuple[float, float]] | None,
                host_corr: dict[Any, int] | None) -> PlaneTiming | None:
    kernels = sorted((e for e in plane.events(derived=False) if e.stats.get("hlo_module") == module),
                     key=lambda e: e.start_ns)
    if not kernels:
        return None
    notes: list[str] = []
    groups: dict[int, list[Event]] = collections.defaultdict(list)
    if host_corr is not None:
        lost = 0
        for k in kernels:
            idx = host_corr.get(k.stats.get("correlation_id"))
            if idx is None:
                lost += 1
            else:
                groups[idx].append(k)
        if lost and windows is None:
            notes.append(f"{plane.label}: {lost} kernels of {module} not linked to a host execution")
    elif windows is not None:
        for k in kernels:
            for i, (s, e) in enumerate(windows):
                if s <= k.start_ns <= e:
                    groups[i].append(k)
                    break
    else:
        return PlaneTiming(plane.name, "gpu", module, (), "kernel_busy", (
            f"{plane.label}: {len(kernels)} kernels of {module}, but the capture has no "
            f"{GPU_EXECUTION_EVENT} events and no '{ANNOTATION}' annotations: calls cannot be told apart",))
    execs = []
    for i in sorted(groups):
        g = groups[i]
        hits = [k for k in g if _matches(k, kernel_re)]
        start, end = min(k.start_ns for k in g), max(k.end_ns for k in g)
        execs.append(Execution(start, end, union_us([(k.start_ns, k.end_ns) for k in g]), (end - start) / 1e3,
                               len(g), None if kernel_re is None else union_us([(k.start_ns, k.end_ns) for k in hits]),
                               len(hits)))
    execs.sort(key=lambda e: e.start_ns)
    notes += _count_warnings(plane.label, module, execs, "kernels")
    notes += _regex_warning(plane.label, module, execs, kernel_re, "kernels")
    return PlaneTiming(plane.name, "gpu", module, tuple(execs), "kernel_busy", tuple(notes))


def host_timing(space: Space, module: str, *, kernel_re: re.Pattern | None = None,
                windows: Sequence[tuple[float, float]] | None = None,
                device_ordinal: int | None = None) -> PlaneTiming | None:
    """CPU: the module's XLA op events on ``/host:CPU`` grouped by ``run_id`` (forced host
    devices: only the ops tagged with ``device_ordinal``)."""
    runs: dict[Any, list[Event]] = collections.defaultdict(list)
    for p in space.host_planes:
        if p.name != xspace.HOST_PLANE:
            continue
        for e in p.events():
            if "hlo_op" in e.stats and e.stats.get("hlo_module") == module:
                if device_ordinal is None or e.stats.get("device_ordinal") == device_ordinal:
                    runs[e.stats.get("run_id")].append(e)
    if not runs:
        return None
    execs = []
    for g in runs.values():
        start, end = min(e.start_ns for e in g), max(e.end_ns for e in g)
        if not _overlaps(start, end, windows):
            continue
        hits = [e for e in g if _matches(e, kernel_re)]
        execs.append(Execution(start, end, (end - start) / 1e3, (end - start) / 1e3, len(g),
                               None if kernel_re is None else union_us([(e.start_ns, e.end_ns) for e in hits]),
                               len(hits)))
    execs.sort(key=lambda e: e.start_ns)
    plane = xspace.HOST_PLANE if device_ordinal is None else f"{xspace.HOST_PLANE}#device_ordinal={device_ordinal}"
    return PlaneTiming(plane, "cpu", module, tuple(execs), "host_ops")


def plane_timing(space: Space, plane: Plane, module: str, *, kernel_re: re.Pattern | None = None,
                 windows: Sequence[tuple[float, float]] | None = None,
                 host_corr: Any = False) -> PlaneTiming | None:
    """The module's executions on one device plane; None when the plane holds none of its events."""
    if plane.kind == "tpu" or "XLA Modules" in plane.lines and plane.kind != "gpu":
        return _tpu_timing(plane, module, kernel_re, windows)
    if host_corr is False:
        host_corr = _gpu_host_executions(space, module, windows)
    return _gpu_timing(space, plane, module, kernel_re, windows, host_corr)


def missing_on(space: Space, plane: Plane, module: str) -> str:
    """Why ``plane`` gives no time for ``module``, naming the planes that do hold it."""
    others = [p.label for p in space.device_planes if p is not plane and plane_timing(space, p, module) is not None]
    return f"{plane.name} holds no events of {module}" + (f" (it ran on {others})" if others else "")


def call_windows(space: Space) -> list[tuple[float, float]] | None:
    """The suite's call annotations, or None when the capture has none (not one of ours)."""
    return space.annotations() or None


def module_timings(space: Space, module: str, *, kernel_regex: str | None = None) -> list[PlaneTiming]:
    """The module's timing on every device plane that holds it (CPU: the host ops), natural order."""
    kernel_re = re.compile(kernel_regex) if kernel_regex else None
    windows = call_windows(space)
    out: list[PlaneTiming] = []
    host_corr: Any = False
    for plane in space.device_planes:
        if plane.kind == "gpu" and host_corr is False:
            host_corr = _gpu_host_executions(space, module, windows)
        t = plane_timing(space, plane, module, kernel_re=kernel_re, windows=windows, host_corr=host_corr)
        if t is not None and (t.executions or t.warnings):
            out.append(t)
    if not space.device_planes:
        t = host_timing(space, module, kernel_re=kernel_re, windows=windows)
        if t is not None:
            out.append(t)
    return out


def _unattributed(reason: str, plane: str | None = None, n: int = 0, notes: Sequence[str] = ()) -> DeviceTiming:
    return DeviceTiming((), None, plane, n, (*notes, reason))


def to_device_timing(t: PlaneTiming, num_calls: int | None, notes: Sequence[str] = ()) -> DeviceTiming:
    """A plane's timing as the run's :class:`DeviceTiming` (count-checked against ``num_calls``)."""
    notes = [*notes, *t.warnings]
    if not t.executions:
        return _unattributed(f"{t.plane}: no execution of {t.module} attributable; timing_source=wall", t.plane,
                             0, notes)
    if num_calls is not None and len(t.executions) != num_calls:
        return _unattributed(
            f"{t.plane}: found {len(t.executions)} executions of {t.module} for {num_calls} captured calls; "
            "device time not attributed (timing_source=wall)", t.plane, t.num_events, notes)
    span = t.span_us if t.kind == "gpu" else None
    return DeviceTiming(t.busy_us, t.kernel_us, t.plane, t.num_events, tuple(notes), span, t.basis)


def parse(path_or_data: Any, *, module_name: str, num_calls: int | None,
          kernel_regex: str | None = DEFAULT_KERNEL_REGEX, device: tuple[str, int] | None = None) -> DeviceTiming:
    """Attribute device time per call to ``module_name`` on one device.

    ``device``: (``tpu`` | ``gpu``, ordinal) the call ran on; that plane is used (or nothing).
    Without it, the one device plane holding the module's executions is used; if several
    do, the first in device order, with a warning naming the others.
    """
    space = xspace.read(path_or_data)
    kernel_re = re.compile(kernel_regex) if kernel_regex else None
    windows = call_windows(space)
    notes: list[str] = []
    devices = space.device_planes  # TPU/GPU planes only: /device:CUSTOM:* and the like are never candidates
    if not devices:
        t = host_timing(space, module_name, kernel_re=kernel_re, windows=windows)
        if t is None or not t.executions:
            return _unattributed(f"capture has no device plane and no XLA op events of {module_name} on "
                                 f"{xspace.HOST_PLANE}; timing_source=wall")
        return to_device_timing(t, num_calls)
    if device is not None:
        plane = space.plane(*device)
        if plane is None:
            return _unattributed(f"no plane /device:{device[0].upper()}:{device[1]} in the capture (planes: "
                                 f"{[p.name for p in devices]}); timing_source=wall")
        t = plane_timing(space, plane, module_name, kernel_re=kernel_re, windows=windows)
        if t is None:
            return _unattributed(f"{missing_on(space, plane, module_name)}; timing_source=wall", plane.name)
        return to_device_timing(t, num_calls)
    found = module_timings(space, module_name, kernel_regex=kernel_regex)
    found = [t for t in found if t.executions]
    if not found:
        return _unattributed(f"device plane(s) {[p.name for p in devices]} hold no events of {module_name}; "
                             "timing_source=wall")
    if len(found) > 1:
        notes.append(f"{len(found)} device planes hold executions of {module_name}; device time taken from "
                     f"{found[0].plane} (others: {', '.join(t.plane for t in found[1:])})")
    return to_device_timing(found[0], num_calls, notes)
