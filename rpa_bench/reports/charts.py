"""PNG charts of one run (matplotlib, Agg). Each returns the file it wrote, or None when
it has nothing to draw (callers then omit the section and say why)."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402
from rpa_bench.status import Status

PHASE_COLORS = {"decode": "#1f77b4", "prefill": "#d62728", "mixed": "#2ca02c"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
CONVENTION_TEXT = {
    "paper": "paper convention (MBU: GiB/s over GB/s peak; MFU: over peak x MXU ceiling)",
    "si": "SI convention (bytes/s over bytes/s peak; FLOP/s over peak FLOP/s)",
}
DPI = 110


def convention_label(conventions: Sequence[str]) -> str:
    names = sorted({str(c) for c in conventions if isinstance(c, str)})
    if not names:
        return "convention not recorded"
    return "; ".join(CONVENTION_TEXT.get(n, f"{n} convention") for n in names)


def speed_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows that may be shown as speed: status ok, not interpret mode, a positive latency."""
    ok = (frame["status"] == Status.OK) & ~frame["interpret"].fillna(False).astype(bool)
    latency = pd.to_numeric(frame["latency_us"], errors="coerce")
    return frame[ok & (latency > 0)].copy()


def _save(fig: Figure, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _si(value: float, _pos=None) -> str:
    """1e11 -> 100G, 2.3e12 -> 2.3T: FLOP/s tick labels."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:g}{prefix}"
    return f"{value:g}"


def si_rate(value: float | None, unit: str) -> str:
    """50e9, "FLOP" -> "50 GFLOP/s", 28.6187e9, "B" -> "28.6 GB/s" (3 significant digits; no
    rounding of 0.05 T up to 0.1)."""
    if not value:
        return "-"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")):
        if abs(value) >= factor or factor == 1:
            return f"{value / factor:.3g} {prefix}{unit}/s"


def _tokens(value: float, _pos=None) -> str:
    """512, 1K, 32K: token counts as the paper writes them."""
    if value >= 1024 and value % 1024 == 0:
        return f"{int(value) // 1024}K"
    return f"{value:g}"


def _kernel_markers(kernels: Sequence[str]) -> dict[str, str]:
    return {k: MARKERS[i % len(MARKERS)] for i, k in enumerate(sorted(set(kernels)))}


def _roof(ax, ai: np.ndarray, bw: float | None, peak: float | None, *, style: str, label: str) -> None:
    if not bw or not peak:
        return
    ax.plot(ai, np.minimum(peak, bw * ai), style, color="black", lw=1.2, label=label)
    ridge = peak / bw
    if ai.min() <= ridge <= ai.max():
        ax.axvline(ridge, color="grey", lw=0.6, ls=":")


def roofline_chart(
    frame: pd.DataFrame,
    out_path: pathlib.Path,
    *,
    device: str,
    hbm_bw_bytes_per_s: float | None,
    peak_flops_per_s: float | None,
    calibrated_bw_bytes_per_s: float | None = None,
    calibrated_flops_per_s: float | None = None,
    matrix_unit_cap: float | None = None,
    peak_label: str = "bf16 peak",
    roof_label: str = "datasheet roof",
) -> pathlib.Path | None:
    """Arithmetic intensity vs attained FLOP/s (log-log), roofs, one point per measured batch.

    ``peak_label`` says what the compute roof is (a measured device's roof is its calibration).

    ``matrix_unit_cap`` (< 1): the share of the matrix unit attention's matmuls can use at
    this head_dim (TPU7x, head_dim 128: 0.5); drawn as a dotted compute ceiling.
    """
    rows = speed_rows(frame)
    rows = rows[(pd.to_numeric(rows["flops"], errors="coerce") > 0) & (pd.to_numeric(rows["hbm_bytes"], errors="coerce") > 0)]
    if rows.empty:
        return None
    flops = rows["flops"].astype(float)
    ai = flops / rows["hbm_bytes"].astype(float)
    attained = flops / (rows["latency_us"].astype(float) * 1e-6)
    fig = Figure(figsize=(8.5, 5.5))
    ax = fig.add_subplot()
    lo, hi = float(ai.min()) / 3, float(ai.max()) * 3
    for roof in (peak_flops_per_s, calibrated_flops_per_s):
        for bw in (hbm_bw_bytes_per_s, calibrated_bw_bytes_per_s):
            if roof and bw:
                lo, hi = min(lo, roof / bw / 3), max(hi, roof / bw * 3)
    grid = np.geomspace(lo, hi, 200)
    _roof(ax, grid, hbm_bw_bytes_per_s, peak_flops_per_s, style="-", label=roof_label)
    _roof(ax, grid, calibrated_bw_bytes_per_s, calibrated_flops_per_s, style="--", label="calibrated roof")
    if matrix_unit_cap and matrix_unit_cap < 1 and hbm_bw_bytes_per_s and peak_flops_per_s:
        _roof(ax, grid, hbm_bw_bytes_per_s, peak_flops_per_s * matrix_unit_cap, style=":",
              label=f"attention matmul ceiling ({matrix_unit_cap:.0%} of the matrix unit)")
    moved = pd.to_numeric(rows["moved_hbm_bytes"], errors="coerce") if "moved_hbm_bytes" in rows else None
    traffic_bars = moved is not None and bool(moved.notna().any()) and bool(hbm_bw_bytes_per_s and peak_flops_per_s)
    if traffic_bars:
        # the kernel-traffic roof of each point: the bytes its schedule moves, at the analytic AI
        ok = moved.notna() & (moved > 0)
        roof_k = np.minimum(peak_flops_per_s, hbm_bw_bytes_per_s * flops[ok] / moved[ok])
        ax.scatter(ai[ok], roof_k, marker="_", s=260, color="#444444", linewidths=1.6, zorder=2,
                   label="kernel-traffic roof (bytes the kernel's schedule moves)")
    markers = _kernel_markers(rows["kernel"])
    for (phase, kernel, variant), group in rows.groupby(["phase", "kernel", "variant"], sort=True):
        idx = group.index
        color = PHASE_COLORS.get(phase, "#7f7f7f")
        hollow = variant == "incl_prep"
        ax.scatter(ai[idx], attained[idx], marker=markers[kernel], s=42, label=f"{phase} / {kernel} / {variant}",
                   facecolors="none" if hollow else color, edgecolors=color, linewidths=1.3, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(_si))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _p: _si(v) if str(_si(v))[0] in "25" else ""))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.set_xlabel("arithmetic intensity (FLOP / HBM byte, analytic)"
                  + ("; lines: analytic roofs, bars: kernel-traffic roofs" if traffic_bars else ""))
    ax.set_ylabel("attained FLOP/s (analytic FLOPs / median latency)")
    roofs = "no datasheet roofs for this device" if not (hbm_bw_bytes_per_s and peak_flops_per_s) else (
        f"roofs: {si_rate(hbm_bw_bytes_per_s, 'B')}, {si_rate(peak_flops_per_s, 'FLOP')} ({peak_label})")
    kernels = ", ".join(sorted(set(rows["kernel"])))
    fig.suptitle(f"Roofline on {device} - kernels: {kernels}", fontsize=12)
    ax.set_title(f"SI units; {roofs}", fontsize=9)
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out_path)


def utilization_chart(
    frame: pd.DataFrame,
    out_path: pathlib.Path,
    *,
    device: str,
    phase: str,
    peak_note: str | None = None,
) -> pathlib.Path | None:
    """decode: MBU vs context length; prefill: MFU vs sequence length; one line per kernel.
    ``peak_note``: what the percentages are over when that is not a real peak (a placeholder)."""
    rows = speed_rows(frame)
    rows = rows[(rows["phase"] == phase) & (rows["workload_kind"] != "trace")]
    if phase == "decode":
        x = pd.to_numeric(rows["context_len"], errors="coerce").fillna(rows["max_kv_len"].astype(float) - 1)
        metric, xlabel, ylabel, split = "mbu_pct", "context length c (tokens)", "MBU (%)", ["kernel", "variant"]
    elif phase == "prefill":
        single = rows["num_seqs"] == 1
        rows = rows[single]
        x = pd.to_numeric(rows["seq_len"], errors="coerce").fillna(rows["num_tokens"].astype(float))
        metric, xlabel, ylabel, split = "mfu_pct", "sequence length s (tokens)", "MFU (%)", ["kernel", "variant", "causal"]
    else:
        raise ValueError(f"phase={phase!r}; allowed: decode, prefill")
    y = pd.to_numeric(rows[metric], errors="coerce")
    rows = rows.assign(_x=x, _y=y).dropna(subset=["_x", "_y"])
    if rows.empty:
        return None
    fig = Figure(figsize=(8.5, 4.8))
    ax = fig.add_subplot()
    markers = _kernel_markers(rows["kernel"])
    for key, group in rows.groupby(split, sort=True):
        group = group.sort_values("_x")
        label = " / ".join(str(k) if name != "causal" else ("causal" if k else "non-causal")
                           for name, k in zip(split, key))
        ax.plot(group["_x"], group["_y"], marker=markers[key[0]], ls="--" if key[1] == "incl_prep" else "-",
                label=label)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(_tokens))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, float(rows["_y"].max()) * 1.12)
    what = "MBU vs context length (decode)" if phase == "decode" else "MFU vs sequence length (prefill)"
    kernels = ", ".join(sorted(set(rows["kernel"])))
    fig.suptitle(f"{what} on {device} - kernels: {kernels}", fontsize=12)
    ax.set_title(convention_label(rows["convention"]) + (f"\n{peak_note}" if peak_note else ""), fontsize=8)
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    ax.legend(fontsize=8)
    return _save(fig, out_path)


STEP_COLUMNS = ("num_seqs", "num_tokens", "num_decode", "max_kv_len", "num_prefill", "total_kv_len")


def step_chart(steps: pd.DataFrame, out_path: pathlib.Path, *, workload: str, device: str,
               kernels: Sequence[str] = ()) -> pathlib.Path | None:
    """Batch shape per simulated step (from the run's stored per-step table)."""
    numeric = [c for c in steps.columns if pd.api.types.is_numeric_dtype(steps[c]) and not pd.api.types.is_bool_dtype(steps[c])]
    xcol = next((c for c in ("step", "step_index", "index") if c in numeric), None)
    cols = [c for c in STEP_COLUMNS if c in numeric] or [c for c in numeric if c != xcol][:4]
    cols = cols[:4]
    if not cols or steps.empty:
        return None
    x = steps[xcol] if xcol else pd.Series(np.arange(len(steps)))
    fig = Figure(figsize=(8.5, 1.9 * len(cols) + 0.8))
    axes = fig.subplots(len(cols), 1, sharex=True, squeeze=False)[:, 0]
    sampled = steps["sampled"].astype(bool) if "sampled" in steps.columns else None
    for ax, col in zip(axes, cols):
        ax.plot(x, steps[col], lw=0.8, color="#444444")
        if sampled is not None and sampled.any():
            ax.scatter(x[sampled], steps[col][sampled], color="#d62728", s=14, zorder=3, label="sampled step")
        ax.set_ylabel(col.replace("_", " "), fontsize=8)
        ax.grid(True, lw=0.3, alpha=0.5)
    if sampled is not None and sampled.any():
        axes[0].legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel(f"{xcol or 'row'} (scheduler step)")
    measured = f"red: steps sampled for measurement on {device}" + (f" with {', '.join(sorted(kernels))}" if kernels else "")
    fig.suptitle(f"Batch shape per step - trace {workload}\n(scheduler simulation; {measured}; counts, no convention)",
                 fontsize=11)
    return _save(fig, out_path)


def _spaced(ticks: Sequence[float], *, min_gap: float) -> list[float]:
    """Ticks at least ``min_gap`` apart in log space, always keeping 1."""
    out = [1.0] if 1.0 in ticks else []
    for t in sorted(ticks, key=lambda t: abs(np.log(t))):
        if all(abs(np.log(t / o)) >= min_gap for o in out):
            out.append(t)
    return sorted(out)


def ratio_chart(result: pd.DataFrame, out_path: pathlib.Path, *, device: str, side_a: str, side_b: str,
                threshold: float) -> pathlib.Path | None:
    """B/A median-latency ratio per point with its bootstrap CI (log axis)."""
    rows = result[result["mark"] != "not comparable"].dropna(subset=["ratio"])
    if rows.empty:
        return None
    colors = {"improved": "#2ca02c", "worse": "#d62728", "not significant": "#7f7f7f", "unreliable": "#ff7f0e"}
    labels = [f"{w} {p} {k} {v}" for w, p, k, v in zip(rows["workload"], rows["point_id"], rows["kernel"], rows["variant"])]
    y = np.arange(len(rows))
    ratio = rows["ratio"].to_numpy(float)
    low = rows["ci_low"].to_numpy(float)
    high = rows["ci_high"].to_numpy(float)
    err = np.vstack([np.clip(ratio - np.nan_to_num(low, nan=ratio), 0, None),
                     np.clip(np.nan_to_num(high, nan=ratio) - ratio, 0, None)])
    fig = Figure(figsize=(8.5, 1.4 + 0.28 * len(rows)))
    ax = fig.add_subplot()
    for mark, color in colors.items():
        sel = (rows["mark"] == mark).to_numpy()
        if sel.any():
            ax.errorbar(ratio[sel], y[sel], xerr=err[:, sel], fmt="o", color=color, ecolor=color, capsize=3, label=mark)
    ax.axvline(1.0, color="black", lw=0.8)
    for t in (threshold, 1 / threshold):
        ax.axvline(t, color="grey", lw=0.8, ls="--")
    geomean = float(np.exp(np.mean(np.log(ratio))))
    ax.axvline(geomean, color="#1f77b4", lw=1.0, ls=":", label=f"geometric mean {geomean:.3g}x")
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    nice = sorted({0.25, 0.5, 0.67, 0.8, 0.9, 0.95, 1.0, 1.05, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0,
                   round(threshold, 3), round(1 / threshold, 3)})
    ax.set_xticks(_spaced([t for t in nice if lo <= t <= hi], min_gap=np.log(hi / lo) / 10))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"ratio B/A of median latency (x; < 1 faster, > 1 slower; dashed: {threshold:g}x threshold)")
    kernels = ", ".join(sorted({str(k) for k in rows["kernel"]}))
    ax.set_title(f"B/A median latency on {device} - kernels: {kernels}\nA = {side_a}, B = {side_b}; 95% bootstrap CI; "
                 "per-call latency of each row's timing source", fontsize=10)
    ax.grid(True, axis="x", which="both", lw=0.3, alpha=0.5)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, out_path)


def calibrated_roofs(calibration: Mapping | None) -> tuple[float | None, float | None]:
    """(bandwidth bytes/s, FLOP/s) from a calibration record, whatever its exact key names."""
    if not isinstance(calibration, Mapping):
        return None, None
    bw = flops = None
    for key, value in calibration.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            continue
        if key.endswith("bytes_per_s") and bw is None:
            bw = float(value)
        elif key.endswith("flops_per_s") and flops is None:
            flops = float(value)
    return bw, flops


def window_chart(table: pd.DataFrame, out_path: pathlib.Path, *, workload: str, device: str) -> pathlib.Path:
    """Latency against the sliding window per kernel/variant, the roofline bound dashed beside it."""
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for (kernel, variant), g in table.groupby(["kernel", "variant"]):
        g = g.sort_values("window")
        line, = ax.plot(g["window"], g["latency_us"], marker="o", label=f"{kernel} {variant} (measured)")
        ax.plot(g["window"], g["bound_time_us"], linestyle="--", color=line.get_color(),
                label=f"{kernel} {variant} (roofline bound)")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{int(v)}"))
    ax.set_yscale("log")
    ax.set_xlabel("sliding window (keys a query sees)")
    ax.set_ylabel("latency (us)")
    ax.set_title(f"{workload} on {device}: latency against the window")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out_path)


def phase_chart(seconds: Mapping[str, float], out_path: pathlib.Path, *, title: str) -> pathlib.Path:
    """One horizontal bar per phase of a run's wall time."""
    items = [(k, float(v)) for k, v in seconds.items() if float(v) > 0]
    fig = Figure(figsize=(7.0, 0.32 * max(4, len(items)) + 1.0))
    ax = fig.add_subplot(1, 1, 1)
    names = [k for k, _ in items][::-1]
    values = [v for _, v in items][::-1]
    measured = {"compile", "warm-up", "timed samples"}
    ax.barh(names, values, color=["#2ca02c" if n in measured else "#7f7f7f" for n in names])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.1f}", va="center", fontsize=8)
    ax.set_xlabel("wall seconds (green: the measured work)")
    ax.set_title(title, fontsize=10)
    return _save(fig, out_path)
