"""The table printed at the end of a run: one line per (workload, point, kernel)."""

from __future__ import annotations

import pandas as pd

COLUMNS = ("workload", "point", "kernel", "status", "excl_us", "incl_us", "source", "mbu_pct", "mfu_pct", "note")


def _fmt(x, digits: int = 1) -> str:
    return "-" if x is None or pd.isna(x) else f"{x:.{digits}f}"


def _text(x) -> str:
    return "-" if x is None or (not isinstance(x, str) and pd.isna(x)) else str(x)


def final_table(df: pd.DataFrame, *, max_note: int = 64) -> str:
    """Excl./incl.-prep latency side by side, the timing source, and MBU / MFU (excl. prep,
    in the convention named in the header). Interpret-mode rows are marked."""
    if df.empty:
        return "(no measurements)"
    conv = df["convention"].dropna().unique()
    conv_label = ",".join(sorted(str(c) for c in conv)) or "paper"
    lines = []
    keys = ["workload", "point_id", "kernel"]
    for (wl, pt, k), g in df.groupby(keys, sort=False):
        by = {r["variant"]: r for _, r in g.iterrows()}
        ex, inc = by.get("excl_prep"), by.get("incl_prep")
        first = ex if ex is not None else inc
        statuses = sorted(set(g["status"]))
        status = statuses[0] if len(statuses) == 1 else "/".join(statuses)
        note = ""
        if first is not None and isinstance(first.get("error"), str):
            note = first["error"]
        if bool(g["interpret"].fillna(False).any()) and "interpret" not in note:
            note = "[interpret] " + note
        if len(note) > max_note:
            note = note[: max_note - 3] + "..."
        lines.append({
            "workload": wl, "point": pt, "kernel": k, "status": status,
            "excl_us": _fmt(ex["latency_us"]) if ex is not None else "-",
            "incl_us": _fmt(inc["latency_us"]) if inc is not None else "-",
            "source": _text(first.get("timing_source")) if first is not None else "-",
            "mbu_pct": _fmt(ex["mbu_pct"], 2) if ex is not None else "-",
            "mfu_pct": _fmt(ex["mfu_pct"], 2) if ex is not None else "-",
            "note": note,
        })
    table = pd.DataFrame(lines, columns=list(COLUMNS)).rename(
        columns={"mbu_pct": f"MBU%({conv_label})", "mfu_pct": f"MFU%({conv_label})"})
    return table.to_string(index=False)
