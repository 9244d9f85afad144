"""The run store ``results/<run>/``: written incrementally and atomically, resumable.

Layout (the contract is :mod:`rpa_bench.store.schema`):
- ``manifest.json``: rewritten whole on every change (write a temp file, ``os.replace``);
- ``parts/<n>-<uuid>.parquet``: one small file per finished (workload point, kernel),
  holding its rows (the ``excl_prep`` and ``incl_prep`` variants), written the same way.
  A part is either complete or absent: a run killed at any instant loses at most the
  point in flight, and ``done_keys()`` tells a resumed run what not to redo;
- ``measurements.parquet``: every part consolidated (atomically), refreshed after each
  part, so readers always see a complete, valid table of what has finished;
- ``captures/``: profiler captures (``*.xplane.pb``);
- ``workloads/<workload>/<table>.parquet``: per-step simulation tables of trace workloads.
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rpa_bench.status import Status
from rpa_bench.store.schema import COLUMNS, MANIFEST_KEYS, SCHEMA_VERSION, STATUSES

MANIFEST = "manifest.json"
MEASUREMENTS = "measurements.parquet"
PARTS = "parts"
CAPTURES = "captures"
WORKLOADS = "workloads"
KEY_COLUMNS = ("workload", "point_id", "kernel")
LOCK = ".lock"
# Failures a resume retries: the machine's fault, not the kernel's.
ENVIRONMENTAL_ERROR = re.compile(
    r"^(OSError|PermissionError|FileNotFoundError|IsADirectoryError|NotADirectoryError|BlockingIOError|MemoryError)"
    r"|No space left on device|Read-only file system|RESOURCE_EXHAUSTED: Out of memory")
RUN_STATUSES = ("running", "complete", "interrupted", "failed")

_ARROW = {"string": pa.string(), "int64": pa.int64(), "Int64": pa.int64(), "bool": pa.bool_(), "float64": pa.float64()}


def arrow_schema() -> pa.Schema:
    """The parquet schema of ``measurements.parquet`` (list columns: floats; warnings: strings)."""
    fields = []
    for name, (dtype, meaning) in COLUMNS.items():
        if dtype == "object":
            typ = pa.list_(pa.string()) if name == "warnings" else pa.list_(pa.float64())
        else:
            typ = _ARROW[dtype]
        # each column says what it is: pyarrow.parquet.read_schema(path).field(name).metadata
        fields.append(pa.field(name, typ, nullable=True, metadata={"description": meaning or name}))
    return pa.schema(fields, metadata={"rpa_bench.schema_version": str(SCHEMA_VERSION)})


def normalize_row(row: Mapping[str, Any]) -> dict:
    """One row with every column (absent ones null); unknown columns or statuses are errors."""
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise ValueError(f"measurement row has unknown column(s) {unknown}; allowed: see schema.COLUMNS")
    status = row.get("status")
    if status not in STATUSES:
        raise ValueError(f"measurement row status={status!r}; allowed: {', '.join(STATUSES)}")
    out = {}
    for name, (dtype, _) in COLUMNS.items():
        v = row.get(name)
        if v is not None and dtype == "object":
            v = [str(x) for x in v] if name == "warnings" else [float(x) for x in v]
        elif v is not None and dtype in ("int64", "Int64"):
            v = int(v)
        elif v is not None and dtype == "float64":
            v = float(v)
        elif v is not None and dtype == "bool":
            v = bool(v)
        elif v is not None and dtype == "string":
            v = str(v)
        out[name] = v
    return out


def rows_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist([normalize_row(r) for r in rows], schema=arrow_schema())


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda p: p.write_text(text))


class RunStore:
    """One run folder. Single writer; any number of readers at any time."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._part_cache: dict[str, pa.Table] = {}  # part file name -> its table (parts never change)

    # --- paths -------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def measurements_path(self) -> Path:
        return self.root / MEASUREMENTS

    @property
    def parts_dir(self) -> Path:
        return self.root / PARTS

    @property
    def captures_dir(self) -> Path:
        return self.root / CAPTURES

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    # --- manifest ----------------------------------------------------------------------
    def read_manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        missing = [k for k in MANIFEST_KEYS if k not in manifest]
        if missing:
            raise ValueError(f"manifest lacks key(s) {missing}; required: schema.MANIFEST_KEYS")
        if manifest["status"] not in RUN_STATUSES:
            raise ValueError(f"manifest status={manifest['status']!r}; allowed: {', '.join(RUN_STATUSES)}")
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")

    def update_manifest(self, **changes: Any) -> dict:
        manifest = {**self.read_manifest(), **changes}
        self.write_manifest(manifest)
        return manifest

    # --- measurements ------------------------------------------------------------------
    def append(self, rows: Sequence[Mapping[str, Any]]) -> Path:
        """Write one part (atomically) and refresh ``measurements.parquet``."""
        if not rows:
            raise ValueError("append() needs at least one row")
        table = rows_table(rows)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        n = len(list(self.parts_dir.glob("*.parquet")))
        path = self.parts_dir / f"{n:05d}-{uuid.uuid4().hex[:8]}.parquet"
        _atomic_write(path, lambda p: pq.write_table(table, p))
        self.consolidate()
        return path

    def part_tables(self) -> list[pa.Table]:
        """Every part, in order. Parts are immutable once written (atomic rename), so each is read
        from disk once per store object: consolidating after every append stays linear in reads."""
        if not self.parts_dir.is_dir():
            return []
        cache = self._part_cache
        paths = sorted(self.parts_dir.glob("*.parquet"))
        for p in paths:
            if p.name not in cache:
                cache[p.name] = pq.read_table(p, schema=arrow_schema())
        return [cache[p.name] for p in paths]

    def consolidate(self) -> Path:
        tables = self.part_tables()
        table = pa.concat_tables(tables) if tables else arrow_schema().empty_table()
        table = _latest_rows(table)  # a retried (point, kernel) keeps only its latest rows
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.measurements_path, lambda p: pq.write_table(table, p))
        return self.measurements_path

    def done_keys(self) -> set[tuple[str, str, str]]:
        """(workload, point_id, kernel) of every finished part, except those whose latest rows
        failed for an environmental reason (disk full, read-only folder, out of memory): a
        resume retries them (:meth:`retry_keys`)."""
        keys: set[tuple[str, str, str]] = set()
        for t in self.part_tables():
            cols = [t.column(c).to_pylist() for c in KEY_COLUMNS]
            keys.update(zip(*cols))
        return keys - self.retry_keys()

    def retry_keys(self) -> set[tuple[str, str, str]]:
        """(workload, point_id, kernel) whose latest rows failed for an environmental reason."""
        latest: dict[tuple, list[tuple[str, str]]] = {}
        for t in self.part_tables():
            cols = [t.column(c).to_pylist() for c in (*KEY_COLUMNS, "status", "error")]
            part: dict[tuple, list[tuple[str, str]]] = {}
            for w, p, k, status, error in zip(*cols):
                part.setdefault((w, p, k), []).append((status, error or ""))
            latest.update(part)  # a later part of the same key replaces the earlier one
        return {key for key, rows in latest.items()
                if any(s == Status.FAILED and ENVIRONMENTAL_ERROR.search(e) for s, e in rows)}

    # --- one writer at a time ----------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.root / LOCK

    def acquire_lock(self) -> None:
        """Take the run folder for this process (``.lock``: pid, host, time). Refuses, naming
        the owner, while another live process holds it; a lock left by a dead process on
        this host is taken over."""
        self.root.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._lock_owner()
                if owner is not None and not _stale(owner):
                    raise RunLockedError(
                        f"{self.root} is in use by another rpa-bench run (pid {owner.get('pid')} on "
                        f"{owner.get('host')}, since {owner.get('since')}); wait for it, or choose another run.name"
                        + ("" if owner.get("host") == me["host"] else
                           f" (if that run is dead, remove {self.lock_path})"))
                self.lock_path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            return
        raise RunLockedError(f"{self.root}: could not take the run lock {self.lock_path}")

    def release_lock(self) -> None:
        owner = self._lock_owner()
        if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            self.lock_path.unlink(missing_ok=True)

    def _lock_owner(self) -> dict | None:
        try:
            return json.loads(self.lock_path.read_text())
        except (OSError, ValueError):
            return None

    def clean_temporaries(self) -> int:
        """Remove temp files left by a run killed mid-write; returns how many."""
        n = 0
        for folder in (self.root, self.parts_dir):
            if folder.is_dir():
                for p in folder.glob(".*.tmp"):
                    p.unlink()
                    n += 1
        return n

    def read(self) -> pd.DataFrame:
        return read_measurements(self.root)

    # --- side tables -------------------------------------------------------------------
    def write_workload_table(self, workload: str, table: str, frame: pd.DataFrame) -> Path:
        folder = self.root / WORKLOADS / workload
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{table}.parquet"
        _atomic_write(path, lambda p: frame.to_parquet(p, index=False))
        return path


class RunLockedError(ValueError):
    """Another live process writes this run folder."""


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _stale(owner: Mapping[str, Any]) -> bool:
    """A lock whose owner process is gone (only decidable on the same host)."""
    if owner.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(owner.get("pid")), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, TypeError, ValueError):
        return False
    return False


def _latest_rows(table: pa.Table) -> pa.Table:
    """Rows of the last part that measured each (workload, point, kernel, variant)."""
    keys = list(zip(*(table.column(c).to_pylist() for c in (*KEY_COLUMNS, "variant"))))
    last = {k: i for i, k in enumerate(keys)}
    if len(last) == len(keys):
        return table
    return table.take(sorted(last.values()))


def read_measurements(run_dir: str | Path) -> pd.DataFrame:
    """``measurements.parquet`` as pandas with nullable integer / boolean columns."""
    table = pq.read_table(Path(run_dir) / MEASUREMENTS)
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)
