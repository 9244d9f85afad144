"""The per-phase time account: exclusive nesting, scopes, the run's manifest and rows."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rpa_bench import cli
from rpa_bench.measure.phases import MEASURED_WORK, Account, one_line, overhead_ratio, phase, scope


class _Clock:
    """A deterministic phase clock: time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nested_phases_are_exclusive_and_counted_in_every_scope(monkeypatch):
    from rpa_bench.measure import phases

    clock = _Clock()
    monkeypatch.setattr(phases, "_clock", clock)
    outer, inner = Account(), Account()
    with scope(outer):
        with phase("compile"):
            clock.now += 2.0
            with scope(inner), phase("check"):
                clock.now += 3.0
            clock.now += 0.5
    assert outer.seconds["check"] == 3.0 and outer.seconds["compile"] == 2.5  # exclusive of the nested check
    assert dict(inner.seconds) == {"check": 3.0}
    with phase("nowhere"):  # outside any scope: nothing recorded, nothing raised
        pass
    assert "nowhere" not in outer.seconds


def test_overhead_ratio_and_line():
    secs = {"start-up": 4.0, "compile": 2.0, "warm-up": 0.5, "timed samples": 1.5, "capture": 3.0}
    assert overhead_ratio(secs, wall_s=12.0) == (12.0 - 4.0) / 4.0
    assert "overhead 2.00x" in one_line(secs, 12.0)
    # the overhead ratio divides by the measured work alone: more start-up does not change it
    assert overhead_ratio({**secs, "start-up": 9.0}, wall_s=17.0) == overhead_ratio(secs, wall_s=12.0)
    assert all(k in secs for k in MEASURED_WORK)


@pytest.mark.slow  # a whole run and its report through the CLI
def test_a_run_accounts_for_its_time_by_phase(tmp_path, capsys):
    rc = cli.main(["run", "experiment=paper_decode", "scale=cpu_smoke", "timing=quick", "run.kernels=[reference]",
                   "run.max_points=1", "run.progress=false", f"run.results_dir={tmp_path}", "run.name=p"])
    assert rc == 0
    assert "overhead" in capsys.readouterr().out
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    phases = m["phases"]
    for name in ("start-up", "workload build", "materialise", "compile", "check", "warm-up",
                 "timed samples", "capture", "capture parse", "statistics", "store write", "other"):
        assert name in phases, name
    assert not phases.get("reference")  # the default reference kernel's checked output stood in for it
    assert abs(sum(phases.values()) - m["process_wall_s"]) < 0.05 * m["process_wall_s"] + 0.1
    assert m["overhead_ratio"] > 1.0
    df = pd.read_parquet(tmp_path / "p" / "measurements.parquet")
    per_row = [json.loads(v) for v in df.phase_seconds]
    assert all(r["variant"]["timed samples"] > 0 and r["kernel"]["compile"] > 0 for r in per_row)
    assert cli.main(["report", str(tmp_path / "p")]) == 0
    assert "Where the run&#39;s time went" in (tmp_path / "p" / "report" / "index.html").read_text() or \
        "Where the run's time went" in (tmp_path / "p" / "report" / "index.html").read_text()


def test_the_default_reference_kernel_stands_in_for_the_points_reference():
    from rpa_bench.kernels.reference import ReferenceBackend
    from rpa_bench.pipeline.point import PointReference

    computed = []
    ref = PointReference(lambda: computed.append(1) or "computed")
    ref.offer(ReferenceBackend(options={"extra_work": 0.5}), "slower reference")  # not the reference itself
    ref.offer(ReferenceBackend(options={"block_bytes": 2**20}), "other blocks")
    assert ref.get() == "computed" and computed == [1]
    ref = PointReference(lambda: computed.append(2) or "computed")
    ref.offer(ReferenceBackend(), "the reference's own output")
    ref.offer(ReferenceBackend(), "a later offer")
    assert ref.get() == "the reference's own output" and computed == [1]  # computed once at most, here never
