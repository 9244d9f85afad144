"""Reports on incomplete or foreign folders: render what is valid, list what is missing."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rpa_bench import cli
from rpa_bench.store.schema import SCHEMA_VERSION
from rpa_bench.store.load import NotARunError, load_run
from synthetic_run import SyntheticRunSpec, write_synthetic_run


@pytest.fixture
def run(tmp_path):
    return write_synthetic_run(tmp_path / "run", SyntheticRunSpec(include_trace=False))


def _edit_manifest(path, **changes):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    for key in [k for k, v in changes.items() if v is ...]:
        del manifest[key]
    (path / "manifest.json").write_text(json.dumps(manifest))


def _report(path, capsys) -> tuple[str, str]:
    assert cli.main(["report", str(path)]) == 0
    return (path / "report" / "index.html").read_text(), capsys.readouterr().err


def test_older_schema_with_missing_columns_renders_and_lists_them(run, capsys):
    _edit_manifest(run, schema_version=SCHEMA_VERSION - 1, calibration=...)
    frame = pd.read_parquet(run / "measurements.parquet")
    frame.drop(columns=["mbu_si_pct", "mfu_si_pct", "scale"]).to_parquet(run / "measurements.parquet")
    html, err = _report(run, capsys)
    assert f"store schema v{SCHEMA_VERSION - 1}, older than this reader" in html
    assert "lacks columns: scale, mbu_si_pct, mfu_si_pct" in html
    assert "manifest.json lacks keys: calibration" in html
    assert "lacks columns" in err
    assert '<img src="roofline.png"' in html  # what is valid still renders


def test_interrupted_run_without_parquet_renders_what_it_has(run, capsys):
    _edit_manifest(run, status="interrupted")
    (run / "measurements.parquet").unlink()
    html, _ = _report(run, capsys)
    assert "run status is &#39;interrupted&#39;, not &#39;complete&#39;" in html
    assert "measurements.parquet is missing" in html
    assert "Omitted: no measurement with status ok" in html  # roofline
    assert "Environment and provenance" in html and "tpu-inference" in html


def test_parquet_without_manifest_renders_measurements(run, capsys):
    (run / "manifest.json").unlink()
    html, _ = _report(run, capsys)
    assert "manifest.json is missing" in html and '<img src="roofline.png"' in html


def test_corrupt_manifest_is_listed_not_fatal(run, capsys):
    (run / "manifest.json").write_text("{not json")
    html, _ = _report(run, capsys)
    assert "manifest.json is not valid JSON" in html


def test_unknown_status_values_are_listed(run):
    frame = pd.read_parquet(run / "measurements.parquet")
    frame.loc[0, "status"] = "exploded"
    frame.to_parquet(run / "measurements.parquet")
    assert any("unknown status values ['exploded']" in p for p in load_run(run).problems)


def test_non_results_folder_is_refused_with_exit_two(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "not a results run folder" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
    with pytest.raises(NotARunError, match="is not a folder"):
        load_run(tmp_path / "notes.txt")


def test_report_usage_error_exits_two(capsys):
    assert cli.main(["report"]) == 2
    assert "usage: rpa-bench report" in capsys.readouterr().err


def test_a_sweep_folder_is_reported_as_one_page_with_the_swept_values_as_columns(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for value in ("3", "5"):
        write_synthetic_run(sweep / f"kernel=reference,timing.num_samples={value}",
                            SyntheticRunSpec(include_trace=False))
    assert cli.main(["report", str(sweep)]) == 0
    assert "(2 jobs)" in capsys.readouterr().out
    html = (sweep / "report" / "index.html").read_text()
    assert "timing.num_samples" in html and "Measurements of every job" in html
    assert (sweep / "kernel=reference,timing.num_samples=3" / "report" / "index.html").is_file()


def test_two_sweeps_are_compared_job_by_job_on_one_page(tmp_path, capsys):
    import json

    for side, seed in (("a", 0), ("b", 1)):
        for value in ("3", "5"):
            write_synthetic_run(tmp_path / side / f"kernel=reference,timing.num_samples={value}",
                                SyntheticRunSpec(include_trace=False, include_prefill=False, seed=seed))
    write_synthetic_run(tmp_path / "b" / "kernel=reference,timing.num_samples=9",
                        SyntheticRunSpec(include_trace=False, include_prefill=False))
    rc = cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc in (0, 1) and out["jobs"] == ["kernel=reference,timing.num_samples=3",
                                            "kernel=reference,timing.num_samples=5"]
    assert out["jobs_one_side"] == ["kernel=reference,timing.num_samples=9"]
    assert {p["timing.num_samples"] for p in out["points"]} == {"3", "5"}
    html = (tmp_path / "b" / "compare-a" / "index.html").read_text()
    assert "timing.num_samples" in html and "in one sweep only" in html
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "nope")]) == 2


def test_report_on_a_folder_of_plain_runs_writes_one_page(tmp_path, capsys):
    """A folder of runs named without overrides (not a sweep) still gets one page, no TypeError."""
    from rpa_bench import cli

    for name in ("first", "second"):
        write_synthetic_run(tmp_path / "results" / name)
    assert cli.main(["report", str(tmp_path / "results")]) == 0
    out = capsys.readouterr()
    assert "2 jobs" in out.out and "Traceback" not in out.err


@pytest.mark.parametrize("out", ["/proc/rpa_bench_x", "README.md", ""])
def test_unwritable_outputs_are_refused_in_one_line(tmp_path, out, capsys, monkeypatch):
    from rpa_bench import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("x")
    run = write_synthetic_run(tmp_path / "run")
    assert cli.main(["report", str(run), "--out", out]) == 2
    assert cli.main(["compare", str(run), str(run), "--out", out]) == 2
    assert cli.main(["tune", "kernel=reference", "scale=cpu_smoke", f"tune.out={out}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("--out=") == 2 and "tune.out=" in err


def test_compare_says_a_sweep_is_a_sweep_and_fails_in_json(tmp_path, capsys):
    import json as _json

    from rpa_bench import cli

    for job in ("seed=0", "seed=1"):
        write_synthetic_run(tmp_path / "sweep" / job)
    run = write_synthetic_run(tmp_path / "run")
    assert cli.main(["compare", str(tmp_path / "sweep"), str(run), "--json"]) == 2
    captured = capsys.readouterr()
    assert "is a sweep folder (2 jobs)" in captured.err
    assert "is a sweep folder" in _json.loads(captured.out)["error"]
