"""The run store's schema: one contract between the run pipeline and the reports.

A run folder ``results/<run>/`` holds:
- ``manifest.json``: resolved config, environment, provenance (see MANIFEST_KEYS);
- ``measurements.parquet``: one row per (workload point, kernel, variant) measurement
  (see COLUMNS); failures are rows with a status, never missing rows;
- ``captures/``: profiler captures (xplane.pb files), openable in xprof / TensorBoard;
- ``workloads/<workload>/``: per-step simulation summaries of trace workloads (parquet)
  so reports can redraw batch-shape plots without re-simulating.

Bump SCHEMA_VERSION on any incompatible change; readers list what an older run lacks.
Columns added compatibly, without a bump, are listed in OPTIONAL_COLUMNS: runs stored
before them lack them, and readers take them as null without calling the run incomplete.
"""

from __future__ import annotations

from rpa_bench.status import STATUSES as _STATUSES
from rpa_bench.store import row as _row

SCHEMA_VERSION = 1

STATUSES = _STATUSES  # the row statuses: rpa_bench.status.Status

# column name -> (dtype, meaning), generated from the one typed row (rpa_bench.store.row.Row).
# Units are in the names.
COLUMNS: dict[str, tuple[str, str]] = _row.COLUMNS

# added to schema v1 after its first release: an older v1 run lacks them (null)
OPTIONAL_COLUMNS = _row.ADDED_COLUMNS

MANIFEST_KEYS = (
    "schema_version",
    "run_id",
    "created_utc",
    "command",  # argv
    "config",  # resolved config (dict)
    "environment",  # python, jax, jaxlib, libtpu, tpu-inference versions; host; platform; device kind/count
    "git",  # rpa_bench commit, dirty flag
    "kernels",  # per kernel: provenance (source, version, commit, dirty, file sha256)
    "workloads",  # per workload: kind, sources {file: sha256}, seed, summary (traces: sample coverage)
    "device_spec",  # the roofline DeviceSpec used, with sources
    "calibration",  # measured ceilings used, or null
    "status",  # running | complete | interrupted | failed
)
