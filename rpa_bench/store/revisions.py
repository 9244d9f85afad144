"""A stored revision of a kernel's history: ``<out>/<machine>/<sha>/<request>/`` holds
``revision.json`` (status, the request it answers, compile verdicts) and ``run/`` (a run folder)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from rpa_bench.store.run_store import read_measurements



@dataclasses.dataclass(frozen=True)
class Revision:
    sha: str
    date: str  # committer date, ISO
    subject: str

    @property
    def short(self) -> str:
        return self.sha[:10]



@dataclasses.dataclass
class RevisionResult:
    revision: Revision
    measurements: pd.DataFrame  # the run's rows
    compiles: list[dict]  # CompileResult.as_dict() per generation and case



def load_result(folder: Path, revision: Revision) -> RevisionResult | None:
    """A stored revision's result, or None when it is not complete."""
    meta = folder / "revision.json"
    if not meta.is_file():
        return None
    doc = json.loads(meta.read_text())
    if doc.get("status") != "complete":
        return None
    run = folder / "run"
    rows = read_measurements(run) if (run / "measurements.parquet").is_file() else pd.DataFrame()
    return RevisionResult(revision, rows, doc.get("compiles") or [])
