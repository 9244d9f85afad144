"""The page of one ``rpa-bench tune``: per phase the answer, the buckets, and a chart of
time (or, when nothing was timed here, VMEM used) against bkv / bkv_c."""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from rpa_bench import __version__


def _chart(phase: dict, path: Path) -> bool:
    """One panel per compute size: the y figure against the fetch size (log2 axes)."""
    rows = []
    timed = phase.get("timed")
    # the first rung measured every candidate with the same samples: one comparable figure each
    first = (phase.get("rungs") or [{}])[0].get("scores") or {}
    for c in phase["candidates"]:
        values = c["values"]
        if len(values) != 4 and not timed:
            continue
        if timed:
            y = first.get(c["label"])
            y = None if y is None or not math.isfinite(y) else y * 1e6
        else:
            y = None if c["vmem_used_bytes"] is None else c["vmem_used_bytes"] / 2**20
        if y is None:
            continue
        x = values[1] if len(values) == 4 else values[0]
        group = f"bkv_c={values[3]}, bq={values[0]}" if len(values) == 4 else "block_bytes"
        rows.append({"x": x, "y": y, "group": group, "heuristic": c["heuristic"]})
    if not rows:
        return False
    df = pd.DataFrame(rows)
    fig = Figure(figsize=(7.5, 4.2), dpi=110)
    ax = fig.subplots()
    for group, g in df.groupby("group"):
        g = g.sort_values("x")
        ax.plot(g["x"], g["y"], marker="o", label=group, linewidth=1)
    h = df[df["heuristic"]]
    if not h.empty:
        ax.scatter(h["x"], h["y"], s=140, facecolors="none", edgecolors="black", label="heuristic", zorder=3)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bkv_sz (tokens)" if len(phase["candidates"][0]["values"]) == 4 else "block_bytes")
    ax.set_ylabel("time-weighted latency, first rung (us)" if timed else "VMEM used by the phase's kernel (MiB)")
    ax.set_title(f"{phase['phase']}: {'measured' if timed else 'compile-only, not timed'}")
    if df["group"].nunique() <= 12:
        ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return True


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(x, digits: int = 1) -> str:
    return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def write_tune_report(summary: dict, out: Path) -> Path:
    """``out/tune.html`` and one PNG per phase; returns the page."""
    out = Path(out)
    parts = [f"<h1>rpa-bench tune: {html.escape(summary['kernel'])} on {html.escape(summary['workload'])}</h1>"]
    if not summary["timed_here"]:
        ways = sorted({str(r.get("chosen_by")) for r in summary["phases"].values() if not r.get("timed")})
        parts.append(f"<p class='notice'>Nothing was timed here: the candidates were compiled for "
                     f"{html.escape(summary['generation'])} and pruned by the compiler's verdict; the chosen tuple "
                     f"is chosen by {html.escape('; '.join(ways))}: a hint to time on a TPU, not a speed "
                     "claim.</p>")
    lines = summary.get("export_lines") or [f"export {e}" for e in summary.get("env") or ()]
    if lines:
        parts.append(("<h2>For serving</h2>" if summary["timed_here"] else
                      "<h2>To time on a TPU first (not timed here)</h2>") + "<pre>" + html.escape("\n".join(lines))
                     + "</pre>")
    for ph, r in summary["phases"].items():
        parts.append(f"<h2>{html.escape(ph)}</h2>")
        measured = f"{len(r['measured'])} measured" if r["timed"] else "none timed here"
        parts.append(f"<p>space {r['space']} tuples, {r['compiled']} compiled or checked, {len(r['survivors'])} fit, "
                     f"{measured}; heuristic <b>{html.escape(r['heuristic'])}</b>, "
                     f"{'recommended' if r['timed'] else 'chosen'} <b>{html.escape(r['best'])}</b></p>")
        if r.get("recommendation"):
            parts.append(f"<p>recommendation: {html.escape(r['recommendation'])}</p>")
        png = out / f"tune_{ph}.png"
        if _chart(r, png):
            parts.append(f"<img src='{png.name}' alt='{html.escape(ph)} chart'>")
        if r["timed"]:
            a = r["answer"]
            parts.append(f"<p>weighted mean latency per call: heuristic {_fmt(a['totals'][a['heuristic']])} us, fastest "
                         f"{_fmt(a['totals'][a['best']])} us ({a['speedup_vs_heuristic']:.3f}x); regret of one tuple "
                         f"for all buckets vs each bucket's best: {a['regret_pct']:.2f}%</p>")
            parts.append(_table(["bucket", "points", "weight", "best tuple", "best us (mean per call)", "heuristic us",
                                 "one-tuple us"],
                                [[b, v["points"], _fmt(v["weight"], 3), v["best"], _fmt(v["best_us"]),
                                  _fmt(v["heuristic_us"]), _fmt(v["global_us"])] for b, v in a["per_bucket"].items()]))
            vs = r["vs_heuristic"]
            if not vs.get("same"):
                parts.append("<h3>Tuned vs heuristic (paired, interleaved)</h3>")
                parts.append(_table(["point", "variant", "heuristic us", "tuned us", "tuned/heuristic", "CI", "verdict"],
                                    [[p["point_id"], p["variant"], _fmt(p["latency_a_us"]), _fmt(p["latency_b_us"]),
                                      _fmt(p["ratio"], 3), f"{_fmt(p['ci_low'], 3)}-{_fmt(p['ci_high'], 3)}",
                                      p["mark"]] for p in vs["points"]]))
        else:
            chk = r.get("interpret_check") or {}
            parts.append(f"<p>chosen by {html.escape(r['chosen_by'])}; interpret-mode correctness: "
                         f"{html.escape(str(chk.get('status', 'not checked')))}</p>")
        parts.append("<h3>Candidates</h3>")
        parts.append(_table(["tuple", "heuristic", "status", "verdict from", "VMEM used MiB", "headroom", "bundles",
                             "error"],
                            [[c["label"], "yes" if c["heuristic"] else "", c["status"], c["source"],
                              _fmt(None if c["vmem_used_bytes"] is None else c["vmem_used_bytes"] / 2**20, 2),
                              "" if c["headroom"] is None else f"{c['headroom']:.0%}", c["bundles"],
                              (c["error"] or "")[:160]] for c in r["candidates"]]))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}.notice{background:#fff3cd;padding:8px}"
             "img{max-width:100%}")
    page = out / "tune.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>rpa-bench tune</title>"
                    f"<style>{style}</style></head><body>{''.join(parts)}<p><small>rpa_bench {__version__}"
                    f"</small></p></body></html>")
    return page
