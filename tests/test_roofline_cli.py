"""``rpa-bench roofline``: the paper's rows from the command line, --json, and flag errors."""

from __future__ import annotations

import json

import pytest

from rpa_bench.cli import main as cli_main

DECODE = "--device tpu7x --heads 32/8 --head-dim 128 --page-size 256 --dtype bfloat16 --convention paper".split()


def _json(capsys, argv):
    assert cli_main(["roofline", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("context, latency, mbu", [(8192, 641, 84.57), (32768, 2527, 85.80), (512, 145, 23.66)])
def test_decode_rows_of_table4(capsys, context, latency, mbu):
    out = _json(capsys, [*DECODE, "--phase", "decode", "--num-seqs", "128", "--context", str(context),
                         "--latency-us", str(latency)])
    assert out["mbu_pct"] == pytest.approx(mbu, abs=0.2) and out["mfu_pct"] is None
    assert out["hbm_bytes"] == 128 * 128 * ((context + 1) * 16 + 64) * 2
    assert out["convention"] == "paper" and out["device"] == "tpu7x" and out["bound_by"] == "memory"


def test_prefill_rows_of_tables_6_and_8(capsys):
    base = "--device tpu7x --heads 32/8 --head-dim 128 --dtype bfloat16 --convention paper --phase prefill".split()
    nc = _json(capsys, [*base, "--seq-len", "8192", "--latency-us", "1308"])
    assert nc["mfu_pct"] == pytest.approx(72.88, abs=0.01) and nc["mbu_pct"] is None and not nc["causal"]
    c = _json(capsys, [*base, "--seq-len", "8192", "--causal", "--ckv", "1024", "--latency-us", "852"])
    assert c["mfu_pct"] == pytest.approx(62.94, abs=0.01) and c["flops"] == 2 * 8192 * (8192 + 1024) * 32 * 128


def test_text_output_names_metrics(capsys):
    assert cli_main(["roofline", *DECODE, "--phase", "decode", "--num-seqs", "128", "--context", "8192",
                     "--latency-us", "641"]) == 0
    text = capsys.readouterr().out
    for word in ("throughput", "MBU", "MFU", "bound", "memory-bound", "84.61"):
        assert word in text


def test_batch_spec_mixed_on_another_device(capsys):
    pytest.importorskip("rpa_bench.workloads.spec")
    out = _json(capsys, ["--device", "h100_sxm", "--batch-spec", "2q2k_32q1s1k", "--latency-us", "120",
                         "--convention", "si"])
    assert out["phase"] == "mixed" and out["mbu_pct"] is not None and out["mfu_pct"] is not None
    assert out["max_mxu_utilization"] == 1.0 and out["cost"]["num_seqs"] == 34


def test_without_latency_prints_cost_and_bound_only(capsys):
    out = _json(capsys, ["--device", "tpu_v6e", "--head-dim", "256", "--heads", "16/4", "--phase", "decode",
                         "--num-seqs", "8", "--context", "1000"])
    assert out["mbu_pct"] is None and out["bound_time_us"] > 0 and out["hbm_bytes"] > 0


@pytest.mark.parametrize(
    "argv, needle",
    [(["--convention", "gib"], "--convention"), (["--heads", "32"], "--heads"), (["--device", "tpu9"], "--device"),
     (["--phase", "decode", "--num-seqs", "4"], "--context"), (["--phase", "mixed"], "--batch-spec"),
     (["--phase", "prefill", "--seq-len", "64", "--latency-us", "-1"], "--latency-us"),
     (["--phase", "decode", "--num-seqs", "2", "--context", "8", "--no-causal", "--sliding-window", "4"],
      "sliding_window")],
)
def test_bad_flags_name_the_flag(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        cli_main(["roofline", *argv])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_paper_flag_reproduces_tables_4_6_8(capsys):
    out = _json(capsys, ["--paper", "all"])
    rows = [r for r in out["rows"] if r["table"] in ("table4", "table6", "table8")]
    assert len(rows) == 42 and all(r["within_rounding"] for r in rows)
    assert out["reproduced"] == 42 and out["checked"] == 42
    assert cli_main(["roofline", "--paper", "table8"]) == 0
    text = capsys.readouterr().out
    assert "== Table 8: prefill, causal" in text and "Table 4" not in text and "bound us" in text
    assert "14/14 reproduced" in text and text.rstrip().endswith("reproduced: 14/14 printed values within the "
                                                                  "latency's rounding")
    assert cli_main(["roofline", "--paper", "table12"]) == 0
    text = capsys.readouterr().out
    assert "not a utilisation (*)" in text and "(*) wo_flash_attention: the ablation leaves out" in text
