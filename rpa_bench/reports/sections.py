"""Report sections built from one loaded run: tables, notes and charts (not the paper's).

Speed appears only for rows with status ok that did not run in interpret mode; every
row appears in the correctness section.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pandas as pd

from rpa_bench.measure.phases import PHASES
from rpa_bench.reports import charts
from rpa_bench.reports.html import Column, Image, Section, flatten, fmt_num, fmt_pct, key_value_table, table_from_frame
from rpa_bench.status import Status
from rpa_bench.store.load import LoadedRun
from rpa_bench.store.schema import COLUMNS, STATUSES

STATUS_ORDER = {Status.FAILED: 0, Status.INCORRECT: 1, Status.SKIPPED: 2, Status.OK: 3}


def _point_number(point_id) -> float:
    match = re.search(r"(-?\d+(?:\.\d+)?)", str(point_id))
    return float(match.group(1)) if match else float("inf")


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """Workload, kernel, variant, then the point's number (ctx=512 before ctx=1024)."""
    keyed = frame.assign(_n=frame["point_id"].map(_point_number))
    return keyed.sort_values(["workload", "kernel", "variant", "_n", "point_id"], kind="stable").drop(columns="_n")


def interpret_note(run: LoadedRun) -> str | None:
    rows = run.measurements[run.measurements["interpret"].fillna(False).astype(bool)]
    if rows.empty:
        return None
    kernels = ", ".join(sorted(set(rows["kernel"].dropna())))
    return (f"{len(rows)} measurements ({kernels}) ran in Pallas interpret mode: the TPU kernel is emulated on the "
            "host, so their time measures the emulator, not the kernel. They are shown only as correctness results "
            "and are never charted, tabulated or compared as speed.")


def _status_css(value) -> str:
    return str(value) if value in STATUSES else ""


def correctness_section(run: LoadedRun) -> Section:
    frame = run.measurements
    if frame.empty:
        return Section("correctness", "Correctness statuses", omitted="the run holds no measurements")
    counts = (frame.assign(interpret=frame["interpret"].fillna(False).astype(bool))
              .groupby(["kernel", "interpret", "status"], dropna=False).size().unstack("status", fill_value=0)
              .reindex(columns=list(STATUSES), fill_value=0).reset_index())
    summary = table_from_frame(counts, [Column("kernel", "kernel"), Column("interpret", "interpret mode")]
                               + [Column(s, s, fmt_num, numeric=True) for s in STATUSES],
                               "Measurements per kernel and status")
    rows = frame.assign(_s=frame["status"].map(STATUS_ORDER).fillna(-1), _n=frame["point_id"].map(_point_number))
    rows = rows.sort_values(["_s", "workload", "kernel", "_n"], kind="stable")
    detail = table_from_frame(rows, [
        Column("status", "status", css=_status_css), Column("workload", "workload"), Column("point_id", "point"),
        Column("kernel", "kernel"), Column("variant", "variant"), Column("interpret", "interpret"),
        Column("max_abs_err", "max abs err", fmt_num, numeric=True),
        Column("tolerance", "tolerance", fmt_num, numeric=True), Column("error", "error / skip reason"),
    ], "Every measurement's status (failures first); errors are against the reference kernel")
    return Section("correctness", "Correctness statuses", tables=(summary, detail),
                   intro="Every measurement is a record with a status; failures are rows, not gaps.")


def measurements_section(run: LoadedRun) -> Section:
    rows = charts.speed_rows(run.measurements)
    if rows.empty:
        return Section("measurements", "Measured speed", omitted=(
            "no measurement has status ok outside interpret mode, so this run has no speed to show"))
    rows = ordered(rows)
    shared, cells = shared_warnings(rows["warnings"])
    rows = rows.assign(ci=[f"{fmt_num(lo)} \u2013 {fmt_num(hi)}" for lo, hi in
                           zip(rows["latency_ci_low_us"], rows["latency_ci_high_us"])],
                       session=[_session(p) for p in rows["capture_path"]], warnings=cells)
    table = table_from_frame(rows, [
        Column("workload", "workload"), Column("point_id", "point"), Column("phase", "phase"),
        Column("kernel", "kernel"), Column("variant", "variant"), Column("timing_source", "timing"),
        Column("latency_us", "median latency (us)", fmt_num, numeric=True), Column("ci", "95% CI (us)", css=lambda _: "nowrap"),
        Column("mbu_pct", "MBU (%)", fmt_pct, numeric=True), Column("mfu_pct", "MFU (%)", fmt_pct, numeric=True),
        Column("mbu_si_pct", "MBU SI (%)", fmt_pct, numeric=True), Column("mfu_si_pct", "MFU SI (%)", fmt_pct, numeric=True),
        Column("bound_time_us", "roofline bound (us)", fmt_num, numeric=True),
        Column("roofline_efficiency_pct", "bound / latency (%)", fmt_pct, numeric=True),
        Column("bound_by", "bound by"), Column("above_roof", "above roof"),
        Column("session", "xprof session"), Column("warnings", "warnings"),
    ], f"Median per-call latency and utilisation on {run.device}; MBU/MFU columns use the convention in "
       "'Metric conventions' (SI columns are always SI)")
    notes = tuple(f"[{tag}] ({n} of {len(rows)} rows): {text}" for tag, text, n in shared)
    if rows["session"].astype(bool).any():
        notes += (f"Each measurement's profiler capture is an xprof session: `rpa-bench xprof {run.path}` starts "
                  "xprof on the run; pick the row's session under Runs, then the trace viewer.",)
    return Section("measurements", "Measured speed", tables=(table,), notes=notes)


