"""``report``: one stored run -> ``<run>/report/index.html`` + PNG charts.

Reads only the run folder (manifest, measurements, per-step tables); never runs a kernel.
"""

from __future__ import annotations

import dataclasses
import pathlib

from rpa_bench import __version__
from rpa_bench.reports import sections
from rpa_bench.reports.compile_section import compile_banner, compile_section, is_compile_run
from rpa_bench.reports.experiment_sections import sliding_window_sections, spec_verify_sections
from rpa_bench.reports.html import Section, render
from rpa_bench.reports.mesh_section import mesh_section
from rpa_bench.reports.paper_side import paper_section
from rpa_bench.reports.trace_section import trace_sections
from rpa_bench.store.load import LoadedRun, load_run

REPORT_DIR = "report"


@dataclasses.dataclass(frozen=True)
class ReportResult:
    index_html: pathlib.Path
    images: tuple[pathlib.Path, ...]
    sections: tuple[Section, ...]
    problems: tuple[str, ...]


def build_sections(run: LoadedRun, out_dir: pathlib.Path) -> list[Section]:
    """Every section in page order; charts are written to ``out_dir`` as they are built."""
    if is_compile_run(run):  # compiled, not run: a compile report and nothing that reads as speed
        return [compile_section(run), sections.conventions_section(run), sections.provenance_section(run)]
    return [
        sections.summary_section(run),
        paper_section(run),
        sections.roofline_section(run, out_dir),
        *sections.utilization_sections(run, out_dir),
        mesh_section(run),
        *sliding_window_sections(run, out_dir),
        *spec_verify_sections(run),
        *trace_sections(run, out_dir),
        sections.measurements_section(run),
        sections.correctness_section(run),
        sections.phases_section(run, out_dir),
        sections.conventions_section(run),
        sections.provenance_section(run),
    ]


def banners(run: LoadedRun) -> list[str]:
    out = []
    if run.manifest.get("synthetic"):
        out.append("This run is synthetic (its manifest says so): values are modelled to exercise the report, "
                   "not measured.")
    compiled = compile_banner(run)
    if compiled:
        out.append(compiled)
    note = sections.interpret_note(run)
    if note:
        out.append(note)
    return out


def write_report(run: LoadedRun | str | pathlib.Path, out_dir: str | pathlib.Path | None = None) -> ReportResult:
    """Render ``run`` (a loaded run or its folder) into ``out_dir`` (default ``<run>/report``)."""
    if not isinstance(run, LoadedRun):
        run = load_run(run)
    out = pathlib.Path(out_dir) if out_dir is not None else run.path / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):
        stale.unlink()
    built = build_sections(run, out)
    kernels = ", ".join(sorted({str(k) for k in run.measurements["kernel"].dropna()})) or "none"
    index = render(
        "report.html.j2", out / "index.html",
        generator_version=__version__, run_name=run.name, device=run.device, status=run.status,
        created=run.manifest.get("created_utc") or "unknown", kernels=kernels,
        banners=banners(run), problems=list(run.problems), sections=built,
    )
    images = tuple(out / img.src for s in built for img in s.images)
    return ReportResult(index, images, tuple(built), run.problems)
