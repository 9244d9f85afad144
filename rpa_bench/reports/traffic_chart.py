"""The traffic audit as a PNG: refetch factor (moved / analytic bytes) against context length
(decode points) or query length (prefill and mixed points), one line per kernel entry."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure


def traffic_png(records: list[dict], path: Path) -> Path | None:
    frame = pd.DataFrame([r for r in records if r.get("refetch_factor") is not None])
    if frame.empty:
        return None
    frame["x"] = frame.apply(lambda r: r["max_kv_len"] if r["phase"] == "decode"
                             else r["num_tokens"] / max(r["num_seqs"], 1), axis=1)
    phases = [p for p in ("decode", "prefill", "mixed") if (frame["phase"] == p).any()]
    fig = Figure(figsize=(5.2 * len(phases), 3.8), constrained_layout=True)
    axes = fig.subplots(1, len(phases), squeeze=False)[0]
    for ax, phase in zip(axes, phases):
        sub = frame[frame["phase"] == phase]
        for kernel, g in sub.groupby("kernel", sort=False):
            g = g.sort_values("x")
            ax.plot(g["x"], g["refetch_factor"], marker="o", label=str(kernel))
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")  # refetch read as is, not "+1"
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)" if phase == "decode" else "query length per sequence (tokens)")
        ax.set_ylabel("refetch factor (moved / analytic bytes)")
        ax.set_title(f"{phase}: bytes moved per byte needed")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path
