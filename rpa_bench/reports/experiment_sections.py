"""Report sections of the experiments that ask one question each.

- ``sliding_window`` workloads: *does the window cut the kernel's time?* Per kernel and
  variant, latency and MBU against the window, beside the roofline's expectation (bytes
  and FLOPs follow ``min(kv_len, window)``): the measured time at each window as a share of
  the full-window time, next to the share the roofline expects.
- ``spec_verify`` workloads: the roofline's view of speculative decoding's verify step: at
  how many tokens per sequence the call stops being bandwidth bound on the run's device.
"""

from __future__ import annotations

import pathlib

import pandas as pd

from rpa_bench.reports import charts
from rpa_bench.reports.html import Column, Image, Section, fmt_num, fmt_pct, table_from_frame
from rpa_bench.roofline.specs import DeviceSpec
from rpa_bench.roofline.verify import verify_crossover, verify_point
from rpa_bench.store.load import LoadedRun
from rpa_bench.workloads.model import ModelSpec


def _workloads(run: LoadedRun, kind: str) -> list[str]:
    frame = run.measurements
    return sorted(set(frame.loc[frame["workload_kind"] == kind, "workload"].dropna()))


def _window_table(rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (kernel, variant), g in rows.groupby(["kernel", "variant"]):
        g = g.assign(w=pd.to_numeric(g["sliding_window"], errors="coerce")).sort_values("w", ascending=False)
        full_lat, full_bound = g["latency_us"].iloc[0], g["bound_time_us"].iloc[0]
        for _, r in g.iterrows():
            out.append({"kernel": kernel, "variant": variant, "window": r["w"], "latency_us": r["latency_us"],
                        "bound_time_us": r["bound_time_us"],
                        "measured_share_pct": 100.0 * r["latency_us"] / full_lat,
                        "expected_share_pct": 100.0 * r["bound_time_us"] / full_bound if full_bound else None,
                        "mbu_pct": r["mbu_pct"], "mfu_pct": r["mfu_pct"]})
    return pd.DataFrame(out)


def _window_verdicts(table: pd.DataFrame) -> list[str]:
    notes = []
    for (kernel, variant), g in table.groupby(["kernel", "variant"]):
        if len(g) < 2:
            continue
        small = g.sort_values("window").iloc[0]
        measured, expected = small["measured_share_pct"], small["expected_share_pct"]
        if pd.isna(expected):
            continue
        cut = "follows the window" if measured <= max(1.5 * expected, expected + 10.0) else \
            "does NOT follow the window (it still does most of the full-context work)"
        notes.append(f"{kernel} {variant}: at window {int(small['window'])} the roofline expects "
                     f"{expected:.0f}% of the full-window time; measured {measured:.0f}%: the time {cut}.")
    return notes


def sliding_window_sections(run: LoadedRun, out_dir: pathlib.Path) -> list[Section]:
    out = []
    for name in _workloads(run, "sliding_window"):
        rows = charts.speed_rows(run.measurements[run.measurements["workload"] == name])
        title = f"Sliding window: {name}"
        if rows.empty:
            out.append(Section(f"window-{name}", title, omitted=(
                "no measurement of this sweep was timed here (on CPU the RPA kernels are checked per window in "
                "interpret mode: see the correctness section)")))
            continue
        table = _window_table(rows)
        path = charts.window_chart(table, out_dir / f"window_{name}.png", workload=name, device=run.device)
        frame = table_from_frame(table, [
            Column("kernel", "kernel"), Column("variant", "variant"), Column("window", "window", fmt_num, numeric=True),
            Column("latency_us", "median latency (us)", fmt_num, numeric=True),
            Column("bound_time_us", "roofline bound (us)", fmt_num, numeric=True),
            Column("measured_share_pct", "measured, % of full window", fmt_pct, numeric=True),
            Column("expected_share_pct", "expected, % of full window", fmt_pct, numeric=True),
            Column("mbu_pct", "MBU (%)", fmt_pct, numeric=True), Column("mfu_pct", "MFU (%)", fmt_pct, numeric=True),
        ], f"Latency against the sliding window on {run.device}; the roofline expects the time to fall with "
           "min(kv_len, window)")
        out.append(Section(f"window-{name}", title, images=(Image(path.name, title),), tables=(frame,),
                           notes=tuple(_window_verdicts(table)),
                           intro="Does the window cut the kernel's time? A kernel that still reads the whole "
                                 "cache keeps its full-window time while its MBU collapses."))
    return out


def _device(run: LoadedRun) -> DeviceSpec | None:
    spec = run.manifest.get("device_spec")
    try:
        return DeviceSpec.from_dict(spec) if isinstance(spec, dict) else None
    except (TypeError, ValueError):
        return None


def spec_verify_sections(run: LoadedRun) -> list[Section]:
    out = []
    device = _device(run)
    for name in _workloads(run, "spec_verify"):
        frame = run.measurements[run.measurements["workload"] == name]
        title = f"Speculative verify: {name}"
        if device is None:
            out.append(Section(f"verify-{name}", title, omitted="the run's manifest has no device spec"))
            continue
        first = frame.iloc[0]
        model = ModelSpec.from_dict({"name": str(first["model"]), "num_q_heads": int(first["num_q_heads"]),
                                     "num_kv_heads": int(first["num_kv_heads"]), "head_dim": int(first["head_dim"]),
                                     "dtype": str(first["dtype"]), "kv_dtype": str(first["kv_dtype"])})
        shapes = (frame[["num_seqs", "max_kv_len", "num_tokens", "page_size"]].drop_duplicates()
                  .assign(q=lambda f: f["num_tokens"] // f["num_seqs"], ctx=lambda f: f["max_kv_len"] - f["num_tokens"] // f["num_seqs"]))
        speed = charts.speed_rows(frame)
        rows, notes = [], []
        for (n, ctx, page), g in shapes.groupby(["num_seqs", "ctx", "page_size"]):
            cross = verify_crossover(model, device, num_seqs=int(n), context_len=int(ctx), page_size=int(page))
            notes.append(f"{int(n)} sequences over {int(ctx)} cached tokens: memory bound up to "
                         + (f"{cross - 1} tokens per sequence; compute bound from {cross}" if cross else
                            "256 tokens per sequence and beyond") + f" on {device.name}.")
            for q in sorted(set(int(v) for v in g["q"])):
                vp = verify_point(model, device, num_seqs=int(n), context_len=int(ctx), query_len=q, page_size=int(page))
                measured = speed[(speed["num_seqs"] == n) & (speed["num_tokens"] == n * q) & (speed["max_kv_len"] == ctx + q)]
                best = measured.loc[measured["latency_us"].idxmin()] if not measured.empty else None
                rows.append({"num_seqs": int(n), "context": int(ctx), "q": q, "intensity": vp.intensity,
                             "bound_by": vp.bound_by, "bound_us": max(vp.memory_time_s, vp.compute_time_s) * 1e6,
                             "best": None if best is None else f"{best['kernel']} {best['variant']}",
                             "best_us": None if best is None else best["latency_us"]})
        table = table_from_frame(pd.DataFrame(rows), [
            Column("num_seqs", "sequences", fmt_num, numeric=True), Column("context", "cached tokens", fmt_num, numeric=True),
            Column("q", "tokens / sequence", fmt_num, numeric=True),
            Column("intensity", "FLOP / byte", fmt_num, numeric=True), Column("bound_by", "bound by"),
            Column("bound_us", "roofline bound (us)", fmt_num, numeric=True),
            Column("best", "fastest measured"), Column("best_us", "its latency (us)", fmt_num, numeric=True),
        ], f"The verify step's roofline on {device.name} (ridge {device.peak_bf16_flops_per_s / device.hbm_bw_bytes_per_s:.0f} "
           "FLOP/byte at the datasheet peaks), beside the fastest measurement of each point")
        out.append(Section(f"verify-{name}", title, tables=(table,), notes=tuple(notes),
                           intro="Each verified token adds FLOPs but no cache bytes: the call stays bandwidth bound "
                                 "until the tokens per sequence reach the device's ridge."))
    return out
