"""Render a comparison (see :mod:`rpa_bench.measure.compare`) as HTML + a ratio PNG."""

from __future__ import annotations

import dataclasses
import pathlib

import pandas as pd

from rpa_bench import __version__
from rpa_bench.reports import charts
from rpa_bench.measure.compare import CompareOptions, CompareSummary, NOT_COMPARABLE, WORSE, summarize
from rpa_bench.reports.html import Column, Image, Section, flatten, fmt_num, render, table_from_frame
from rpa_bench.store.load import LoadedRun


@dataclasses.dataclass(frozen=True)
class CompareOutput:
    index_html: pathlib.Path
    ratio_png: pathlib.Path | None
    summary: CompareSummary


def _mark_css(value) -> str:
    return str(value).replace(" ", "-")


def manifest_differences(a: LoadedRun, b: LoadedRun) -> pd.DataFrame:
    """Provenance that differs between the two runs (git, kernels, environment, device)."""
    rows = []
    for key in ("git", "kernels", "environment", "config", "device_spec", "calibration"):
        fa = dict(flatten(a.manifest.get(key) or {}, key))
        fb = dict(flatten(b.manifest.get(key) or {}, key))
        for name in sorted(set(fa) | set(fb)):
            va, vb = fa.get(name), fb.get(name)
            if str(va) != str(vb):
                rows.append({"field": name, "a": va, "b": vb})
    return pd.DataFrame(rows, columns=["field", "a", "b"])


def fmt_pct_fraction(value) -> str:
    return "\u2014" if value is None or pd.isna(value) else f"{100 * float(value):.1f} %"


def _fmt_p(value) -> str:
    return "\u2014" if pd.isna(value) else (f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}")


def write_compare(
    result: pd.DataFrame,
    out_dir: str | pathlib.Path,
    *,
    side_a: str,
    side_b: str,
    device: str,
    options: CompareOptions,
    differences: pd.DataFrame | None = None,
    banners: tuple[str, ...] = (),
    leading: tuple[str, ...] = (),
) -> CompareOutput:
    """Write ``index.html`` and ``ratio.png`` (when any point is comparable) to ``out_dir``.
    ``leading``: extra columns shown first (a sweep's job and swept values)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(result)
    title = f"{side_b} vs {side_a} on {device}"
    png = charts.ratio_chart(result, out / "ratio.png", device=device, side_a=side_a, side_b=side_b,
                             threshold=options.threshold)
    sections = []
    counts = pd.DataFrame([{"mark": m, "points": n} for m, n in summary.counts.items()])
    counts_table = table_from_frame(counts, [Column("mark", "mark", css=_mark_css),
                                             Column("points", "points", fmt_num, numeric=True)], "Points per mark")
    intro = (f"Geometric mean of B/A over {summary.num_comparable} comparable points: "
             f"{fmt_num(summary.geomean_ratio)}x." if summary.geomean_ratio is not None
             else "No point is comparable, so there is no geometric mean.")
    sections.append(Section("summary", "Summary", intro=intro, tables=(counts_table,)))
    if png is not None:
        sections.append(Section("ratios", "Ratio per point", images=(Image(png.name, "ratio chart"),)))
    else:
        sections.append(Section("ratios", "Ratio per point", omitted="no point is comparable: nothing to chart"))
    if not result.empty:
        rows = result.assign(ci=[f"{fmt_num(lo)} \u2013 {fmt_num(hi)}" if not pd.isna(lo) else "\u2014"
                                 for lo, hi in zip(result["ci_low"], result["ci_high"])])
        table = table_from_frame(rows, [
            *(Column(c, c) for c in leading),
            Column("mark", "mark", css=_mark_css), Column("workload", "workload"), Column("point_id", "point"),
            Column("kernel", "kernel"), Column("variant", "variant"), Column("phase", "phase"),
            Column("latency_a_us", "A median (us)", fmt_num, numeric=True),
            Column("latency_b_us", "B median (us)", fmt_num, numeric=True),
            Column("ratio", "B/A (x)", fmt_num, numeric=True), Column("ci", "95% CI of B/A", css=lambda _: "nowrap"),
            Column("p_value", "p (paired: Wilcoxon; else Mann-Whitney)", _fmt_p, numeric=True),
            Column("paired", "paired (interleaved)"),
            Column("n_a", "n A", fmt_num, numeric=True), Column("n_b", "n B", fmt_num, numeric=True),
            Column("spread_a", "A spread (IQR/median)", fmt_pct_fraction, numeric=True),
            Column("spread_b", "B spread (IQR/median)", fmt_pct_fraction, numeric=True),
            Column("unstable", "unstable samples"),
            Column("note", "note"),
            Column("reason", "why not comparable"),
        ], "Every point (worse first); worse/improved need a significant test and a CI wholly beyond the "
           "threshold band; unreliable: A's own spread is wider than that band; not comparable: different "
           "workload hash, config or compiler flags, interpret mode, a status other than ok, or one side only")
        sections.append(Section("points", "Points", tables=(table,)))
    if differences is not None and not differences.empty:
        sections.append(Section("provenance", "What differs between A and B", tables=(table_from_frame(
            differences, [Column("field", "field"), Column("a", "A"), Column("b", "B")],
            "Manifest fields that differ (git, kernels, environment, config, device, calibration)"),)))
    worse = summary.counts[WORSE]
    verdict = (f"{worse} significant regression(s) beyond {options.threshold:g}x: exit status 1" if worse
               else f"No significant regression beyond {options.threshold:g}x: exit status 0")
    if summary.num_comparable == 0 and not result.empty:
        verdict += f" (but every point is {NOT_COMPARABLE})"
    if summary.flagged_unstable:
        banners = (*banners, f"{summary.flagged_unstable} flagged point(s) have unstable samples (IQR >= 10% of the "
                   "median, per the timing protocol) on a side: the host was noisy; rerun on an idle machine before "
                   "trusting them.")
    index = render("compare.html.j2", out / "index.html", generator_version=__version__, title=title,
                   side_a=side_a, side_b=side_b, threshold=f"{options.threshold:g}", alpha=f"{options.alpha:g}",
                   verdict=verdict, verdict_class="bad" if worse else "info", banners=list(banners), sections=sections)
    return CompareOutput(index, png, summary)
