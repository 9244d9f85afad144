"""One run of a plan into a run folder, in this process: prepare, open (or resume) the
folder, execute, consolidate. What commands that drive whole runs (``history``) call; the
``run`` command adds multi-host joining, signals and printing around the same steps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rpa_bench.pipeline import execute, prepare, run_folder
from rpa_bench.pipeline.plan import RunPlan
from rpa_bench.store.rows import now_utc
from rpa_bench.store.run_store import RunStore


def run_plan(plan: RunPlan, config: dict, *, run_dir: Path | None = None, run_id: str | None = None,
             command: list[str] | None = None, progress: bool = False) -> pd.DataFrame:
    """Measure ``plan`` into ``run_dir`` (default ``plan.run_dir``), resuming what is stored
    there; returns the run's rows. Config problems raise ``ValueError`` before any work."""
    run_dir = Path(run_dir or plan.run_dir)
    prep = prepare.prepare_run(plan)
    store = RunStore(run_dir)
    store.acquire_lock()
    try:
        run_folder.open_store(store, config, prep, run_id or plan.run_name, command=list(command or []))
        try:
            execute.execute(prep, store, run_id=run_id or plan.run_name, progress=progress,
                            done=set(store.done_keys()))
        except KeyboardInterrupt:
            store.update_manifest(status="interrupted", interrupted_utc=now_utc())
            raise
        store.consolidate()
        store.update_manifest(status="complete", completed_utc=now_utc())
        return store.read()
    finally:
        store.release_lock()
