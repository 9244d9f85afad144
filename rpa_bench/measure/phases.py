"""Where a run's wall time goes: exclusive seconds per phase, per (point, kernel, variant)
and for the run as a whole.

Code marks its work with ``with phase("compile"):``; nested phases are exclusive (the
inner phase's time is not counted in the outer one). Time is added to every accumulator in
scope (:func:`scope`): the run's, and the current (point, kernel, variant)'s. Outside any
scope ``phase`` costs one context-variable read. Phases: start-up, workload build,
materialise, reference, compile, check, warm-up, calibration, timed samples, capture,
capture parse, statistics, store write, report; "other" is what no phase covers.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections import defaultdict
from collections.abc import Iterator

from rpa_bench import IMPORTED_AT

PHASES = ("start-up", "workload build", "materialise", "reference", "compile", "check", "warm-up", "calibration",
          "timed samples", "capture", "capture parse", "statistics", "store write", "report")
MEASURED_WORK = ("compile", "warm-up", "timed samples")  # what a run is for: the overhead ratio's denominator
# Set when rpa_bench is first imported: start-up is counted from here (interpreter start
# itself, ~50 ms, is before it).
_IMPORTED = IMPORTED_AT
_clock = time.perf_counter  # the phase clock (tests substitute a deterministic one)


class Account:
    """Exclusive seconds per phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items() if v > 0}

    def total(self) -> float:
        return float(sum(self.seconds.values()))


_accounts: contextvars.ContextVar[tuple[Account, ...]] = contextvars.ContextVar("rpa_bench_accounts", default=())
_stack: contextvars.ContextVar[tuple[list, ...]] = contextvars.ContextVar("rpa_bench_phase_stack", default=())


@contextlib.contextmanager
def scope(account: Account) -> Iterator[Account]:
    """Phases inside also count in ``account``."""
    token = _accounts.set((*_accounts.get(), account))
    try:
        yield account
    finally:
        _accounts.reset(token)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the block's exclusive wall time as ``name`` in every account in scope."""
    accounts = _accounts.get()
    if not accounts:
        yield
        return
    frame = [name, _clock(), 0.0]  # name, start, time spent in nested phases
    stack = _stack.get()
    token = _stack.set((*stack, frame))
    try:
        yield
    finally:
        _stack.reset(token)
        elapsed = _clock() - frame[1]
        for acc in accounts:
            acc.add(name, elapsed - frame[2])
        if stack:
            stack[-1][2] += elapsed


def credit(name: str, seconds: float) -> None:
    """Count ``seconds`` of the enclosing phase's time as ``name`` instead (e.g. the kernel's
    own time inside a capture session, whose rest is the profiler's cost)."""
    accounts, stack = _accounts.get(), _stack.get()
    if not accounts or seconds <= 0:
        return
    for acc in accounts:
        acc.add(name, seconds)
    if stack:
        stack[-1][2] += seconds


def since_import() -> float:
    """Seconds since rpa_bench was imported (the run's start-up, when taken at its first work)."""
    return time.perf_counter() - _IMPORTED


def overhead_ratio(seconds: dict[str, float], wall_s: float) -> float | None:
    """(wall - start-up) / (compile + warm-up + timed samples): 1.0 = nothing but measured work."""
    work = sum(seconds.get(k, 0.0) for k in MEASURED_WORK)
    return None if work <= 0 else (wall_s - seconds.get("start-up", 0.0)) / work


def one_line(seconds: dict[str, float], wall_s: float) -> str:
    parts = [f"{k} {seconds[k]:.1f}" for k in (*PHASES, "other") if seconds.get(k, 0.0) >= 0.05]
    ratio = overhead_ratio(seconds, wall_s)
    tail = "" if ratio is None else f"; overhead {ratio:.2f}x of compile+warm-up+samples (start-up excluded)"
    return f"time (s): {', '.join(parts)}; wall {wall_s:.1f}{tail}"
