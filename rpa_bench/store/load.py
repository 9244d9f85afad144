"""Read a stored run folder for reports: validate it against the store schema.

Reports render what is valid and list what is missing, so this reader never fails on an
incomplete run (older schema, interrupted run, missing parquet, missing columns); it
refuses only a folder that holds no run at all (``NotARunError``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Mapping

import numpy as np
import pandas as pd

from rpa_bench.store.run_store import (
    MANIFEST as MANIFEST_FILE,
    MEASUREMENTS as MEASUREMENTS_FILE,
    WORKLOADS as WORKLOADS_DIR,
    read_measurements,
)
from rpa_bench.store.schema import COLUMNS, MANIFEST_KEYS, OPTIONAL_COLUMNS, SCHEMA_VERSION, STATUSES

LIST_COLUMNS = tuple(name for name, (dtype, _) in COLUMNS.items() if dtype == "object")


class NotARunError(ValueError):
    """The folder is not a results run folder (no manifest.json, no measurements.parquet)."""


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedRun:
    """A run folder as reports see it.

    ``measurements`` always has every schema column (absent ones filled with nulls and
    listed in ``problems``); ``step_tables`` maps workload name -> table name -> per-step
    simulation table; ``problems`` lists, in words, what is missing or invalid.
    """

    path: pathlib.Path
    manifest: Mapping
    measurements: pd.DataFrame
    step_tables: Mapping[str, Mapping[str, pd.DataFrame]]
    problems: tuple[str, ...]

    @property
    def name(self) -> str:
        return str(self.manifest.get("run_id") or self.path.name)

    @property
    def device(self) -> str:
        spec = self.manifest.get("device_spec") or {}
        if isinstance(spec, Mapping) and spec.get("name"):
            return str(spec["name"])
        devices = self.measurements["device"].dropna().unique()
        return ", ".join(sorted(str(d) for d in devices)) or "unknown device"

    @property
    def status(self) -> str:
        return str(self.manifest.get("status") or "unknown")


def _empty_measurements() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=_pandas_dtype(dtype)) for name, (dtype, _) in COLUMNS.items()})


def _pandas_dtype(dtype: str) -> str:
    return {"string": "object", "bool": "boolean", "int64": "Int64", "object": "object"}.get(dtype, dtype)


def _as_list(value) -> list | None:
    """A list cell as a plain list (parquet gives numpy arrays): floats for samples,
    strings for warnings; None when absent."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str):
        return [value]
    return [x if isinstance(x, str) else float(x) for x in np.asarray(value, dtype=object).ravel().tolist()]


def _read_manifest(path: pathlib.Path, problems: list[str]) -> dict:
    file = path / MANIFEST_FILE
    if not file.exists():
        problems.append(f"{MANIFEST_FILE} is missing: no provenance, environment or run status")
        return {}
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problems.append(f"{MANIFEST_FILE} is not valid JSON ({err})")
        return {}
    if not isinstance(manifest, dict):
        problems.append(f"{MANIFEST_FILE} holds a {type(manifest).__name__}, not an object")
        return {}
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        problems.append(f"{MANIFEST_FILE} lacks keys: {', '.join(missing)}")
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        problems.append(f"{MANIFEST_FILE} schema_version={version!r} is not an integer")
    elif version < SCHEMA_VERSION:
        problems.append(
            f"run uses store schema v{version}, older than this reader's v{SCHEMA_VERSION}: "
            "fields added since are shown as missing"
        )
    elif version > SCHEMA_VERSION:
        problems.append(
            f"run uses store schema v{version}, newer than this reader's v{SCHEMA_VERSION}: "
            "update rpa_bench to read every field"
        )
    status = manifest.get("status")
    if status is not None and status != "complete":
        problems.append(f"run status is {status!r}, not 'complete': results may be partial")
    return manifest


def _read_measurements(path: pathlib.Path, problems: list[str]) -> pd.DataFrame:
    file = path / MEASUREMENTS_FILE
    if not file.exists():
        problems.append(f"{MEASUREMENTS_FILE} is missing: no measurements to show")
        return _empty_measurements()
    try:
        frame = read_measurements(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        problems.append(f"{MEASUREMENTS_FILE} could not be read ({type(err).__name__}: {err})")
        return _empty_measurements()
    missing = [name for name in COLUMNS if name not in frame.columns]
    required = [name for name in missing if name not in OPTIONAL_COLUMNS]  # optional ones: stored before they existed
    if required:
        problems.append(f"{MEASUREMENTS_FILE} lacks columns: {', '.join(required)}")
    for name in missing:
        frame[name] = pd.Series([None] * len(frame), index=frame.index, dtype=_pandas_dtype(COLUMNS[name][0]))
    for name in LIST_COLUMNS:
        frame[name] = [_as_list(v) for v in frame[name]]
    bad = sorted({str(s) for s in frame["status"].dropna().unique()} - set(STATUSES))
    if bad:
        problems.append(f"unknown status values {bad}; allowed: {', '.join(STATUSES)}")
    if frame["status"].isna().any():
        problems.append(f"{int(frame['status'].isna().sum())} rows have no status")
    return frame.reset_index(drop=True)


def _read_step_tables(path: pathlib.Path, problems: list[str]) -> dict[str, dict[str, pd.DataFrame]]:
    root = path / WORKLOADS_DIR
    tables: dict[str, dict[str, pd.DataFrame]] = {}
    if not root.is_dir():
        return tables
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        # steps.parquet at the top; the measured sample and the points' batches under batches/
        for file in sorted(folder.glob("*.parquet")) + sorted(folder.glob("batches/*.parquet")):
            try:
                tables.setdefault(folder.name, {})[file.stem] = pd.read_parquet(file)
            except Exception as err:
                problems.append(f"{file.relative_to(path)} could not be read ({type(err).__name__})")
    return tables


def load_run(path: str | pathlib.Path) -> LoadedRun:
    """Load ``results/<run>/``; raise ``NotARunError`` when it holds no run at all."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise NotARunError(f"{path} is not a folder; expected a results run folder (results/<run>/)")
    if not (path / MANIFEST_FILE).exists() and not (path / MEASUREMENTS_FILE).exists():
        raise NotARunError(
            f"{path} is not a results run folder: it has neither {MANIFEST_FILE} nor {MEASUREMENTS_FILE}"
        )
    problems: list[str] = []
    manifest = _read_manifest(path, problems)
    measurements = _read_measurements(path, problems)
    step_tables = _read_step_tables(path, problems)
    return LoadedRun(path, manifest, measurements, step_tables, tuple(problems))
