"""The run folder: start a run's manifest and workload tables, or resume it (refusing a
different config or changed inputs)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from rpa_bench.measure import environment
from rpa_bench.parallel import distributed
from rpa_bench.pipeline.plan import WorkloadEntry
from rpa_bench.pipeline.prepare import PreparedRun
from rpa_bench.pipeline.traffic import paper_ceilings
from rpa_bench.store import schema
from rpa_bench.store.rows import now_utc
from rpa_bench.store.run_store import RunStore


def kernel_provenance(prep: PreparedRun) -> dict:
    return {s.entry.label: {**s.provenance.as_dict(), "backend": s.entry.name, "available": s.available, "availability": s.reason,
                           "interpret": s.interpret, "config": s.entry.to_dict()} for s in prep.kernels}


def _jsonable(x: Any) -> Any:
    import json

    import numpy as np
    import pandas as pd

    if isinstance(x, pd.DataFrame):
        return None  # tables go to workloads/<name>/, not the manifest
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = dataclasses.asdict(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    try:
        json.dumps(x)
        return x
    except TypeError:
        return str(x)


def workload_manifest(entry: WorkloadEntry, wl: Any, max_points: int | None = None) -> dict:
    """The manifest's entry for one workload: kind, sources with sha256, seed, summary."""
    points = list(wl.points)
    return {
        "kind": getattr(wl, "kind", entry.kind),
        "config": _jsonable(dict(entry.config)),
        "sources": _jsonable(getattr(wl, "sources", {}) or {}),
        "seed": getattr(wl, "seed", None),
        "summary": _jsonable(getattr(wl, "summary", None)),
        "num_points": len(points),
        "num_points_measured": len(points) if max_points is None else min(max_points, len(points)),
        "point_ids": [p.point_id for p in points],
    }


def write_workload_tables(store: RunStore, entry: WorkloadEntry, wl: Any) -> list:
    """The workload's own tables (summary, points; traces: per-step tables) under workloads/<name>/."""
    return list(wl.write_tables(store.root / "workloads" / entry.name))


# --- the run folder ------------------------------------------------------------------
VOLATILE_RUN_KEYS = ("name", "results_dir", "progress", "report")  # a resume may change these


def _comparable(config: dict) -> dict:
    out = dict(config)
    out["run"] = {k: v for k, v in dict(out.get("run") or {}).items() if k not in VOLATILE_RUN_KEYS}
    if isinstance(out.get("timing"), dict):  # null and {} both mean no compiler options
        out["timing"] = {**out["timing"], "compiler_options": out["timing"].get("compiler_options") or {}}
    return out


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def open_store(store: RunStore, config: dict, prep: PreparedRun, run_id: str, *, command: list[str]) -> None:
    """Resume the run in ``store`` (refusing a different config) or start it: the manifest
    and the workloads' tables. The writer's job."""
    plan = prep.plan
    run_dir = store.root
    if store.exists():
        old = store.read_manifest()
        changed = _diff(_comparable(old.get("config") or {}), _comparable(config))
        if changed:
            raise ValueError(
                f"{run_dir} holds a run with a different config ({', '.join(changed[:10])}); "
                "resume with the same overrides, or choose a new run.name"
            )
        check_same_workloads(old, {e.name: workload_manifest(e, w, plan.max_points)
                                    for e, w in prep.workloads}, run_dir)
        store.clean_temporaries()
        for e, w in prep.workloads:  # tables a kill before they were written lost: rebuilt
            if not any((run_dir / "workloads" / e.name).glob("*.parquet")):
                write_workload_tables(store, e, w)
        store.update_manifest(status="running", resumed_utc=[*old.get("resumed_utc", []), now_utc()],
                              resumed_from_status=old.get("status"))
        print(f"rpa-bench: resuming {run_dir} ({len(store.done_keys())} (point, kernel) pairs done)", file=sys.stderr)
        retry = sorted(store.retry_keys())
        if retry:
            print(f"rpa-bench: retrying {len(retry)} (point, kernel) pair(s) that failed for an environmental "
                  "reason: " + ", ".join(f"{w}:{p}:{k}" for w, p, k in retry[:8]) + (" ..." if len(retry) > 8 else ""),
                  file=sys.stderr)
    else:
        manifest = {
            "schema_version": schema.SCHEMA_VERSION,
            "run_id": run_id,
            "created_utc": now_utc(),
            "command": list(command),
            "config": config,
            "environment": environment.environment(),
            "flags": environment.flags(dict(plan.timing.compiler_options)),
            "git": environment.git_state(),
            "kernels": environment.portable(kernel_provenance(prep)),
            "workloads": {e.name: workload_manifest(e, w, plan.max_points) for e, w in prep.workloads},
            "device_spec": prep.roof.device.to_dict(),
            "calibration": prep.roof.calibration.to_dict() if prep.roof.calibration is not None else None,
            "status": "running",
            "experiment": plan.experiment,
            "scale": {"name": plan.scale.name, "reduced": plan.scale.reduced},
            "seeds": {"run": plan.seed},
            "mesh": prep.mesh_label,
            "processes": distributed.describe(),
            # the paper's rows as each kernel's schedule would move them (for the report's paper table)
            "paper_traffic": _paper_traffic(plan),
        }
        for e, w in prep.workloads:  # before the manifest says the run (and its tables) exist
            write_workload_tables(store, e, w)
        store.write_manifest(manifest)


def _paper_traffic(plan) -> dict:
    try:
        return paper_ceilings(list(plan.kernels))
    except Exception as exc:  # noqa: BLE001 - an annotation of the report, never the run's failure
        return {"error": f"{type(exc).__name__}: {exc}"}


def check_same_workloads(old: dict, new: dict, run_dir: Path) -> None:
    """A resume measures the same inputs: trace files (sha256) and point ids must not have changed."""
    changes = []
    for name, now in new.items():
        before = (old.get("workloads") or {}).get(name)
        if before is None:
            changes.append(f"workload {name} is new")
            continue
        if (before.get("sources") or {}) != (now.get("sources") or {}):
            changes.append(f"workload {name}'s source files changed (sha256 differs from the stored run)")
        if before.get("point_ids") != now.get("point_ids"):
            changes.append(f"workload {name}'s points changed ({len(before.get('point_ids') or [])} stored, "
                           f"{len(now.get('point_ids') or [])} now)")
    if changes:
        raise ValueError(f"{run_dir} cannot be resumed: " + "; ".join(changes)
                         + "; choose a new run.name to measure the new inputs")
