"""The history page: each series against the commits, steps and status changes marked."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rpa_bench.names import slug
from rpa_bench import __version__
from rpa_bench.reports.history_events import Event, correctness, series_of
from rpa_bench.store.revisions import RevisionResult
from rpa_bench.reports.html import Column, Image, Section, render, table_from_frame

DPI = 110




def _chart(name: str, values: Sequence[float], labels: Sequence[str], statuses: Sequence[str] | None,
           marks: Sequence[int], out: pathlib.Path, ylabel: str) -> pathlib.Path:
    fig = Figure(figsize=(max(6.0, 0.55 * len(labels)), 3.4))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(values))
    y = np.asarray(values, dtype=float)
    ax.plot(x, y, marker="o", color="#1f77b4")
    if statuses is not None:
        bad = [i for i, s in enumerate(statuses) if s not in ("correct", "ok", "not checked")]
        if bad:
            ax.scatter(bad, np.where(np.isfinite(y[bad]), y[bad], np.nanmin(y) if np.isfinite(y).any() else 0),
                       marker="x", s=80, color="#d62728", label="broken here")
    for i in marks:
        ax.axvline(i - 0.5, color="#d62728", linestyle="--", alpha=0.7)
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(name, fontsize=9)
    ax.grid(True, alpha=0.3)
    path = out / f"h_{slug(name)}.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def write_history(results: Sequence[RevisionResult], events: Sequence[Event], out: pathlib.Path, *, kernel: str,
                  repo: str) -> pathlib.Path:
    out.mkdir(parents=True, exist_ok=True)
    revs = [r.revision for r in results]
    labels = [f"{r.short[:7]} {r.date[:10]}" for r in revs]
    s = series_of(results)
    at = {(e.series, e.revision.sha) for e in events}
    sections: list[Section] = []
    ev = pd.DataFrame([e.as_dict() for e in events]) if events else pd.DataFrame(
        columns=["direction", "kind", "series", "before", "after", "commit", "date", "subject"])
    sections.append(Section("events", "Regressions, improvements and breakages", tables=(table_from_frame(ev, [
        Column("direction", "direction"), Column("kind", "kind"), Column("series", "series"),
        Column("before", "before"), Column("after", "after"), Column("commit", "commit"), Column("date", "date"),
        Column("subject", "subject")], "Each event at the first commit showing it"),),
        intro=f"{kernel} from {repo}: {len(revs)} revisions, {len(events)} events."))
    images = []
    for group, ylabel in (("latency", "latency (us)"), ("vmem", "VMEM used (bytes)")):
        for name, values in s[group].items():
            base = name.rsplit(" ", 1)[0]
            statuses = s["compile"].get(base) if group == "vmem" else s["correctness"].get(base)
            marks = [i for i, r in enumerate(revs) if (name, r.sha) in at]
            path = _chart(name, values, labels, statuses, marks, out, ylabel)
            images.append(Image(path.name, name))
    sections.append(Section("series", "Series against the commits", images=tuple(images),
                             omitted=None if images else "no numeric series (nothing timed or compiled)"))
    rows = []
    for r in results:
        corr = correctness(r.measurements)
        rows.append({"commit": r.revision.short, "date": r.revision.date, "subject": r.revision.subject,
                     "correct": sum(v == "correct" for v in corr.values()),
                     "incorrect": sum(v == "incorrect" for v in corr.values()),
                     "compiles": ", ".join(f"{c['generation']} {c['case']}: {c['status']}" for c in r.compiles)})
    sections.append(Section("revisions", "Revisions", tables=(table_from_frame(pd.DataFrame(rows), [
        Column("commit", "commit"), Column("date", "date"), Column("subject", "subject"),
        Column("correct", "points correct", numeric=True), Column("incorrect", "points incorrect", numeric=True),
        Column("compiles", "compile status")], "Each revision's correctness checks and compiles"),)))
    return render("report.html.j2", out / "index.html", generator_version=__version__,
                  run_name=f"history of {kernel}", device="revisions", status="complete",
                  created=revs[-1].date if revs else "", kernels=kernel, banners=[], problems=[], sections=sections)
