"""Offline TPU compilation (libtpu's compile-only client): fit per generation, failures classified.

Each real compile costs seconds on 2 cores: the cases are few and small.
"""

from __future__ import annotations

import json
import sys

import pytest

from rpa_bench import cli
from rpa_bench.kernels import compiling
from rpa_bench.kernels.lowering import lowering_batch
from rpa_bench.kernels.registry import get_backend
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

HAVE_LIBTPU = compiling.libtpu_status()[0]
needs_libtpu = pytest.mark.skipif(not HAVE_LIBTPU, reason="libtpu not installed")
MODEL = ModelSpec.from_dict(dict(name="llama3_8b", num_q_heads=32, num_kv_heads=8, head_dim=128,
                                 dtype="bfloat16", kv_dtype="bfloat16"))
DECODE = RaggedBatch.ordered([1] * 8, [1024] * 8, page_size=256)


@needs_libtpu
@pytest.mark.parametrize("generation", ["v6e", "tpu7x"])
def test_decode_and_mixed_compile_for_two_generations_with_vmem_and_hbm_figures(generation):
    r = compiling.compile_for_tpu(get_backend("rpa_v3"), MODEL, AttentionSpec(), lowering_batch(256), generation,
                                  case="lower")
    assert r.status == "ok", r.error
    # one Mosaic kernel per phase present in the batch (decode + mixed), each with its VMEM
    assert {n.split("-")[0] for n in r.vmem_used_bytes} == {"RPAd", "RPAm"}
    assert all(0 < v < r.vmem_capacity_bytes for v in r.vmem_used_bytes.values())
    assert r.vmem_estimate_bytes and r.hbm["argument_bytes"] > 0 and r.hbm["code_bytes"] > 0
    assert r.provenance["kernel"] == "rpa_v3"


@needs_libtpu
def test_a_block_size_that_overflows_tpu7x_vmem_fits_on_v6e():
    backend = get_backend("rpa_v3", options={"d_block_sizes": [1, 8192, 1, 1024]})
    v6e = compiling.compile_for_tpu(backend, MODEL, AttentionSpec(), DECODE, "v6e")
    tpu7x = compiling.compile_for_tpu(backend, MODEL, AttentionSpec(), DECODE, "tpu7x")
    assert v6e.status == "ok" and v6e.vmem_used_max_bytes > 64 << 20  # more than a TPU7x core has
    assert tpu7x.status == "vmem_oom", tpu7x.error
    assert "RESOURCE_EXHAUSTED" in tpu7x.error and "Traceback" not in tpu7x.error


@needs_libtpu
def test_the_command_times_out_a_compile_and_goes_on(capsys):
    rc = cli.main(["compile", "kernel=jax_rpa", "compile.generations=[v5e]", "compile.cases=[decode_8x1k]",
                   "compile.timeout_s=0.01", "compile.json=true"])
    rows = json.loads(capsys.readouterr().out)
    assert rc == 1 and [r["status"] for r in rows] == ["timeout"]
    assert "compile.timeout_s" in rows[0]["error"]


def test_bad_compile_config_is_refused_in_one_line(capsys):
    assert cli.main(["compile", "compile.cases=[nosuch]"]) == 2
    err = capsys.readouterr().err
    assert "compile.cases: 'nosuch' unknown; allowed: all, lower" in err and "Traceback" not in err
    assert cli.main(["compile", "compile.generations=[v9z]"]) == 2
    assert "generation='v9z' unknown; allowed: v5e" in capsys.readouterr().err


