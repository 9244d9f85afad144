"""``rpa-bench simulate`` on every shipped trace (heads of them), its output and refusals."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rpa_bench import cli
from rpa_bench.commands._hydra import conf_dir

from test_workload_configs import missing_group_deletions

TRACES = ["azure_code", "azure_conv", "mooncake_conversation", "mooncake_synthetic", "sharegpt", "arxiv",
          "generic_csv"]


@pytest.mark.parametrize("name", TRACES)
def test_simulate_runs_on_every_shipped_trace(name, tmp_path, capsys):
    assert (conf_dir() / "workload" / f"{name}.yaml").is_file()
    out = tmp_path / "sim"
    rc = cli.main(["simulate", f"workload={name}", "workload.max_requests=150", f"+simulate.out_dir={out}",
                   f"run.results_dir={tmp_path}", *missing_group_deletions()])
    text = capsys.readouterr().out
    assert rc == 0
    assert "requests completed: 150 of 150" in text and "steps:" in text and str(out) in text
    assert {"summary.json", "steps.parquet", "batches/sample.parquet", "batches/points.parquet",
            "stream/segments.parquet", "stream/decodes.parquet", "stream/chunks.parquet",
            "batch_shape.png"} <= {p.relative_to(out).as_posix() for p in out.rglob("*")}
    summary = json.loads((out / "summary.json").read_text())
    steps = pd.read_parquet(out / "steps.parquet")
    assert len(steps) == summary["summary"]["steps"] and steps["sampled"].sum() == summary["summary"]["sample"]["points"]
    points = pd.read_parquet(out / "batches" / "points.parquet")
    assert points["point_id"].nunique() == summary["summary"]["sample"]["points"]


def test_simulate_refuses_a_non_trace_workload(tmp_path, capsys):
    rc = cli.main(["simulate", "workload=paper_decode", f"run.results_dir={tmp_path}", *missing_group_deletions()])
    assert rc == 2 and "simulate needs kind 'trace'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override,needle",
    [("scheduler.num_kv_pages=10", "num_kv_pages=10 is smaller than request"),
     ("scheduler.max_num_batched_tokens=0", "max_num_batched_tokens=0 must be an integer >= 1"),
     ("scheduler.max_num_seqs=0", "max_num_seqs=0 must be an integer >= 1")],
)
def test_impossible_settings_are_refused_before_simulating(override, needle, tmp_path, capsys):
    rc = cli.main(["simulate", "workload=mooncake_conversation", "workload.max_requests=50", override,
                   f"run.results_dir={tmp_path}", *missing_group_deletions()])
    assert rc == 2 and needle in capsys.readouterr().err
