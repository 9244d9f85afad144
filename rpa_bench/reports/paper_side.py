"""The paper side by side: its printed values, this run's, the TPU7x roofline bound, deltas.

Rows of the run's paper experiments (workload kinds ``paper_decode`` / ``paper_prefill``)
are matched to the paper's Tables 4, 6 and 8 by context length (decode) or sequence
length (prefill) and by variant (incl_prep / excl_prep).
"""

from __future__ import annotations

import pandas as pd

from rpa_bench.reports.html import Column, Section, fmt_num, fmt_pct, table_from_frame
from rpa_bench.roofline import paper
from rpa_bench.status import Status
from rpa_bench.store.load import LoadedRun

PAPER_DEVICE = "tpu7x"
GIB_PER_GB = 1e9 / 2**30
# (table, title, sweep column of the run, utilisation column of the run)
TABLES = (
    ("table4", "Decode: paper Table 4 (128 sequences, head_dim 128, page 256)", "context_len", "mbu_pct"),
    ("table6", "Prefill without causal mask: paper Table 6 (one sequence, head_dim 128)", "seq_len", "mfu_pct"),
    ("table8", "Prefill with causal mask: paper Table 8 (one sequence, head_dim 128)", "seq_len", "mfu_pct"),
)


def _rows_for(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    kind = frame["workload_kind"]
    causal = frame["causal"].fillna(True).astype(bool)
    if table == "table4":
        return frame[kind == "paper_decode"]
    if table == "table6":
        return frame[(kind == "paper_prefill") & ~causal]
    return frame[(kind == "paper_prefill") & causal]


def _measured_util(row: pd.Series, util: str) -> float | None:
    """The run's MBU/MFU in the paper convention (None when it cannot be put there)."""
    value = row.get(util)
    if pd.isna(value):
        return None
    if row.get("convention") == "paper":
        return float(value)
    if row.get("convention") == "si" and util == "mbu_pct":
        return float(value) * GIB_PER_GB  # si -> paper: GB/s numerator -> GiB/s
    return None


VARIANT_ORDER = {"excl_prep": 0, "incl_prep": 1}
NOT_MEASURED = "not measured here"


def paper_ceiling(run: LoadedRun, table: str, sweep: int) -> float | None:
    """The MBU ceiling RPA v3's schedule puts on the paper's row (its TPU7x block sizes), from
    the run's manifest (``paper_traffic``: computed when the run started), else None."""
    traffic = run.manifest.get("paper_traffic") or {}
    entries = [v for v in traffic.values() if isinstance(v, dict) and v.get("backend") == "rpa_v3"]
    for v in entries[:1]:
        row = ((v.get("tables") or {}).get(table) or {}).get(str(int(sweep)))
        if row:
            return float(row["traffic_ceiling_pct"])
    return None


def _side_row(spec, p: pd.Series, m: pd.Series | None, ceiling: float | None = None) -> dict:
    util = spec.util_column
    entry = {"sweep": int(p["sweep_value"]), "variant": p["variant"], "kernel": None, "status": NOT_MEASURED,
           "paper_latency_us": p["latency_us"], "paper_util_pct": p["util_printed_pct"],
           "paper_ceiling_pct": ceiling,
           "paper_bound_us": p["bound_time_us"], "paper_eff_pct": p["roofline_efficiency_pct"]}
    if m is None:
        return entry
    speed = m.get("status") == Status.OK and not pd.isna(m.get("latency_us"))
    lat = float(m["latency_us"]) if speed else None
    mutil = _measured_util(m, util) if speed else None
    eff = float(m["roofline_efficiency_pct"]) if speed and not pd.isna(m.get("roofline_efficiency_pct")) else None
    work_col = "hbm_bytes" if spec.phase == "decode" else "flops"
    work = m.get(work_col)
    entry.update({
        "kernel": m["kernel"], "status": m.get("status"),
        "latency_us": lat, "util_pct": mutil, "bound_us": m.get("bound_time_us") if speed else None, "eff_pct": eff,
        "latency_ratio": lat / p["latency_us"] if lat else None,
        "util_delta_pp": mutil - p["util_printed_pct"] if mutil is not None else None,
        "eff_delta_pp": eff - p["roofline_efficiency_pct"] if eff is not None else None,
        "work_ratio": float(work) / float(p[work_col]) if speed and not pd.isna(work) and work > 0 else None,
    })
    return entry


def side_by_side(run: LoadedRun, table: str) -> pd.DataFrame:
    """Every printed row of the paper's table (incl/excl prep) beside this run's rows of the
    same length and variant, one per kernel (interpret-mode rows left out); a paper row
    the run did not measure appears once, with status "not measured here"."""
    spec = paper.PAPER_TABLES[table]
    printed = paper.recompute_table(table)
    printed = printed[printed["variant"].isin(tuple(VARIANT_ORDER))]
    measured = _rows_for(run.measurements, table)
    measured = measured[~measured["interpret"].fillna(False).astype(bool) & measured[spec.sweep_column].notna()]
    lengths = measured[spec.sweep_column].astype(int)
    out = []
    for _, p in printed.iterrows():
        matches = measured[(lengths == int(p["sweep_value"])) & (measured["variant"] == p["variant"])]
        ceiling = paper_ceiling(run, table, int(p["sweep_value"]))
        out += [_side_row(spec, p, m, ceiling) for _, m in matches.iterrows()] or [_side_row(spec, p, None, ceiling)]
    frame = pd.DataFrame(out)
    order = frame["variant"].map(VARIANT_ORDER)
    return (frame.assign(_v=order, _k=frame["kernel"].fillna("")).sort_values(["_v", "sweep", "_k"], kind="stable")
            .drop(columns=["_v", "_k"]).reset_index(drop=True))


def scale_of(run: LoadedRun) -> tuple[str | None, bool]:
    """(scale name, reduced?) from the manifest (``scale`` or ``config.scale``) or the rows."""
    config = run.manifest.get("config") or {}
    for scale in (run.manifest.get("scale"), config.get("scale") if isinstance(config, dict) else None):
        if isinstance(scale, dict) and scale.get("name"):
            return str(scale["name"]), bool(scale.get("reduced", scale["name"] != "full"))
        if isinstance(scale, str):
            return scale, scale != "full"
    names = sorted({str(v) for v in run.measurements["scale"].dropna()})
    if names:
        return ", ".join(names), names != ["full"]
    return None, False


def _scale_notes(run: LoadedRun) -> list[str]:
    name, reduced = scale_of(run)
    if not reduced:
        return []
    return [f"This run is a scaled-down sweep (scale={name}): shapes are not the paper's. Rows are matched to the "
            "paper by context / sequence length where both exist; the work ratio column says how much smaller "
            "each measured call is than the paper's."]


def _unmatched_note(run: LoadedRun, table: str, rows: pd.DataFrame) -> str | None:
    spec = paper.PAPER_TABLES[table]
    measured = _rows_for(run.measurements, table)
    measured = measured[~measured["interpret"].fillna(False).astype(bool)][spec.sweep_column].dropna().astype(int)
    printed = set(paper.load_paper_table(table)[spec.sweep_column].astype(int))
    extra = sorted(set(measured) - printed)
    what = "context lengths" if spec.phase == "decode" else "sequence lengths"
    listed = f"this run's {what} {', '.join(map(str, extra))} are not in the paper's sweep" if extra else ""
    if (rows["status"] == NOT_MEASURED).all():
        why = listed or f"this run has no {what} outside interpret mode"
        return f"{table}: {why}, so the paper's rows and their TPU7x bounds stand alone (see Measured speed)."
    return f"{table}: {listed} (see Measured speed)." if extra else None


def paper_section(run: LoadedRun) -> Section:
    title = "The paper side by side"
    frame = run.measurements
    if frame.empty or not frame["workload_kind"].isin(("paper_decode", "paper_prefill")).any():
        return Section("paper", title, omitted="this run measured none of the paper experiments "
                       "(paper_decode, paper_prefill_noncausal, paper_prefill_causal)")
    notes = []
    devices = sorted({str(d) for d in frame["device"].dropna()}) or [run.device]
    if devices != [PAPER_DEVICE]:
        notes.append(f"This run's device is {', '.join(devices)}, not a TPU7x: the paper measured one TPU7x chip, "
                     "so latency ratios say nothing about the kernel's speed. The comparison is of shape (how "
                     "utilisation grows with length) and accounting (work ratio = this run's analytic bytes or "
                     "FLOPs over the paper's; roofline efficiency = bound / latency on each side's own device).")
    notes += _scale_notes(run)
    paper_rows = frame[frame["workload_kind"].isin(("paper_decode", "paper_prefill"))]
    interp = paper_rows[paper_rows["interpret"].fillna(False).astype(bool)]
    if not interp.empty:
        notes.append(f"{len(interp)} paper-experiment rows of {', '.join(sorted(set(interp['kernel'])))} ran in "
                     "interpret mode: they are left out here (their time is the emulator's); see Correctness.")
    tables = []
    for name, caption, _, util in TABLES:
        if _rows_for(frame, name).empty:
            continue
        rows = side_by_side(run, name)
        unmatched = _unmatched_note(run, name, rows)
        if unmatched:
            notes.append(unmatched)
        rest = rows[rows["status"] == NOT_MEASURED]
        if len(rest):  # the rows this run can be compared with; the paper's others counted in one line
            what = "c" if name == "table4" else "s"
            values = ", ".join(fmt_num(v) for v in sorted(set(rest["sweep"].dropna())))
            notes.append(f"{name}: {len(rest)} more paper rows ({what} = {values}) have no measurement in this run "
                         "(`rpa-bench roofline --paper " + name + "` prints them with their TPU7x bounds).")
            rows = rows[rows["status"] != NOT_MEASURED]
        if rows.empty:
            continue
        label = "MBU" if util == "mbu_pct" else "MFU"
        tables.append(table_from_frame(rows, [
            Column("sweep", "c" if name == "table4" else "s", fmt_num, numeric=True),
            Column("variant", "variant"), Column("kernel", "kernel"),
            Column("status", "status", css=lambda v: "skipped" if v == NOT_MEASURED else ("ok" if v == "ok" else "failed")),
            Column("paper_latency_us", "paper latency (us, TPU7x)", fmt_num, numeric=True),
            Column("paper_util_pct", f"paper {label} (%)", fmt_pct, numeric=True),
            Column("paper_ceiling_pct", "v3 traffic ceiling on MBU (%, TPU7x blocks)", fmt_pct, numeric=True),
            Column("paper_bound_us", "TPU7x bound (us)", fmt_num, numeric=True),
            Column("paper_eff_pct", "paper bound/latency (%)", fmt_pct, numeric=True),
            Column("latency_us", f"run latency (us, {', '.join(devices)})", fmt_num, numeric=True),
            Column("util_pct", f"run {label} (%, paper conv.)", fmt_pct, numeric=True),
            Column("bound_us", "run bound (us)", fmt_num, numeric=True),
            Column("eff_pct", "run bound/latency (%)", fmt_pct, numeric=True),
            Column("latency_ratio", "latency run/paper (x)", fmt_num, numeric=True),
            Column("util_delta_pp", f"{label} delta (pp)", fmt_pct, numeric=True),
            Column("eff_delta_pp", "efficiency delta (pp)", fmt_pct, numeric=True),
            Column("work_ratio", "work run/paper (x)", fmt_num, numeric=True),
        ], f"{caption}; paper values as printed, bound recomputed for TPU7x (paper convention)"))
    return Section("paper", title, notes=tuple(notes), tables=tuple(tables), intro=(
        "Paper: arXiv:2604.15464 (RPA), Tables 4, 6, 8, as printed. TPU7x bound: max(bytes / HBM bandwidth, "
        "FLOPs / (peak x MXU cap)) for the paper's row. Deltas are run minus paper; ratios run over paper. "
        "Rows that did not pass show their status and no speed."))