@pytest.mark.parametrize("override, says", [
    ("compile.generations=[]", "compile.generations is empty; allowed: a list of v5e"),
    ("compile.cases=[]", "compile.cases is empty; allowed: [all]"),
    ("compile.cases=[all,decode_8x1k]", "'all' stands alone"),
    ("compile.timeout_s=abc", "compile.timeout_s='abc': a number of seconds > 0"),
    ("compile.schedule=maybe", "compile.schedule='maybe'; allowed: true, false"),
    ("compile.generations=[v4]", "libtpu's compile-only client does not compile for it); allowed: v5e, v6e, v5p, tpu7x"),
])
def test_each_bad_compile_setting_is_one_line_naming_the_field(override, says, capsys):
    assert cli.main(["compile", "kernel=rpa_v3", override]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and "KeyError" not in err


def test_compile_json_flag_prints_json_on_failure_too(capsys):
    assert cli.main(["compile", "--json", "kernel=rpa_v3", "compile.generations=[]"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit"] == 2 and "compile.generations" in doc["error"]


def test_a_generation_named_twice_is_compiled_once():
    from rpa_bench.generations import generation_kinds

    assert generation_kinds(["tpu7x", "TPU7x", " v6e"], compilable=True) == ("TPU7x", "TPU v6 lite")


@needs_libtpu
def test_compile_json_flag_prints_json(capsys):
    rc = cli.main(["compile", "--json", "kernel=jax_rpa", "compile.generations=[v5e]", "compile.cases=[decode_8x1k]",
                   "compile.timeout_s=0.01"])
    rows = json.loads(capsys.readouterr().out)
    assert rc == 1 and [r["status"] for r in rows] == ["timeout"]


def test_the_compile_table_prints_no_none():
    from rpa_bench.commands.compile import format_table

    res = compiling.CompileResult("rpa_v3", "TPU7x", "decode_8x1k", "failed", error="boom")
    assert "None" not in format_table([res]) and "nan" not in format_table([res]).lower()


def test_missing_libtpu_degrades_to_skips(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "libtpu", None)  # import libtpu -> ImportError
    r = compiling.compile_for_tpu(get_backend("rpa_v3"), MODEL, AttentionSpec(), DECODE, "tpu7x")
    assert r.status == "skipped" and "libtpu not installed" in r.error
    rc = cli.main(["compile", "kernel=rpa_v3", "compile.generations=[tpu7x]", "compile.cases=[decode_8x1k]"])
    captured = capsys.readouterr()
    assert rc == 0 and "skipped" in captured.out and "libtpu not installed" in captured.err


@pytest.mark.parametrize("message,status", [
    ("RESOURCE_EXHAUSTED: Allocation (size=75497472) would exceed memory (size=67108864) :: space=vmem", "vmem_oom"),
    ("INTERNAL: Mosaic failed: CompileTimeScopedVmemOom: size 36.05M and limit 16.00M", "vmem_oom"),
    ("Ran out of memory in memory space vmem. Used 564.50M of 127.94M", "vmem_oom"),
    ("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm", "hbm_oom"),
    ("INVALID_ARGUMENT: something else", "failed"),
])
def test_compiler_messages_are_classified(message, status):
    assert compiling.classify(message) == status


def test_vmem_used_is_read_per_mosaic_kernel_from_compiled_text():
    text = ('  %RPAd-p_256-bq_1_1-bkv_1024_1024.1 = (bf16[8]{0}) custom-call(%a), custom_call_target="tpu_custom_call", '
            'backend_config={"used_scoped_memory_configs":[{"memory_space":"1","offset":"0","size":"9998336"}]}\n'
            '  %fusion.1 = bf16[8]{0} fusion(%b), kind=kLoop\n')
    assert compiling.vmem_used(text) == {"RPAd-p_256-bq_1_1-bkv_1024_1024.1": 9998336}


@needs_libtpu
def test_compile_only_run_of_paper_decode_on_both_tensorcores_of_a_tpu7x_chip(tmp_path, capsys):
    import pandas as pd

    from rpa_bench.reports.report import write_report

    rc = cli.main(["run", "experiment=paper_decode", "scale=cpu_smoke", "run.compile_only=tpu7x",
                   "run.kernels=[rpa_v3]", "run.max_points=1", f"run.results_dir={tmp_path}", "run.name=co",
                   "run.progress=false"])
    assert rc == 0, capsys.readouterr().err
    df = pd.read_parquet(tmp_path / "co" / "measurements.parquet")
    assert set(df.status) == {"compiled"} and set(df.variant) == {"excl_prep", "incl_prep"}
    # mesh=auto on a TPU7x chip: data=2 over its two TensorCores, one SPMD program on both
    assert set(df["mesh"]) == {"data=2,model=1"} and set(df.num_devices) == {2}
    assert set(df.compile_target) == {"TPU7x"} and set(df.compile_status) == {"ok"}
    assert (df.vmem_used_bytes > 0).all() and df.vmem_headroom.between(0, 1).all()
    assert (df.vmem_capacity_bytes == 64 << 20).all() and (df.compiled_hbm_bytes > 0).all()
    assert df.latency_us.isna().all() and df.mbu_pct.isna().all()  # nothing ran: no speed
    html = write_report(tmp_path / "co").index_html.read_text()
    assert "Compile report for TPU7x" in html and "Measured speed" not in html


def test_compile_only_names_a_known_generation(tmp_path, capsys):
    rc = cli.main(["run", "experiment=paper_decode", "scale=cpu_smoke", "run.compile_only=v9z",
                   f"run.results_dir={tmp_path}", "run.name=bad"])
    err = capsys.readouterr().err
    assert rc == 2 and "run.compile_only: generation='v9z' unknown; allowed: v5e" in err


@needs_libtpu
def test_parallel_lanes_keep_the_jobs_order_and_each_lane_times_out_alone():
    from rpa_bench.kernels.compiling import CompileJob, compile_many

    jobs = [CompileJob({"name": "jax_rpa"}, f"job{i}", MODEL, AttentionSpec(), DECODE, "v5e", f"case{i}", False, None)
            for i in range(3)]
    seen = []
    out = compile_many(jobs, timeout_s=0.01, workers=2, progress=lambda r: seen.append(r.kernel))
    assert [r.kernel for r in out] == ["job0", "job1", "job2"]  # the jobs' order, whatever finished first
    assert sorted(seen) == ["job0", "job1", "job2"] and all(r.status == "timeout" for r in out)


def test_eta_line_counts_and_estimates():
    from rpa_bench.kernels.compiling import Eta

    eta = Eta(4)
    now = [100.0]
    eta.clock, eta.start = (lambda: now[0]), 100.0
    now[0] = 110.0
    assert eta.done() == "[1/4] 10 s, ETA 30 s"
    now[0] = 120.0
    assert eta.done() == "[2/4] 20 s, ETA 20 s"


def test_compile_out_keeps_each_result_once_and_a_rerun_skips_what_is_there(tmp_path, capsys):
    if not compiling.libtpu_status()[0]:
        pytest.skip("libtpu not installed")
    args = ["compile", "kernel=reference", "compile.generations=[tpu7x]", "compile.cases=[decode_8x1k]",
            f"compile.out={tmp_path / 'c'}"]
    assert cli.main(args) == 0
    log = tmp_path / "c" / "compile.jsonl"
    assert len(log.read_text().splitlines()) == 1
    with log.open("a") as f:
        f.write('{"key": "cut short by a ki')  # a line a kill cut short is ignored
    capsys.readouterr()
    assert cli.main([*args[:3], "compile.cases=[decode_8x1k,lower]", args[4]]) == 0
    captured = capsys.readouterr()
    assert "1 of 2 already in" in captured.err and captured.out.count("reference") == 2
    keys = [json.loads(x)["key"] for x in log.read_text().splitlines() if x.startswith('{"key": "') and x.endswith("}")]
    assert len(keys) == 2 == len(set(keys))


def test_bad_engine_settings_are_one_line_errors(capsys):
    assert cli.main(["compile", "kernel=reference", "engine=ray", "engine.address=nowhere"]) == 2
    err = capsys.readouterr().err
    assert "engine.address='nowhere'; allowed: null" in err and "Traceback" not in err
