"""``rpa-bench report`` on a stored (synthetic) run: sections, charts, paper table, escaping."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from PIL import Image

from rpa_bench import cli
from rpa_bench.reports import charts
from rpa_bench.store.load import load_run
from rpa_bench.reports.paper_side import side_by_side
from rpa_bench.reports.report import write_report
from synthetic_run import SyntheticRunSpec, write_synthetic_run


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    path = write_synthetic_run(tmp_path_factory.mktemp("report") / "full")
    assert cli.main(["report", str(path)]) == 0
    return path


def _html(run_path) -> str:
    return (run_path / "report" / "index.html").read_text()


def test_report_writes_page_and_every_chart(full_run):
    html = _html(full_run)
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert sorted(srcs) == ["mbu_decode.png", "mfu_prefill.png", "phases.png", "roofline.png",
                            "steps_azure_conv_sample.png"]
    for src in srcs:  # relative links to real, non-empty PNGs
        with Image.open(full_run / "report" / src) as im:
            assert im.format == "PNG" and min(im.size) > 200
    for title in ("The paper side by side", "Roofline", "Decode: MBU vs context length",
                  "Prefill: MFU vs sequence length", "Trace workload: azure_conv_sample", "Correctness statuses",
                  "Metric conventions", "Environment and provenance", "Where the run&#39;s time went"):
        assert f"<h2>{title}</h2>" in html
    assert not re.search(r'(src|href)="(https?:|/)', html)  # self-contained: relative links only


def test_paper_table_side_by_side_says_device_is_not_tpu7x(full_run):
    html = _html(full_run)
    assert "not a TPU7x" in html and "scaled-down sweep" in html
    rows = side_by_side(load_run(full_run), "table4").set_index(["kernel", "variant", "sweep"])
    row = rows.loc[("reference", "excl_prep", 512)]
    assert row["paper_latency_us"] == 137 and row["paper_util_pct"] == pytest.approx(24.91)
    assert row["latency_ratio"] == pytest.approx(row["latency_us"] / 137)
    assert 0 < row["paper_bound_us"] < 137  # TPU7x roofline bound is below the paper's latency
    assert row["work_ratio"] == pytest.approx(8 / 128, rel=1e-3)  # 8 sequences here, 128 in the paper
    assert ("rpa_v3", "excl_prep", 512) not in rows.index  # interpret mode: not speed


def test_interpret_rows_are_correctness_only(full_run):
    run = load_run(full_run)
    speed = charts.speed_rows(run.measurements)
    assert not speed["interpret"].any() and (speed["status"] == "ok").all()
    html = _html(full_run)
    assert "ran in Pallas interpret mode" in html
    measured = html.split('<section id="measurements">')[1].split("</section>")[0]
    assert "rpa_v3" not in measured
    correctness = html.split('<section id="correctness">')[1].split("</section>")[0]
    assert "rpa_v3" in correctness and "RESOURCE_EXHAUSTED" in correctness


def test_trace_section_has_time_weighted_summary_and_coverage(full_run):
    html = _html(full_run)
    trace = html.split('<section id="trace-azure_conv_sample">')[1].split("</section>")[0]
    assert "time-weighted MBU" in trace and "represented_time_fraction" in trace and "71.5 %" in trace
    run = load_run(full_run)
    rows = charts.speed_rows(run.measurements)
    rows = rows[(rows["workload"] == "azure_conv_sample") & rows["mbu_pct"].notna()]
    # an independent route to the time-weighted MBU: the weighted bytes moved over the weighted
    # time, against the device's bandwidth (paper convention: GiB/s over GB/s)
    for (_, _), g in rows.groupby(["kernel", "variant"]):
        gib_per_s = (g["weight"] * g["hbm_bytes"]).sum() / 2**30 / ((g["weight"] * g["latency_us"]).sum() * 1e-6)
        bw_gb_s = (g["hbm_bytes"] / 2**30 / (g["latency_us"] * 1e-6) / (g["mbu_pct"] / 100)).iloc[0]
        assert f"{gib_per_s / bw_gb_s * 100:.2f}" in trace


def test_decode_only_run_omits_prefill_and_trace_and_says_why(tmp_path):
    path = write_synthetic_run(tmp_path / "decode", SyntheticRunSpec(include_prefill=False, include_trace=False))
    result = write_report(path)
    omitted = {s.id: s.omitted for s in result.sections if s.omitted}
    assert set(omitted) == {"mfu", "traces", "mesh"}
    assert "ran on one device" in omitted["mesh"]
    assert "no single-sequence prefill points" in omitted["mfu"]
    assert not (path / "report" / "mfu_prefill.png").exists()
    assert "Omitted: this run measured no trace workload" in _html(path)


def test_values_are_escaped(tmp_path):
    path = write_synthetic_run(tmp_path / "esc", SyntheticRunSpec(include_trace=False))
    frame = pd.read_parquet(path / "measurements.parquet")
    frame.loc[0, "error"] = "<script>alert(1)</script>"
    frame.to_parquet(path / "measurements.parquet")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["run_id"] = "<b>run</b>"
    (path / "manifest.json").write_text(json.dumps(manifest))
    html = _html(write_report(path).index_html.parent.parent)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>run</b>" not in html and "&lt;b&gt;run&lt;/b&gt;" in html


def test_chart_titles_name_device_kernel_and_convention(full_run, monkeypatch):
    titles = []
    original = charts._save

    def spy(fig, path):
        titles.append(" ".join(t.get_text() for t in fig.texts) + " " + " ".join(ax.get_title() for ax in fig.axes))
        return original(fig, path)

    monkeypatch.setattr(charts, "_save", spy)
    write_report(full_run, full_run / "report_again")
    assert titles and all("cpu" in t and ("reference" in t or "trace" in t) for t in titles)
    utilization = [t for t in titles if "MBU vs" in t or "MFU vs" in t]
    assert len(utilization) == 2 and all("paper convention" in t for t in utilization)


def test_paper_section_on_a_full_scale_tpu7x_run_drops_the_caveats(tmp_path):
    path = write_synthetic_run(tmp_path / "tpu", SyntheticRunSpec(include_trace=False))
    frame = pd.read_parquet(path / "measurements.parquet")
    frame["device"], frame["scale"] = "tpu7x", "full"
    frame.to_parquet(path / "measurements.parquet")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["config"]["scale"] = {"name": "full", "reduced": False}
    (path / "manifest.json").write_text(json.dumps(manifest))
    paper = [s for s in write_report(path).sections if s.id == "paper"][0]
    assert not any("not a TPU7x" in n or "scaled-down" in n for n in paper.notes)
    assert any("interpret mode" in n for n in paper.notes)
    assert len(paper.tables) == 3


def test_paper_tables_show_only_comparable_rows_and_count_the_rest(tmp_path):
    spec = SyntheticRunSpec(decode_context_lens=(256,), include_prefill=False, include_trace=False)
    run = load_run(write_synthetic_run(tmp_path / "short", spec))
    rows = side_by_side(run, "table4")
    assert len(rows) == 14 and set(rows["status"]) == {"not measured here"}  # 7 lengths x 2 variants
    assert rows["paper_bound_us"].notna().all()
    paper = [s for s in write_report(run).sections if s.id == "paper"][0]
    assert not paper.tables  # no length of this run is one of the paper's: no row to set side by side
    assert any("256 are not in the paper's sweep" in n for n in paper.notes)
    assert any("14 more paper rows" in n and "roofline --paper table4" in n for n in paper.notes)
    run = load_run(write_synthetic_run(tmp_path / "one", SyntheticRunSpec(decode_context_lens=(256, 1024),
                                                                          include_prefill=False, include_trace=False)))
    (table,) = [s for s in write_report(run).sections if s.id == "paper"][0].tables
    assert len(table.rows) == 2 * len({r for r in side_by_side(run, "table4")["kernel"].dropna()})  # c=1024 only


def test_provenance_shows_the_workload_values_actually_used(tmp_path):
    import json

    run = write_synthetic_run(tmp_path / "run", SyntheticRunSpec(include_trace=False))
    m = json.loads((run / "manifest.json").read_text())
    m["workloads"] = {"paper_decode": {"kind": "paper_decode", "config": {"num_seqs": 8, "context_lens": [256, 1024]}}}
    (run / "manifest.json").write_text(json.dumps(m))
    html = write_report(run).index_html.read_text()
    assert "Workloads as measured" in html and "paper_decode.num_seqs" in html


def test_summary_counts_every_row_of_a_warning_kind_whatever_its_numbers():
    import numpy as np
    import pandas as pd

    from rpa_bench.reports.sections import _warning_kind

    texts = [f"checked ok in interpret mode (max_abs_err={e:.2g} <= 0.002), not timed" for e in
             (1.2e-07, 3.4e-06, 0.0, 5e-05, 7.1e-07, 2.2e-07)]
    assert len({_warning_kind(t) for t in texts}) == 1
    frame = pd.DataFrame({"warnings": [np.array([t]) for t in texts]})  # as parquet gives them back
    counted = {}
    for w in frame["warnings"]:
        for key in {_warning_kind(str(x)) for x in list(w)}:
            counted[key] = counted.get(key, 0) + 1
    assert list(counted.values()) == [6]


def test_a_placeholder_roof_is_called_one_never_measured(tmp_path, monkeypatch):
    # the CPU spec before `rpa-bench calibrate`: 10 GB/s and 50 GFLOP/s stand-ins, not this machine
    path = write_synthetic_run(tmp_path / "ph", SyntheticRunSpec(include_trace=False))
    manifest = json.loads((path / "manifest.json").read_text())
    placeholder = "placeholder until `rpa-bench calibrate` measures this machine"
    manifest["device_spec"].update(hbm_bw_bytes_per_s=10e9, peak_bf16_flops_per_s=50e9, measured=True,
                                   sources={"hbm_bw_bytes_per_s": placeholder, "peak_bf16_flops_per_s": placeholder})
    (path / "manifest.json").write_text(json.dumps(manifest))
    seen = []
    original = charts._save

    def spy(fig, out):
        ax = fig.axes[0]
        seen.append((ax.get_title(), [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []))
        return original(fig, out)

    monkeypatch.setattr(charts, "_save", spy)
    write_report(path, path / "report")
    (title, legend), = [(t, lg) for t, lg in seen if t.startswith("SI units; roofs")]
    # 50 GFLOP/s is written as such (it was rounded to "0.1 TFLOP/s") and never called measured
    assert "10 GB/s, 50 GFLOP/s (placeholders, not measured" in title and "measured)" not in title
    assert "placeholder roof (not this machine)" in legend and "datasheet roof" not in legend
    html = (path / "report" / "index.html").read_text()
    assert "roof drawn is a placeholder (10 GB/s, 50 GFLOP/s)" in html
    # MBU / MFU over those peaks say so, on the charts and beside them
    utilization = [t for t, _ in seen if t.startswith("paper convention")]
    assert len(utilization) == 2 and all("over placeholder peaks, not measured on this machine" in t
                                         for t in utilization)
    assert html.count("Over placeholder peaks, not measured on this machine") == 2


def test_roof_rates_are_written_in_si_with_three_significant_digits():
    # a calibrated CPU's roofs printed as "28.6187 GB/s, 171.967 GFLOP/s"; 50 GFLOP/s once read "0.1 TFLOP/s"
    assert charts.si_rate(28.6187e9, "B") == "28.6 GB/s" and charts.si_rate(171.967e9, "FLOP") == "172 GFLOP/s"
    assert charts.si_rate(50e9, "FLOP") == "50 GFLOP/s" and charts.si_rate(7.38e12, "B") == "7.38 TB/s"
    assert charts.si_rate(None, "B") == "-"
