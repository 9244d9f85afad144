"""A sweep folder (``rpa-bench run -m ...``: one run per job, named after its overrides) as one page.

Each job's own report is written beside it; the sweep page has one table of every job's
timed measurements with the swept values as columns, and each job's status counts.
"""

from __future__ import annotations

import pathlib

import pandas as pd

from rpa_bench import __version__
from rpa_bench.reports import charts
from rpa_bench.reports.html import Column, Section, fmt_num, fmt_pct, render, table_from_frame
from rpa_bench.reports.report import write_report
from rpa_bench.status import Status
from rpa_bench.store.load import LoadedRun, NotARunError, load_run

MANIFEST = "manifest.json"


def sweep_jobs(folder: pathlib.Path) -> list[pathlib.Path]:
    """The run folders directly under ``folder`` (a sweep's jobs), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / MANIFEST).is_file())


def swept_values(name: str) -> dict[str, str]:
    """``kernel=reference,timing=quick`` -> {kernel: reference, timing: quick} (Hydra's override_dirname)."""
    out = {}
    for part in name.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    return out or {"job": name}


def write_sweep_report(folder: str | pathlib.Path) -> pathlib.Path:
    folder = pathlib.Path(folder)
    jobs = sweep_jobs(folder)
    if not jobs:
        raise NotARunError(f"{folder} is neither a results run folder nor a sweep of them (no */{MANIFEST})")
    frames, counts = [], []
    for job in jobs:
        run: LoadedRun = load_run(job)
        write_report(run)
        swept = swept_values(job.name)
        speed = charts.speed_rows(run.measurements)
        if not speed.empty:
            frames.append(speed.assign(**{**swept, "job": job.name}))  # a job without overrides: its name
        counts.append({**swept, "job": job.name, **run.measurements["status"].value_counts().to_dict(),
                       "report": f"{job.name}/report/index.html"})
    keys = sorted({k for c in counts for k in swept_values(c["job"])})
    sections = []
    table = pd.DataFrame(counts)
    sections.append(Section("jobs", "Jobs", tables=(table_from_frame(
        table, [*(Column(k, k) for k in keys), *(Column(s, s, fmt_num, numeric=True)
                                                for s in (Status.OK, Status.INCORRECT, Status.FAILED, Status.SKIPPED, Status.COMPILED)),
                Column("report", "report (relative path)")], "Each job of the sweep and its rows by status"),),
        intro=f"{len(jobs)} jobs under {folder.name}; the swept values are the columns."))
    if frames:
        rows = pd.concat(frames, ignore_index=True)
        sections.append(Section("measurements", "Measurements of every job", tables=(table_from_frame(rows, [
            *(Column(k, k) for k in keys), Column("workload", "workload"), Column("point_id", "point"),
            Column("kernel", "kernel"), Column("variant", "variant"),
            Column("latency_us", "median latency (us)", fmt_num, numeric=True),
            Column("mbu_pct", "MBU (%)", fmt_pct, numeric=True), Column("mfu_pct", "MFU (%)", fmt_pct, numeric=True),
            Column("timing_source", "timing")], "Timed measurements (status ok, not interpret mode)"),)))
    else:
        sections.append(Section("measurements", "Measurements of every job", omitted="no job has a timed measurement"))
    out = folder / "report" / "index.html"
    return render("report.html.j2", out, generator_version=__version__, run_name=f"sweep {folder.name}",
                  device="see each job", status="sweep", created="", kernels=", ".join(keys), banners=[],
                  problems=[], sections=sections)
