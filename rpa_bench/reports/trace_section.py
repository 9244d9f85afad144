"""Trace workload sections: time-weighted utilisation, sample coverage, batch shape per step.

Inputs, all read from the run folder: the trace's measured rows (``weight`` = the share of
the trace a measured step stands for), the manifest's workload summary (its ``sample``
part says how much of the trace the sample covers), and ``workloads/<name>/steps.parquet``
(the simulated batch of every scheduler step) and ``sample.parquet`` (measured steps).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import pandas as pd

from rpa_bench.names import slug
from rpa_bench.reports import charts
from rpa_bench.reports.html import (
    Column,
    Image,
    Section,
    Table,
    flatten,
    fmt_num,
    fmt_pct,
    key_value_table,
    table_from_frame,
)
from rpa_bench.store.load import LoadedRun

STEP_TABLE = "steps"
SAMPLE_TABLE = "sample"




def time_weighted(rows: pd.DataFrame, metric: str) -> tuple[float, float]:
    """(time-weighted mean of ``metric``, % of the weighted time the rows with it cover).

    Time weight of a point = its weight x its median latency, so the mean equals the
    metric of the whole weighted workload (e.g. total bytes over total time for MBU).
    """
    time = rows["weight"].astype(float) * rows["latency_us"].astype(float)
    has = rows[metric].notna()
    if not has.any() or time.sum() <= 0:
        return float("nan"), 0.0
    value = float((time[has] * rows.loc[has, metric].astype(float)).sum() / time[has].sum())
    return value, float(time[has].sum() / time.sum() * 100)


def utilization_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per kernel and variant: points, weight covered, weighted mean latency, time-weighted MBU/MFU."""
    out = []
    for (kernel, variant), group in rows.groupby(["kernel", "variant"], sort=True):
        weight = float(group["weight"].fillna(0).sum())
        mbu, mbu_cov = time_weighted(group, "mbu_pct")
        mfu, mfu_cov = time_weighted(group, "mfu_pct")
        out.append({
            "kernel": kernel, "variant": variant, "points": len(group), "weight": weight,
            "step_us": float((group["weight"] * group["latency_us"]).sum() / weight) if weight > 0 else None,
            "mbu": mbu, "mbu_cov": mbu_cov, "mfu": mfu, "mfu_cov": mfu_cov,
            "convention": ", ".join(sorted(set(group["convention"].dropna()))),
        })
    return pd.DataFrame(out)


def _pct_if_fraction(key: str, value):
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith(("_fraction", "_share")):
        return f"{value * 100:.3g} %"
    return value


def _coverage_tables(name: str, summary: Mapping) -> list[Table]:
    tables = []
    sample = summary.get("sample") if isinstance(summary.get("sample"), Mapping) else None
    if sample:
        tables.append(key_value_table([(k, _pct_if_fraction(k, v)) for k, v in flatten(sample)],
                                      f"Sample coverage of trace {name}: how much of the simulated trace the "
                                      "measured steps stand for (from the run manifest)"))
    rest = {k: v for k, v in summary.items() if k != "sample"}
    if rest:
        tables.append(key_value_table(flatten(rest), f"Simulation summary of trace {name} (from the run manifest)"))
    return tables


def _step_table(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame | None:
    if STEP_TABLE in tables:
        return tables[STEP_TABLE]
    for _, frame in sorted(tables.items()):
        if "step" in frame.columns and any(c in frame.columns for c in charts.STEP_COLUMNS):
            return frame
    return None


def trace_section(run: LoadedRun, name: str, out_dir: pathlib.Path) -> Section:
    frame = run.measurements
    rows = charts.speed_rows(frame[frame["workload"] == name])
    tables, images, notes = [], [], []
    if rows.empty:
        notes.append("No measured point of this trace has status ok outside interpret mode: no speed summary.")
    else:
        tables.append(table_from_frame(utilization_summary(rows), [
            Column("kernel", "kernel"), Column("variant", "variant"), Column("points", "points", fmt_num, numeric=True),
            Column("weight", "weight covered", fmt_num, numeric=True),
            Column("step_us", "weighted mean latency (us)", fmt_num, numeric=True),
            Column("mbu", "time-weighted MBU (%)", fmt_pct, numeric=True),
            Column("mbu_cov", "time share with MBU (%)", fmt_pct, numeric=True),
            Column("mfu", "time-weighted MFU (%)", fmt_pct, numeric=True),
            Column("mfu_cov", "time share with MFU (%)", fmt_pct, numeric=True), Column("convention", "convention"),
        ], f"Time-weighted utilisation of trace {name} on {run.device} (time weight = weight x median latency)"))
    workload = (run.manifest.get("workloads") or {}).get(name) or {}
    summary = workload.get("summary") if isinstance(workload, Mapping) else None
    if isinstance(summary, Mapping) and summary:
        tables += _coverage_tables(name, summary)
    else:
        notes.append("The manifest holds no summary for this trace: the share of the trace the sample covers is unknown.")
    step_tables = run.step_tables.get(name) or {}
    steps = _step_table(step_tables)
    kernels = sorted(set(rows["kernel"].dropna()))
    path = None if steps is None else charts.step_chart(
        steps, out_dir / f"steps_{slug(name)}.png", workload=name, device=run.device, kernels=kernels)
    if path is not None:
        images.append(Image(path.name, f"batch shape per step of trace {name}"))
    else:
        notes.append(f"No per-step table under workloads/{name}/ (steps.parquet): the batch-shape plot cannot be drawn.")
    sample = step_tables.get(SAMPLE_TABLE)
    if sample is not None and not sample.empty:
        tables.append(table_from_frame(sample, [Column(c, c.replace("_", " "), fmt_num, numeric=True)
                                                for c in sample.columns],
                                       f"Measured steps of trace {name} and the share of the trace each stands for"))
    return Section(f"trace-{slug(name)}", f"Trace workload: {name}", notes=tuple(notes), images=tuple(images),
                   tables=tuple(tables))


def trace_sections(run: LoadedRun, out_dir: pathlib.Path) -> list[Section]:
    frame = run.measurements
    names = sorted(set(frame.loc[frame["workload_kind"] == "trace", "workload"].dropna()))
    names += sorted(n for n, w in (run.manifest.get("workloads") or {}).items()
                    if isinstance(w, Mapping) and w.get("kind") == "trace" and n not in names)
    if not names:
        return [Section("traces", "Trace workloads", omitted="this run measured no trace workload")]
    return [trace_section(run, name, out_dir) for name in names]
