"""The report's "Mesh and devices" section on stored (synthetic) runs: sharded, one device, older runs."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from rpa_bench.store.schema import OPTIONAL_COLUMNS
from rpa_bench.store.load import load_run
from rpa_bench.reports.mesh_section import mesh_section, parse_per_chip
from rpa_bench.reports.report import write_report
from synthetic_run import SyntheticRunSpec, write_synthetic_run

SMALL = dict(include_prefill=False, include_trace=False, decode_context_lens=(512, 1024))


def _text(html: str) -> str:
    start = html.index('<section id="mesh">')
    body = html[start:html.index("</section>", start)]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)).replace("&#39;", "'")


@pytest.fixture(scope="module")
def chip_run(tmp_path_factory):
    """Two devices that make up one TPU7x-like chip."""
    path = write_synthetic_run(tmp_path_factory.mktemp("mesh") / "chip",
                               SyntheticRunSpec(num_devices=2, devices_per_chip=2, **SMALL))
    write_report(path)
    return path


def test_sharded_run_shows_per_device_and_per_chip_figures(chip_run):
    text = _text((chip_run / "report" / "index.html").read_text())
    assert "Mesh and devices" in text and "Omitted" not in text
    assert "are per-chip figures" in text  # stated plainly
    assert "data=2,model=1" in text and "chip(0,0,0)" in text
    section = mesh_section(load_run(chip_run))
    captions = [t.caption for t in section.tables]
    assert any(c.startswith("Per measurement") for c in captions) and any(c.startswith("Per chip") for c in captions)
    per_device = next(t for t in section.tables if t.caption.startswith("Per measurement"))
    col = per_device.headers.index("per-device latency (us)")
    assert all(row[col].text.count("|") == 1 for row in per_device.rows)  # two devices per row
    imbalance = per_device.headers.index("load imbalance, measured (max/mean)")
    assert {row[imbalance].text for row in per_device.rows} == {"1.11"}  # 1.25 / mean(1, 1.25)


def test_per_device_shares_add_up_and_the_chip_is_its_slowest_device(chip_run):
    df = load_run(chip_run).measurements
    rows = df[df["per_chip"].notna()]
    assert len(rows) == 4  # reference: 2 points x 2 variants; interpret rows carry no speed
    for _, r in rows.iterrows():
        assert sum(r["per_device_hbm_bytes"]) == pytest.approx(r["hbm_bytes"])
        (chip,) = parse_per_chip(r["per_chip"])
        assert chip["device_ids"] == [0, 1] and chip["latency_us"] == pytest.approx(max(r["per_device_latency_us"]))
        assert chip["latency_us"] == pytest.approx(r["latency_us"])


def test_part_of_a_chip_says_the_figures_are_per_device(tmp_path):
    path = write_synthetic_run(tmp_path / "part", SyntheticRunSpec(num_devices=3, devices_per_chip=2, **SMALL))
    section = mesh_section(load_run(path))
    assert any("are per-device figures" in n for n in section.notes)
    chips = next(t for t in section.tables if t.caption.startswith("Per chip"))
    assert {row[chips.headers.index("chip")].text for row in chips.rows} == {"chip(0,0,0)", "chip(1,0,0)"}


def test_one_device_run_omits_the_section_with_its_reason(tmp_path):
    path = write_synthetic_run(tmp_path / "one", SyntheticRunSpec(**SMALL))
    section = mesh_section(load_run(path))
    assert section.omitted and "every measurement ran on one device (mesh data=1,model=1)" in section.omitted


def test_sharded_run_stored_before_the_new_columns_renders_what_it_has(tmp_path, capsys):
    path = write_synthetic_run(tmp_path / "old", SyntheticRunSpec(num_devices=2, devices_per_chip=2, **SMALL))
    frame = pd.read_parquet(path / "measurements.parquet")
    frame.drop(columns=list(OPTIONAL_COLUMNS)).to_parquet(path / "measurements.parquet")
    run = load_run(path)
    assert not any("lacks columns" in p for p in run.problems)  # optional columns are not a defect
    result = write_report(run)
    text = _text(result.index_html.read_text())
    assert "Rows without figures_per" in text and "No per-chip figures are stored" in text
    assert "data=2,model=1" in text  # per-device latencies and the measured imbalance still show
    assert json.loads((path / "manifest.json").read_text())["mesh"] == "data=2,model=1"