def shared_warnings(values: pd.Series, *, min_rows: int = 2) -> tuple[list[tuple[str, str, int]], list[str]]:
    """Warnings repeated on several rows, stated once: ([(tag, text, rows)], each row's cell
    with the shared ones as tags ``[W1]`` and its own warnings in full)."""
    lists = [list(v) if isinstance(v, (list, tuple, np.ndarray)) else [] for v in values]
    counts: dict[str, int] = {}
    for ws in lists:
        for w in dict.fromkeys(str(x) for x in ws):
            counts[w] = counts.get(w, 0) + 1
    common = [w for w, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n >= min_rows]
    tags = {w: f"W{i + 1}" for i, w in enumerate(common)}
    cells = ["; ".join(f"[{tags[str(w)]}]" if str(w) in tags else str(w) for w in ws) for ws in lists]
    return [(tags[w], w, counts[w]) for w in common], cells


def _session(capture_path) -> str:
    """The xprof session of a stored capture path (captures/plugins/profile/<session>/<host>.xplane.pb)."""
    parts = str(capture_path or "").split("/")
    if len(parts) >= 2 and "profile" in parts:
        return parts[-2]
    return ""


def _matrix_unit_cap(run: LoadedRun) -> float | None:
    """Share of the matrix unit attention can use at the run's head_dim (None: not a TPU / mixed)."""
    spec = run.manifest.get("device_spec") or {}
    width = spec.get("matrix_unit_width") if isinstance(spec, dict) else None
    head_dims = set(run.measurements["head_dim"].dropna().astype(int))
    if not width or len(head_dims) != 1:
        return None
    d = head_dims.pop()
    return d / (-(-d // int(width)) * int(width))  # as DeviceSpec.max_mxu_utilization


PLACEHOLDER_PEAKS = "over placeholder peaks, not measured on this machine (rpa-bench calibrate measures them)"


def _placeholder(spec: dict) -> bool:
    """The spec's roofs are stand-ins, not figures of any machine (the CPU before `rpa-bench calibrate`)."""
    sources = spec.get("sources") if isinstance(spec, dict) else None
    return isinstance(sources, dict) and any("placeholder" in str(sources.get(f, "")) for f in
                                             ("hbm_bw_bytes_per_s", "peak_bf16_flops_per_s"))


def _peak_label(spec: dict, calibration: dict | None) -> str:
    """What the datasheet compute roof is: bf16 peak, a measured device's calibrated matmul, or a placeholder."""
    if _placeholder(spec):
        return "placeholders, not measured: rpa-bench calibrate"
    if isinstance(spec, dict) and spec.get("measured"):
        dtype = (calibration or {}).get("matmul_dtype") if isinstance(calibration, dict) else None
        return f"measured {dtype} matmul" if dtype else "measured"
    return "bf16 peak"


def roofline_section(run: LoadedRun, out_dir: pathlib.Path) -> Section:
    spec = run.manifest.get("device_spec") or {}
    cal_bw, cal_flops = charts.calibrated_roofs(run.manifest.get("calibration"))
    path = charts.roofline_chart(
        run.measurements, out_dir / "roofline.png", device=run.device,
        hbm_bw_bytes_per_s=spec.get("hbm_bw_bytes_per_s"), peak_flops_per_s=spec.get("peak_bf16_flops_per_s"),
        calibrated_bw_bytes_per_s=cal_bw, calibrated_flops_per_s=cal_flops, matrix_unit_cap=_matrix_unit_cap(run),
        peak_label=_peak_label(spec, run.manifest.get("calibration")),
        roof_label="placeholder roof (not this machine)" if _placeholder(spec) else "datasheet roof")
    if path is None:
        return Section("roofline", "Roofline", omitted=(
            "no measurement with status ok, outside interpret mode, with analytic FLOPs and bytes"))
    notes = []
    if _placeholder(spec):
        notes.append(f"The {run.device} roof drawn is a placeholder ({charts.si_rate(spec.get('hbm_bw_bytes_per_s'), 'B')}, "
                     f"{charts.si_rate(spec.get('peak_bf16_flops_per_s'), 'FLOP')}), not a figure of this machine: points "
                     "may sit above it. `rpa-bench calibrate` measures the machine; later runs use its figures.")
    elif cal_bw is None:
        notes.append("No calibration in this run: only the datasheet roof is drawn.")
    elif cal_bw == spec.get("hbm_bw_bytes_per_s") and cal_flops == spec.get("peak_bf16_flops_per_s"):
        notes.append(f"The {run.device} spec is itself measured (its peaks are the calibration), so the datasheet "
                     "and calibrated roofs coincide.")
    return Section("roofline", "Roofline", images=(Image(path.name, f"roofline chart on {run.device}"),),
                   notes=tuple(notes), intro=(
                       "One point per measured batch: analytic FLOPs over analytic HBM bytes against FLOPs over "
                       "the median latency. Solid line: datasheet roof; dashed: calibrated (measured) ceilings; dotted: "
                       "the compute ceiling attention's matmuls can reach on the matrix unit at this head_dim. "
                       "Filled markers exclude preprocessing, hollow ones include it."))


def utilization_sections(run: LoadedRun, out_dir: pathlib.Path) -> list[Section]:
    out = []
    placeholder = _placeholder(run.manifest.get("device_spec") or {})
    for phase, ident, title, what in (
        ("decode", "mbu", "Decode: MBU vs context length", "decode points (paper or synthetic sweeps)"),
        ("prefill", "mfu", "Prefill: MFU vs sequence length", "single-sequence prefill points"),
    ):
        path = charts.utilization_chart(
            run.measurements, out_dir / f"{ident}_{phase}.png", device=run.device, phase=phase,
            peak_note=PLACEHOLDER_PEAKS if placeholder else None)
        if path is None:
            out.append(Section(ident, title, omitted=f"this run has no {what} with status ok outside interpret mode"))
        else:
            notes = (f"{PLACEHOLDER_PEAKS[0].upper()}{PLACEHOLDER_PEAKS[1:]}: the percentages say nothing about "
                     "this machine and may pass 100%.",) if placeholder else ()
            out.append(Section(ident, title, images=(Image(path.name, title),), notes=notes))
    return out




CONVENTION_DEFINITIONS = {
    "paper": ("MBU = bytes / 2^30 / s over peak bytes / 1e9 / s (GiB/s over GB/s, as the paper; SI MBU is 1.0737x "
              "larger); MFU = FLOP/s over peak x max matrix-unit utilisation (head_dim / MXU width)"),
    "si": "MBU = bytes/s over peak bytes/s; MFU = FLOP/s over peak FLOP/s",
}
FLOPS_COUNTS = {
    "noncausal": "4 * q_len * kv_len * h_q * d per sequence (QK^T and PV only)",
    "causal_executed": "query/key pairs the kernel computes in KV blocks (masked entries inside a block count)",
    "causal_useful": "only the query/key pairs a causal mask keeps",
}


def phases_section(run: LoadedRun, out_dir: pathlib.Path) -> Section:
    """Where the run's wall time went (the manifest's per-phase account)."""
    seconds = run.manifest.get("phases")
    if not isinstance(seconds, dict) or not seconds:
        return Section("phases", "Where the run's time went", omitted="the run recorded no per-phase account")
    wall = run.manifest.get("process_wall_s")
    ratio = run.manifest.get("overhead_ratio")
    kernels = ", ".join(sorted({str(k) for k in run.measurements["kernel"].dropna()})) or "no kernel"
    title = f"{run.name} on {run.device} with {kernels}" + (
        f": {wall:.1f} s of wall time" if isinstance(wall, (int, float)) else "")
    order = [*PHASES, "other"]
    ordered_seconds = {k: seconds[k] for k in sorted(seconds, key=lambda k: order.index(k) if k in order else 99)}
    path = charts.phase_chart(ordered_seconds, out_dir / "phases.png", title=title)
    note = (f"Overhead: (wall - start-up) / (compile + warm-up + timed samples) = {ratio:.2f}x."
            if isinstance(ratio, (int, float)) else "")
    return Section("phases", "Where the run's time went", images=(Image(path.name, "time per phase"),),
                   notes=(note,) if note else (),
                   intro="Wall seconds per phase; the timing.* settings trade these (fewer samples, no capture, ...).")


def conventions_section(run: LoadedRun) -> Section:
    frame = run.measurements
    def values(col):
        return ", ".join(sorted({str(v) for v in frame[col].dropna()})) or "\u2014"
    rows = [
        ("latency_us", COLUMNS["latency_us"][1], f"timing source: {values('timing_source')}"),
        ("hbm_bytes", "analytic HBM bytes: Q read, K/V read, new K/V written, output written; no metadata", ""),
        ("flops", "analytic matmul FLOPs", "; ".join(f"{c}: {FLOPS_COUNTS.get(c, c)}" for c in sorted(set(frame['flops_count'].dropna())))),
        ("arithmetic_intensity", COLUMNS["arithmetic_intensity"][1], ""),
        ("throughput_gb_per_s / _gib_per_s", "bytes / 1e9 / s and bytes / 2^30 / s", ""),
        ("mbu_pct / mfu_pct", "utilisation in the run's convention",
         "; ".join(f"{c}: {CONVENTION_DEFINITIONS.get(c, c)}" for c in sorted(set(frame['convention'].dropna()))) or "\u2014"),
        ("mbu_si_pct / mfu_si_pct", "always SI, against the datasheet peaks of the run's device spec", ""),
        ("mbu_calibrated_pct / mfu_calibrated_pct", "SI, against the calibrated (measured) ceilings, if any", ""),
        ("bound_time_us", COLUMNS["bound_time_us"][1], "max(bytes / bandwidth, FLOPs / peak)"),
        ("roofline_efficiency_pct", COLUMNS["roofline_efficiency_pct"][1], ""),
    ]
    table = table_from_frame(pd.DataFrame(rows, columns=["metric", "definition", "in this run"]),
                             [Column("metric", "metric"), Column("definition", "definition"), Column("in this run", "in this run")],
                             "The convention of every metric on this page")
    return Section("conventions", "Metric conventions", tables=(table,))


def provenance_section(run: LoadedRun) -> Section:
    m = run.manifest
    tables = []
    general = [("run_id", run.name), ("status", m.get("status")), ("created_utc", m.get("created_utc")),
               ("schema_version", m.get("schema_version")), ("command", " ".join(map(str, m.get("command") or []))),
               ("synthetic", m.get("synthetic", False))]
    general += flatten({key: m[key] for key in ("experiment", "scale", "mesh", "seeds") if key in m})
    general += flatten(m.get("git") or {}, "git")
    tables.append(key_value_table(general, "Run and rpa_bench revision"))
    flags = m.get("flags")
    if isinstance(flags, dict):
        items = [(f"{group}.{k}", v) for group in ("env", "jax_config", "compiler_options")
                 for k, v in (flags.get(group) or {}).items()]
        tables.append(key_value_table(items or [("flags", "none set")],
                                      "Compiler and runtime flags in force (XLA_FLAGS, LIBTPU_INIT_ARGS, JAX_*, "
                                      "codegen-relevant jax config, per-executable compiler options)"))
    for key, caption in (("environment", "Environment (versions, host, platform)"),
                         ("kernels", "Kernel provenance (source, version, commit)"),
                         ("workloads", "Workloads: kinds, source files with sha256, seeds, summaries"),
                         ("device_spec", "Device spec used for the roofline (with sources)"),
                         ("calibration", "Calibration used (measured ceilings)"),
                         ("config", "Config as given (before the scale preset; the values used are below)")):
        value = m.get(key)
        if value:
            tables.append(key_value_table(flatten(value), caption))
    used = {name: w.get("config") for name, w in (m.get("workloads") or {}).items()
            if isinstance(w, dict) and isinstance(w.get("config"), dict)}
    if used:
        tables.append(key_value_table(flatten(used), "Workloads as measured (after the scale preset and the "
                                                     "command line: the values actually used)"))
    frame = run.measurements
    if not frame.empty:
        per_kernel = frame.groupby("kernel", dropna=False).agg(
            kernel_source=("kernel_source", lambda s: ", ".join(sorted({str(v) for v in s.dropna()}))),
            kernel_commit=("kernel_commit", lambda s: ", ".join(sorted({str(v) for v in s.dropna()}))),
            seeds=("seed", lambda s: ", ".join(str(int(v)) for v in sorted(set(s.dropna())))),
            hashes=("workload_hash", lambda s: str(s.nunique())),
        ).reset_index()
        tables.append(table_from_frame(per_kernel, [
            Column("kernel", "kernel"), Column("kernel_source", "source"), Column("kernel_commit", "commit"),
            Column("seeds", "seeds"), Column("hashes", "distinct workload hashes", numeric=True)],
            "Per kernel, from the measurement rows"))
    return Section("provenance", "Environment and provenance", tables=tuple(tables))



def _mbu_ci(row) -> str:
    lat, lo, hi, m = row["latency_us"], row["latency_ci_low_us"], row["latency_ci_high_us"], row["value"]
    if pd.isna(lo) or pd.isna(hi) or not lat:
        return f"{m:.1f}%"
    return f"{m:.1f}% (CI {m * lat / hi:.1f}-{m * lat / lo:.1f})"


def _warning_kind(text: str) -> str:
    """A warning with its numbers taken out, so rows that differ only in a value count together."""
    return re.sub(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?", "#", text)[:70]


def summary_section(run: LoadedRun) -> Section:
    """One screen first: what ran, the headline numbers, what failed and why, in words a reviewer can paste."""
    frame = run.measurements
    if frame.empty:
        return Section("summary", "Summary", omitted="the run holds no measurements")
    m = run.manifest
    interp = frame["interpret"].fillna(False).astype(bool)
    kernels = []
    for k, g in frame.groupby("kernel"):
        mode = "interpret mode (checked only)" if interp[g.index].all() else "timed"
        kernels.append(f"{k} ({mode})")
    workloads = ", ".join(sorted(set(frame["workload"].dropna())))
    scale = (m.get("scale") or {}).get("name") or (", ".join(sorted(set(frame["scale"].dropna()))) or "?")
    counts = frame["status"].value_counts().to_dict()
    lines = [f"Ran on {run.device} ({m.get('environment', {}).get('device_kind', '?')}): "
             f"{', '.join(kernels)} over {workloads}, scale {scale}; {len(frame)} rows: "
             + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "."]
    speed = charts.speed_rows(frame)
    rows = []
    for (kernel, variant), g in speed.groupby(["kernel", "variant"]):
        for phase_name, col, what in (("decode", "mbu_pct", "best MBU"), ("prefill", "mfu_pct", "best MFU")):
            sub = g[(g["phase"] == phase_name) & g[col].notna()]
            if sub.empty:
                continue
            best = sub.loc[sub[col].idxmax()].copy()
            best["value"] = best[col]
            rows.append({"kernel": kernel, "variant": variant, "metric": what, "value": _mbu_ci(best),
                         "point": f"{best['workload']} {best['point_id']}", "latency_us": best["latency_us"],
                         "timing": best["timing_source"]})
    tables = []
    if rows:
        tables.append(table_from_frame(pd.DataFrame(rows), [
            Column("kernel", "kernel"), Column("variant", "variant"), Column("metric", "headline"),
            Column("value", "value (95% CI)"), Column("point", "at point"),
            Column("latency_us", "median latency (us)", fmt_num, numeric=True), Column("timing", "timing")],
            "Headline numbers (paper convention; the CI follows from the latency's)"))
    else:
        lines.append("No measurement was timed outside interpret mode, so there is no speed to headline: "
                     "the RPA kernels off TPU are checked for correctness only.")
    bad = frame[frame["status"].isin([Status.FAILED, Status.INCORRECT])]
    if len(bad):
        reasons = bad["error"].fillna("").str.slice(0, 90).value_counts().head(3)
        lines.append(f"{len(bad)} rows failed or were incorrect: "
                     + "; ".join(f"{n}x {r}" for r, n in reasons.items()) + ".")
    else:
        lines.append("Nothing failed; every timed kernel matched the reference on the same batch.")
    warned = {}
    for w in frame["warnings"].dropna():
        texts = [w] if isinstance(w, str) else list(w)  # parquet gives arrays, builders lists
        for key in dict.fromkeys(_warning_kind(str(text)) for text in texts):  # a row counts once per kind
            warned[key] = warned.get(key, 0) + 1
    common = sorted(warned.items(), key=lambda kv: -kv[1])[:3]
    notes = tuple(f"{n} rows: {t}..." for t, n in common)
    return Section("summary", "Summary", intro=" ".join(lines), tables=tuple(tables), notes=notes)
