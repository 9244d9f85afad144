"""Device time from profiler captures (``jax.profiler.trace`` -> XSpace -> per-call time).

A capture covers a few calls of one compiled function, each wrapped in a
``TraceAnnotation`` named :data:`ANNOTATION`. Device time is attributed to the events of
that function's own XLA module (``module_name``, e.g. ``jit_rpa_bench_excl_prep``):

- **TPU** (plane ``/device:TPU:N``): each event of the ``XLA Modules`` line whose name is
  the module is one call; its duration is the call's device time. The kernel alone is the
  union of the ``XLA Ops`` events inside it that match ``kernel_regex`` (the Pallas calls,
  named ``RPA{D,P,M}-p_..-bq_..-bkv_..`` by RPA v3), i.e. preprocessing separated out.
- **GPU** (plane ``/device:GPU:N``, one line per CUDA stream): the kernels launched inside
  each call's annotation whose string stats (``hlo_module``, ``kernel_annotation``, ...)
  name the module; a call's device time is the span from its first kernel's start to its
  last kernel's end. Derived lines (``XLA Modules``, ``XLA Ops``, ``Steps``, ...) are used
  the TPU way when the capture has them.
- **CPU** (no device plane): the XLA ops executed for the module on the host plane
  ``/host:CPU`` (events with ``hlo_op`` / ``hlo_module`` stats), grouped by execution
  (``run_id``); a call's time is the span of its ops.

If no events can be attributed, or their count does not match the calls captured, the
result says so in ``warnings`` and carries no per-call times: the caller falls back to the
wall clock (``timing_source="wall"``). Nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import shutil
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ANNOTATION = "rpa_bench.call"
DERIVED_LINES = frozenset({
    "Steps", "XLA Modules", "XLA Ops", "Async XLA Ops", "XLA TraceMe", "Framework Ops",
    "Framework Name Scope", "TensorFlow Ops", "TensorFlow Name Scope", "Launch Stats",
    "Source code", "Host Offload Ops", "_counters_", "Sparse Core Steps", "Sparse Core Modules",
    "Sparse Core Ops",
})
DEFAULT_KERNEL_REGEX = r"^RPA[DPM]-|ragged_paged_attention"


@dataclasses.dataclass(frozen=True)
class DeviceTiming:
    """Per-call device time attributed from one capture."""

    per_call_us: tuple[float, ...]  # the module's device time per call (empty: not attributable)
    kernel_per_call_us: tuple[float, ...] | None  # only events matching kernel_regex (TPU), else None
    plane: str | None  # the plane the events came from
    num_events: int
    warnings: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        return bool(self.per_call_us)


@dataclasses.dataclass(frozen=True)
class _Ev:
    name: str
    start_ns: float
    end_ns: float
    stats: dict

    def mentions(self, text: str) -> bool:
        return text in self.name or any(isinstance(v, str) and text in v for v in self.stats.values())


def module_name_of(compiled: Any) -> str:
    """The HLO module name of a compiled JAX function (``jit_<fn name>``)."""
    first = compiled.as_text().lstrip().splitlines()[0]
    m = re.match(r"HloModule\s+([^\s,]+)", first)
    if not m:
        raise ValueError(f"cannot read the HLO module name from {first[:80]!r}")
    return m.group(1)


def capture(
    call: Callable[[int], Any],
    num_calls: int,
    dest: Path,
    *,
    hlo: bool = False,
    block: Callable[[Any], Any] | None = None,
) -> Path:
    """Profile ``call(0) .. call(num_calls - 1)`` (each blocked on) into ``dest`` (xplane.pb)."""
    import jax

    block = block or jax.block_until_ready
    opts = jax.profiler.ProfileOptions()
    opts.python_tracer_level = 0
    opts.host_tracer_level = 2
    opts.enable_hlo_proto = hlo
    with tempfile.TemporaryDirectory(prefix="rpa_bench_capture_") as tmp:
        with jax.profiler.trace(tmp, profiler_options=opts):
            for i in range(num_calls):
                with jax.profiler.TraceAnnotation(ANNOTATION, call=i):
                    block(call(i))
        found = sorted(glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True))
        if not found:
            raise RuntimeError(f"jax.profiler.trace wrote no xplane.pb under {tmp}")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(found[-1], part)
        os.replace(part, dest)
    return dest


def load(path_or_data: Any):
    import jax

    if isinstance(path_or_data, (str, Path)):
        return jax.profiler.ProfileData.from_file(str(path_or_data))
    return path_or_data


def _events(line) -> list[_Ev]:
    with warnings.catch_warnings():  # jaxlib's stats type warns once on first use (no __module__)
        warnings.simplefilter("ignore", DeprecationWarning)
        return [_Ev(e.name, float(e.start_ns), float(e.end_ns), dict(e.stats)) for e in line.events]


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total / 1e3


def _is_module(ev: _Ev, module: str) -> bool:
    name = ev.name
    if name == module or name.startswith(module + "(") or name.startswith(module + "."):
        return True
    return ev.stats.get("hlo_module") == module


def _annotations(data) -> list[_Ev]:
    out = []
    for plane in data.planes:
        if plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            out += [e for e in _events(line) if e.name == ANNOTATION]
    return sorted(out, key=lambda e: e.start_ns)


def _from_module_line(plane, module: str, kernel_re: re.Pattern | None) -> tuple[list, list | None, int]:
    lines = {line.name: list(_events(line)) for line in plane.lines}
    mods = sorted((e for e in lines.get("XLA Modules", []) if _is_module(e, module)), key=lambda e: e.start_ns)
    ops = lines.get("XLA Ops", [])
    per_call, kernel = [], [] if kernel_re else None
    n = len(mods)
    for m in mods:
        per_call.append((m.end_ns - m.start_ns) / 1e3)
        if kernel_re is not None:
            inside = [o for o in ops if o.start_ns >= m.start_ns and o.end_ns <= m.end_ns]
            n += len(inside)
            hits = [(o.start_ns, o.end_ns) for o in inside
                    if kernel_re.search(o.name) or any(isinstance(v, str) and kernel_re.search(v) for v in o.stats.values())]
            kernel.append(_union_us(hits))
    if kernel is not None and not any(kernel):
        kernel = None
    return per_call, kernel, n


def _from_stream_lines(plane, module: str, calls: list[_Ev]) -> tuple[list, int, bool]:
    evs = [e for line in plane.lines if line.name not in DERIVED_LINES for e in _events(line)]
    named = [e for e in evs if e.mentions(module)]
    by_module = bool(named)
    pool = named if by_module else evs
    per_call, n = [], 0
    for a in calls:
        inside = [e for e in pool if e.start_ns >= a.start_ns and e.end_ns <= a.end_ns]
        if not inside:
            return [], n, by_module
        n += len(inside)
        per_call.append((max(e.end_ns for e in inside) - min(e.start_ns for e in inside)) / 1e3)
    return per_call, n, by_module


def _from_host_ops(data, module: str) -> tuple[list, int]:
    runs: dict[Any, list[_Ev]] = defaultdict(list)
    for plane in data.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for e in _events(line):
                if "hlo_op" in e.stats and e.stats.get("hlo_module") == module:
                    runs[e.stats.get("run_id")].append(e)
    groups = sorted(runs.values(), key=lambda g: min(e.start_ns for e in g))
    per_call = [(max(e.end_ns for e in g) - min(e.start_ns for e in g)) / 1e3 for g in groups]
    return per_call, sum(len(g) for g in groups)


def parse(path_or_data: Any, *, module_name: str, num_calls: int, kernel_regex: str | None = DEFAULT_KERNEL_REGEX) -> DeviceTiming:
    """Attribute device time per call to ``module_name`` (see the module docstring)."""
    data = load(path_or_data)
    kernel_re = re.compile(kernel_regex) if kernel_regex else None
    notes: list[str] = []
    devices = sorted((p for p in data.planes if p.name.startswith("/device:")), key=lambda p: p.name)
    calls = _annotations(data)
    for plane in devices:
        line_names = {line.name for line in plane.lines}
        if "XLA Modules" in line_names:
            per_call, kernel, n = _from_module_line(plane, module_name, kernel_re)
        else:
            per_call, n, by_module = _from_stream_lines(plane, module_name, calls)
            kernel = None
            if per_call and not by_module:
                notes.append(
                    f"{plane.name}: device events carry no stat naming {module_name}; attributed every "
                    f"device event inside each call's '{ANNOTATION}' annotation"
                )
        if not per_call:
            continue
        if len(per_call) != num_calls:
            notes.append(
                f"{plane.name}: found {len(per_call)} executions of {module_name} for {num_calls} "
                "captured calls; device time not attributed (timing_source=wall)"
            )
            return DeviceTiming((), None, plane.name, n, tuple(notes))
        if len(devices) > 1:
            notes.append(f"{len(devices)} device planes; device time taken from {plane.name}")
        return DeviceTiming(tuple(per_call), tuple(kernel) if kernel else None, plane.name, n, tuple(notes))
    if devices:
        notes.append(
            f"device plane(s) {[p.name for p in devices]} hold no events of {module_name}; "
            "timing_source=wall"
        )
        return DeviceTiming((), None, None, 0, tuple(notes))
    per_call, n = _from_host_ops(data, module_name)
    if not per_call:
        notes.append(
            f"capture has no device plane and no XLA op events of {module_name} on /host:CPU; "
            "timing_source=wall"
        )
        return DeviceTiming((), None, None, 0, tuple(notes))
    if len(per_call) != num_calls:
        notes.append(
            f"/host:CPU: found {len(per_call)} executions of {module_name} for {num_calls} captured "
            "calls; device time not attributed (timing_source=wall)"
        )
        return DeviceTiming((), None, "/host:CPU", n, tuple(notes))
    return DeviceTiming(tuple(per_call), None, "/host:CPU", n, tuple(notes))
