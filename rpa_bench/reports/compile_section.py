"""The report of a compile-only run (``run.compile_only``): what fits, and by how much.

Such a run executed nothing: its rows say which (point, kernel, variant) compiled for the
target TPU, how much VMEM the largest Mosaic kernel uses against a TensorCore's, and the
program's HBM footprint. The report shows that and no speed.
"""

from __future__ import annotations

import pandas as pd

from rpa_bench.reports.html import Column, Section, fmt_num, fmt_pct, table_from_frame
from rpa_bench.reports.sections import ordered
from rpa_bench.status import Status
from rpa_bench.store.load import LoadedRun

MIB = float(1 << 20)


def is_compile_run(run: LoadedRun) -> bool:
    frame = run.measurements
    return "compile_target" in frame.columns and frame["compile_target"].notna().any()


def compile_banner(run: LoadedRun) -> str | None:
    if not is_compile_run(run):
        return None
    target = ", ".join(sorted(set(run.measurements["compile_target"].dropna())))
    return (f"Compile report for {target}: every program was compiled by the TPU compiler on a machine without "
            "that TPU and nothing ran. It shows what compiles and fits (VMEM, HBM), never speed or correctness.")


def compile_section(run: LoadedRun) -> Section:
    if not is_compile_run(run):
        return Section("compile", "Compile report", omitted="this run executed its programs (not run.compile_only)")
    frame = ordered(run.measurements[run.measurements["compile_target"].notna()].copy())
    frame = frame.assign(
        vmem_used_mib=pd.to_numeric(frame["vmem_used_bytes"], errors="coerce") / MIB,
        vmem_mib=pd.to_numeric(frame["vmem_capacity_bytes"], errors="coerce") / MIB,
        headroom_pct=pd.to_numeric(frame["vmem_headroom"], errors="coerce") * 100.0,
        hbm_mib=pd.to_numeric(frame["compiled_hbm_bytes"], errors="coerce") / MIB,
    )
    bad = frame[frame["status"] != Status.COMPILED]
    fits = frame[frame["status"] == Status.COMPILED]
    tight = fits[fits["headroom_pct"] < 10.0]
    notes = [f"{len(fits)} of {len(frame)} programs compiled and fit; {len(bad)} did not"
             + (f" ({', '.join(f'{k}: {v}' for k, v in bad['compile_status'].value_counts().items())})"
                if len(bad) else "") + "."]
    if len(tight):
        notes.append(f"{len(tight)} compiled with under 10% VMEM headroom: a larger block or batch would not fit.")
    if fits["vmem_used_mib"].isna().any():
        notes.append("Programs without a Mosaic kernel (e.g. the XLA reference) have no VMEM figure.")
    table = table_from_frame(frame, [
        Column("status", "status"), Column("compile_status", "compile"), Column("workload", "workload"),
        Column("point_id", "point"), Column("kernel", "kernel"), Column("variant", "variant"),
        Column("mesh", "mesh"), Column("vmem_used_mib", "VMEM used (MiB)", fmt_num, numeric=True),
        Column("vmem_mib", "VMEM per core (MiB)", fmt_num, numeric=True),
        Column("headroom_pct", "headroom (%)", fmt_pct, numeric=True),
        Column("hbm_mib", "HBM per device (MiB)", fmt_num, numeric=True),
        Column("compile_time_s", "compile (s)", fmt_num, numeric=True), Column("error", "compiler message"),
    ], "Per program: whether it compiled for the target, VMEM of its largest Mosaic kernel against one "
       "TensorCore's, and its HBM footprint (arguments + outputs + temporaries + code)")
    return Section("compile", "Compile report", tables=(table,), notes=tuple(notes),
                   intro="What compiles and fits on the target TPU; compiled, not run.")
