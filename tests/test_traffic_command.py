"""rpa-bench traffic: full-scale paper shapes without arrays, the ceiling against the paper's
measured MBU, two block-size settings side by side, and the observation in interpret mode."""

from __future__ import annotations

import json

import pytest

from rpa_bench import cli
from rpa_bench.roofline.paper import load_paper_table


def test_paper_decode_ceilings_at_full_scale_bound_the_papers_measured_mbu(tmp_path, capsys):
    rc = cli.main(["traffic", "experiment=paper_decode", "kernel=rpa_v3", "device=tpu7x", "--json",
                   f"traffic.out={tmp_path}"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["kernel"] for r in rows} == {"rpa_v3"} and len(rows) == 7
    by_ctx = {r["context_len"]: r for r in rows}
    paper = load_paper_table("table4")
    for _, p in paper.iterrows():
        r = by_ctx[int(p["context_len"])]
        assert r["refetch_factor"] >= 1.0 and 0 < r["traffic_ceiling_pct"] <= 100.0
        # a measured MBU above the ceiling would mean the model is wrong (it is not clipped)
        assert p["mbu_pct_excl_prep"] <= r["traffic_ceiling_pct"]
    assert (tmp_path / "traffic.png").is_file() and (tmp_path / "traffic.csv").is_file()


def test_two_block_size_settings_side_by_side_show_the_prefill_reread(tmp_path, capsys):
    entries = ("run.kernels=[{use: rpa_v3, label: small, options: {m_block_sizes: [8, 32, 8, 32]}},"
               "{use: rpa_v3, label: big, options: {m_block_sizes: [32, 32, 32, 32]}}]")
    rc = cli.main(["traffic", "workload=batch_spec", "workload.spec=[1q32s32]", "workload.page_size=16",
                   "model.num_q_heads=8", "model.num_kv_heads=2", entries, "--json", f"traffic.out={tmp_path}"])
    assert rc == 0
    rows = {r["kernel"]: r for r in json.loads(capsys.readouterr().out)}
    # 32 query tokens: 4 query blocks of 8 re-read the 32-token KV block 4 times, one block of 32 once
    assert rows["small"]["bytes_new_kv"] == 4 * rows["big"]["bytes_new_kv"]
    assert rows["big"]["moved_vs_small"] < 1.0


def test_observing_in_interpret_mode_agrees_with_the_model(tmp_path, capsys):
    rc = cli.main(["traffic", "workload=batch_spec", "workload.spec=[2q1s40_q24s24]", "workload.page_size=16",
                   "model.num_q_heads=8", "model.num_kv_heads=2", "model.dtype=float32", "model.kv_dtype=float32",
                   "kernel=rpa_v3", "traffic.observe=true", "--json", f"traffic.out={tmp_path}"])
    assert rc == 0, capsys.readouterr().err
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["observed"] == "equal" for r in rows)


def test_a_kernel_without_a_traffic_model_says_so(tmp_path, capsys):
    assert cli.main(["traffic", "experiment=paper_decode", "kernel=reference", "run.max_points=1", "--json",
                     f"traffic.out={tmp_path}"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert "declares no traffic model" in row["note"]


@pytest.mark.slow  # batched RPA in interpret mode (~90 s)
def test_a_kernel_without_a_model_is_observed_with_every_hbm_byte_counted(tmp_path, capsys):
    rc = cli.main(["traffic", "workload=batch_spec", "workload.spec=[2q1s40]", "workload.page_size=16",
                   "model.num_q_heads=8", "model.num_kv_heads=2", "model.dtype=float32", "model.kv_dtype=float32",
                   "kernel=batched_rpa", "device=tpu7x", "traffic.observe=true", "--json", f"traffic.out={tmp_path}"])
    assert rc == 0, capsys.readouterr().err
    (row,) = json.loads(capsys.readouterr().out)
    assert row["observed"] == "observed only (no model)" and "declares no traffic model" not in row["note"]
    parts = sum(v for k, v in row.items() if k.startswith("bytes_"))
    assert row["moved_hbm_bytes"] == row["observed_hbm_bytes"] == parts
    # 2 decodes of 40 tokens: at least the analytic bytes (each KV byte once), within one page more
    assert row["analytic_hbm_bytes"] <= row["moved_hbm_bytes"] and 1.0 <= row["refetch_factor"] < 1.1


def test_bad_traffic_settings_are_one_line(capsys):
    assert cli.main(["traffic", "experiment=paper_decode", "kernel=rpa_v3", "traffic.generation=v9"]) == 2
    err = capsys.readouterr().err
    assert "generation='v9' unknown" in err and "Traceback" not in err


def test_a_run_stores_the_paper_rows_ceilings_and_the_report_reads_them():
    import types

    from rpa_bench.kernels.registry import KernelConfig
    from rpa_bench.pipeline.traffic import paper_ceilings
    from rpa_bench.reports.paper_side import paper_ceiling

    stored = paper_ceilings([KernelConfig("rpa_v3"), KernelConfig("reference")])
    assert set(stored) == {"rpa_v3"}  # the reference declares no traffic model
    tables = stored["rpa_v3"]["tables"]
    assert set(tables) == {"table4", "table6", "table8"}
    # prefill: the 8K-token sequence's KV is re-read once per query block
    assert tables["table6"]["8192"]["refetch_factor"] > tables["table6"]["512"]["refetch_factor"] > 1.0
    run = types.SimpleNamespace(manifest={"paper_traffic": stored})
    assert paper_ceiling(run, "table4", 8192) == tables["table4"]["8192"]["traffic_ceiling_pct"]
    assert paper_ceiling(types.SimpleNamespace(manifest={}), "table4", 8192) is None
