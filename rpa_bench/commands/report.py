"""``rpa-bench report results/<run> [--out DIR]``: HTML + PNG report of a stored run.

Exit status: 0 when the page was written (problems in the run are listed on it and on
stderr), 2 when the folder is not a results run.
"""

from __future__ import annotations

import argparse
import sys

from rpa_bench.reports.report import REPORT_DIR, write_report
from rpa_bench.paths import output_folder_problem
from rpa_bench.reports.sweep_report import sweep_jobs, write_sweep_report
from rpa_bench.store.load import NotARunError, load_run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rpa-bench report", description="Render a stored run as static HTML + PNG.")
    p.add_argument("run", help="results run folder (results/<run>/ with manifest.json, measurements.parquet)")
    p.add_argument("--out", default=None, help=f"output folder (default: <run>/{REPORT_DIR}/)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    problem = output_folder_problem(args.out, "--out")
    if problem:
        print(f"rpa-bench report: {problem}", file=sys.stderr)
        return 2
    try:
        run = load_run(args.run)
    except NotARunError as err:
        from pathlib import Path

        folder = Path(args.run)
        if folder.is_dir() and sweep_jobs(folder):  # a sweep: every job's report and one page for all
            page = write_sweep_report(folder)
            print(f"wrote {page} ({len(sweep_jobs(folder))} jobs)")
            return 0
        print(f"rpa-bench report: {err}", file=sys.stderr)
        return 2
    result = write_report(run, args.out)
    for problem in result.problems:
        print(f"rpa-bench report: warning: {problem}", file=sys.stderr)
    omitted = [f"{s.title} ({s.omitted})" for s in result.sections if s.omitted]
    for item in omitted:
        print(f"rpa-bench report: omitted: {item}", file=sys.stderr)
    print(f"wrote {result.index_html} ({len(result.images)} charts)")
    return 0
