"""One run of a plan into a run folder: open (or resume) it, measure what is missing, and
close it as complete, interrupted or failed. ``rpa-bench run`` adds multi-host joining,
signals and printing around these steps; ``history`` calls :func:`run_plan`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from rpa_bench.measure.environment import load_average
from rpa_bench.pipeline import execute, prepare, run_folder
from rpa_bench.pipeline.plan import RunPlan
from rpa_bench.pipeline.prepare import PreparedRun
from rpa_bench.store.rows import now_utc
from rpa_bench.store.run_store import RunStore


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    status: str  # complete | interrupted | failed
    reason: str | None = None  # failed: why (a part could not be written)


def open_run(store: RunStore, config: dict, prep: PreparedRun, run_id: str, *, command: list[str]) -> set:
    """Start or resume the run in ``store`` (the writer's job; a different config is refused
    with ValueError); returns the (workload, point, kernel) keys already stored."""
    run_folder.open_store(store, config, prep, run_id, command=command)
    return set(store.done_keys())


def measure_into(prep: PreparedRun, store: RunStore, *, run_id: str, done: set, progress: bool = False,
                 should_stop: Callable[[], bool] = lambda: False) -> RunOutcome:
    """Measure what ``done`` lacks into ``store``. An interrupt (Ctrl-C, or SIGTERM turned into
    one) marks the run ``interrupted``; a part that cannot be written marks it ``failed``;
    either way the parts already written are kept and a rerun resumes."""
    try:
        execute.execute(prep, store, run_id=run_id, progress=progress, should_stop=should_stop, done=done)
    except KeyboardInterrupt:
        store.update_manifest(status="interrupted", interrupted_utc=now_utc())
        return RunOutcome("interrupted")
    except OSError as exc:  # disk full, read-only folder: measured parts are kept
        reason = f"{type(exc).__name__}: {exc}"
        try:
            store.update_manifest(status="failed", failed_utc=now_utc(), failure=reason)
        except OSError:
            pass
        return RunOutcome("failed", reason)
    store.consolidate()
    return RunOutcome("complete")


def complete_run(store: RunStore, **facts) -> pd.DataFrame:
    """Mark the run complete with its closing facts (wall time, phases, ...); its rows."""
    store.update_manifest(status="complete", completed_utc=now_utc(), load_average_end=load_average(), **facts)
    return store.read()


def run_plan(plan: RunPlan, config: dict, *, run_dir: Path | None = None, run_id: str | None = None,
             command: list[str] | None = None, progress: bool = False) -> pd.DataFrame:
    """Measure ``plan`` into ``run_dir`` (default ``plan.run_dir``), resuming what is stored
    there; returns the run's rows. Config problems raise ``ValueError`` before any work; an
    interrupt is re-raised (the run is marked interrupted), a write failure raises OSError."""
    run_dir = Path(run_dir or plan.run_dir)
    run_id = run_id or plan.run_name
    prep = prepare.prepare_run(plan)
    store = RunStore(run_dir)
    store.acquire_lock()
    try:
        done = open_run(store, config, prep, run_id, command=list(command or []))
        outcome = measure_into(prep, store, run_id=run_id, done=done, progress=progress)
        if outcome.status == "interrupted":
            raise KeyboardInterrupt("interrupted")
        if outcome.status == "failed":
            raise OSError(outcome.reason)
        return complete_run(store)
    finally:
        store.release_lock()
