"""PNG of a simulated batch stream's shape: tokens and sequences over time, kv_len, phases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from rpa_bench.workloads.stream import SimulationResult

PHASE_COLORS = {"decode": "#1f77b4", "prefill": "#ff7f0e", "mixed": "#2ca02c"}


def _binned(x: np.ndarray, y: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, max) of ``y`` per bin of ``x`` (NaN where a bin is empty)."""
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    count = np.bincount(which, minlength=len(edges) - 1)
    total = np.bincount(which, weights=y, minlength=len(edges) - 1)
    top = np.full(len(edges) - 1, np.nan)
    np.fmax.at(top, which, y.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan), top


def plot_batch_shape(result: SimulationResult, summary: dict, path: str | Path, *, title: str,
                     sampled_steps: np.ndarray | None = None) -> Path:
    """Write a 2x2 figure: tokens/step, sequences/step and queue over time, kv_len histogram,
    decode/prefill/mixed shares of sequences, steps and time."""
    path = Path(path)
    cols = result.step_columns(("start_s", "num_tokens", "num_seqs", "num_waiting"))
    t = cols["start_s"]
    edges = np.linspace(0.0, max(float(result.end_s), 1e-9), 601)
    mid = 0.5 * (edges[1:] + edges[:-1])
    fig = Figure(figsize=(12, 7.5))
    ax = fig.subplots(2, 2)

    mean_tok, max_tok = _binned(t, cols["num_tokens"], edges)
    ax[0, 0].plot(mid, max_tok, lw=0.6, color="#bbbbbb", label="max")
    ax[0, 0].plot(mid, mean_tok, lw=0.9, color="#333333", label="mean")
    if sampled_steps is not None and len(sampled_steps):
        ax[0, 0].scatter(t[sampled_steps], cols["num_tokens"][sampled_steps], s=10, color="#d62728",
                         zorder=3, label="sampled steps")
    ax[0, 0].set(xlabel="simulated time (s)", ylabel="tokens per step", yscale="symlog")
    ax[0, 0].legend(fontsize=7)

    mean_seq, _ = _binned(t, cols["num_seqs"], edges)
    mean_wait, _ = _binned(t, cols["num_waiting"], edges)
    ax[0, 1].plot(mid, mean_seq, lw=0.9, color="#1f77b4", label="sequences per step")
    ax[0, 1].plot(mid, mean_wait, lw=0.9, color="#9467bd", label="waiting requests")
    ax[0, 1].set(xlabel="simulated time (s)", ylabel="count (mean per bin)")
    ax[0, 1].legend(fontsize=7)

    counts = result.kv_len_counts()
    values = np.flatnonzero(counts)
    bins = np.unique(np.geomspace(1, max(int(values.max()), 2) + 1, 60).astype(np.int64))
    ax[1, 0].hist(values, bins=bins, weights=counts[values], color="#555555")
    ax[1, 0].set(xscale="log", yscale="log", xlabel="kv_len (tokens)", ylabel="(step, sequence) pairs")
    kv = summary["kv_len"]
    ax[1, 0].set_title(f"kv_len p50 {kv['p50']}, p99 {kv['p99']}, max {kv['max']}", fontsize=9)

    groups = [("sequences", summary["seq_share"]), ("steps", summary["step_share"]), ("time", summary["time_share"])]
    bottom = np.zeros(len(groups))
    for phase, color in PHASE_COLORS.items():
        share = np.array([g[1][phase] for g in groups])
        ax[1, 1].bar([g[0] for g in groups], share, bottom=bottom, color=color, label=phase)
        bottom += share
    ax[1, 1].set(ylabel="share", ylim=(0, 1))
    ax[1, 1].legend(fontsize=7)
    ax[1, 1].set_title("sequences by kernel class; steps and time by step phase", fontsize=9)

    fig.suptitle(f"{title}: {summary['requests_completed']} requests, {summary['steps']} steps, "
                 f"{summary['simulated_time_s']:.0f} s simulated", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
