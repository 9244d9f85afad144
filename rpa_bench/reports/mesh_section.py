"""Mesh and devices: how each sharded measurement split over devices and chips.

Reads only stored columns (``mesh``, ``num_devices``, ``figures_per``,
``per_device_latency_us``, ``load_imbalance``, ``modelled_load_imbalance``,
``per_device_hbm_bytes``, ``per_device_flops``, ``per_chip``) and the manifest's device
spec. Speed appears only for rows with status ok outside interpret mode, as elsewhere.
A run stored before some of these columns existed shows what it has and says what not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import pandas as pd

from rpa_bench.reports import charts
from rpa_bench.reports.html import Column, Section, fmt_num, fmt_pct, key_value_table, table_from_frame
from rpa_bench.reports.sections import ordered
from rpa_bench.store.load import LoadedRun

SECTION_ID, TITLE = "mesh", "Mesh and devices"

FIGURES_PER_NOTE = {
    "chip": ("MBU / MFU on this page and in 'Measured speed' are per-chip figures: they divide by the summed "
             "peaks of the devices used, and those devices make up whole chips."),
    "device": ("MBU / MFU on this page and in 'Measured speed' are per-device figures: they divide by the peaks "
               "of the devices used, which are only part of a chip. A whole chip has more bandwidth and FLOP/s "
               "(one TPU7x TensorCore reaches at most 50% of its chip's peak); the per-chip table divides by the "
               "whole chip."),
}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value))


def _fmt_list(values, scale: float = 1.0) -> str:
    """Per-device values in mesh order, ``scale`` dividing each (e.g. 1e6 for MB)."""
    if _missing(values) or len(values) == 0:
        return "\u2014"
    return " | ".join(fmt_num(float(v) / scale) for v in values)


def parse_per_chip(value) -> list[dict]:
    """The stored ``per_chip`` JSON as a list of dicts ([] when absent or unreadable)."""
    if _missing(value) or not isinstance(value, str):
        return []
    try:
        chips = json.loads(value)
    except json.JSONDecodeError:
        return []
    return [c for c in chips if isinstance(c, Mapping)] if isinstance(chips, list) else []


def _summary(run: LoadedRun, rows: pd.DataFrame) -> list[tuple[str, object]]:
    spec = run.manifest.get("device_spec") or {}
    def values(col: str) -> str:
        return ", ".join(sorted({str(v) for v in rows[col].dropna()})) or "not recorded"
    return [
        ("mesh", values("mesh")),
        ("num_devices", values("num_devices")),
        ("device spec", spec.get("name") if isinstance(spec, Mapping) else None),
        ("devices per chip", spec.get("devices_per_chip") if isinstance(spec, Mapping) else None),
        ("devices the spec's peaks cover", spec.get("num_devices") if isinstance(spec, Mapping) else None),
        ("MBU / MFU figures are per", values("figures_per")),
        ("timing source", values("timing_source")),
    ]


def _figures_notes(rows: pd.DataFrame) -> list[str]:
    kinds = sorted({str(v) for v in rows["figures_per"].dropna()})
    notes = [FIGURES_PER_NOTE[k] for k in kinds if k in FIGURES_PER_NOTE]
    if rows["figures_per"].isna().any():
        notes.append("Rows without figures_per ran where a chip is one device (a CPU host, a GPU, a single-core "
                     "TPU) or were stored before the column existed: their MBU / MFU divide by the summed peaks "
                     "of the devices used.")
    return notes


def _timing_note(rows: pd.DataFrame) -> str | None:
    no_times = rows["per_device_latency_us"].map(_missing)
    if not no_times.any():
        return None
    return (f"{int(no_times.sum())} of {len(rows)} measurements have no per-device times: their capture had no "
            "accelerator device planes (CPU forced host devices share one host's cores, or wall-clock timing). "
            "Their latency is the step's wall time, no measured imbalance is claimed, and the modelled imbalance "
            "(per-device roofline bound times, max / mean) says how even the split is.")


def _per_chip_frame(rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    for _, r in rows.iterrows():
        for chip in parse_per_chip(r["per_chip"]):
            out.append({"workload": r["workload"], "point_id": r["point_id"], "kernel": r["kernel"],
                        "variant": r["variant"], "chip": chip.get("chip"),
                        "device_ids": ", ".join(str(d) for d in chip.get("device_ids") or []),
                        "latency_us": chip.get("latency_us"), "hbm_bytes": chip.get("hbm_bytes"),
                        "flops": chip.get("flops"), "mbu_si_pct": chip.get("mbu_si_pct"),
                        "mfu_si_pct": chip.get("mfu_si_pct")})
    return pd.DataFrame(out)


def mesh_section(run: LoadedRun) -> Section:
    frame = run.measurements
    if frame.empty:
        return Section(SECTION_ID, TITLE, omitted="the run holds no measurements")
    devices = pd.to_numeric(frame["num_devices"], errors="coerce").fillna(1)
    multi = frame[devices > 1]
    if multi.empty:
        meshes = ", ".join(sorted({str(m) for m in frame["mesh"].dropna()})) or "not recorded"
        return Section(SECTION_ID, TITLE, omitted=(
            f"every measurement ran on one device (mesh {meshes}), so there is no per-device or per-chip split"))
    rows = charts.speed_rows(multi)
    if rows.empty:
        return Section(SECTION_ID, TITLE, omitted=(
            "no measurement on several devices has status ok outside interpret mode, so there is nothing to "
            "split per device or per chip"))
    rows = ordered(rows)
    notes = _figures_notes(rows)
    timing = _timing_note(rows)
    if timing:
        notes.append(timing)
    tables = [key_value_table(_summary(run, rows), "The mesh of this run")]
    view = rows.assign(
        per_device_us=rows["per_device_latency_us"].map(_fmt_list),
        per_device_mb=rows["per_device_hbm_bytes"].map(lambda v: _fmt_list(v, 1e6)),
        per_device_gflop=rows["per_device_flops"].map(lambda v: _fmt_list(v, 1e9)),
    )
    tables.append(table_from_frame(view, [
        Column("workload", "workload"), Column("point_id", "point"), Column("kernel", "kernel"),
        Column("variant", "variant"), Column("mesh", "mesh"), Column("num_devices", "devices", fmt_num, numeric=True),
        Column("timing_source", "timing"),
        Column("latency_us", "step latency (us), slowest device", fmt_num, numeric=True),
        Column("per_device_us", "per-device latency (us)"),
        Column("load_imbalance", "load imbalance, measured (max/mean)", fmt_num, numeric=True),
        Column("modelled_load_imbalance", "load imbalance, modelled (max/mean)", fmt_num, numeric=True),
        Column("per_device_mb", "per-device HBM (MB)"), Column("per_device_gflop", "per-device GFLOP"),
        Column("figures_per", "MBU/MFU per"),
        Column("mbu_pct", "MBU (%)", fmt_pct, numeric=True), Column("mfu_pct", "MFU (%)", fmt_pct, numeric=True),
    ], "Per measurement: each device's time and analytic share (mesh order: data major, model minor)"))
    chips = _per_chip_frame(rows)
    if chips.empty:
        notes.append("No per-chip figures are stored for these rows (per_chip: stored before the column existed).")
    else:
        tables.append(table_from_frame(chips, [
            Column("workload", "workload"), Column("point_id", "point"), Column("kernel", "kernel"),
            Column("variant", "variant"), Column("chip", "chip"), Column("device_ids", "devices"),
            Column("latency_us", "latency (us), slowest device", fmt_num, numeric=True),
            Column("hbm_bytes", "HBM bytes", fmt_num, numeric=True), Column("flops", "FLOPs", fmt_num, numeric=True),
            Column("mbu_si_pct", "MBU SI (%) of the chip", fmt_pct, numeric=True),
            Column("mfu_si_pct", "MFU SI (%) of the chip", fmt_pct, numeric=True),
        ], "Per chip: the chip's devices together against the whole chip's peaks (SI units)"))
    return Section(SECTION_ID, TITLE, notes=tuple(notes), tables=tuple(tables), intro=(
        "A sharded call ends when its slowest device does: that is the step latency. Each device's bytes and "
        "FLOPs are the analytic cost of its own sequences and heads; they sum to the call's."))

