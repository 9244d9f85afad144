"""Compiler/runtime flags recorded and compared; the speculative-verify and sliding-window experiments."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rpa_bench import cli
from rpa_bench.commands._hydra import compose
from synthetic_run import SyntheticRunSpec, write_synthetic_run
from rpa_bench.roofline.cost import batch_cost
from rpa_bench.roofline.specs import get_device_spec
from rpa_bench.roofline.verify import verify_crossover, verify_point
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import ModelSpec

FAST = ["scale=cpu_smoke", "timing=quick", "timing.num_samples=3", "timing.capture=false", "run.progress=false",
        "timing.warmup_calls=0", "timing.min_samples=1", "timing.min_sample_s=0"]
LLAMA = ModelSpec.from_dict(dict(name="llama3_8b", num_q_heads=32, num_kv_heads=8, head_dim=128,
                                 dtype="bfloat16", kv_dtype="bfloat16"))


@pytest.mark.slow  # a whole run through the CLI (~6 s)
def test_a_run_records_flags_and_per_entry_compiler_options(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    monkeypatch.setenv("JAX_ENABLE_CHECKS", "0")
    rc = cli.main(["run", "experiment=paper_decode", "run.max_points=1", *FAST, f"run.results_dir={tmp_path}",
                   "run.name=f", "run.kernels=[{use: reference, label: ref_a},"
                   " {use: reference, label: ref_b, compiler_options: {xla_cpu_enable_fast_math: false}}]"])
    assert rc == 0
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    flags = manifest["flags"]
    assert flags["env"]["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false" and "JAX_ENABLE_CHECKS" in flags["env"]
    assert "jax_enable_x64" in flags["jax_config"]
    df = pd.read_parquet(tmp_path / "f" / "measurements.parquet")
    assert set(df.kernel) == {"ref_a", "ref_b"} and set(df.backend) == {"reference"}
    assert set(df.status) == {"ok"}
    opts = dict(zip(df.kernel, df.compiler_options))
    assert pd.isna(opts["ref_a"]) and json.loads(opts["ref_b"]) == {"xla_cpu_enable_fast_math": False}
    html_rc = cli.main(["report", str(tmp_path / "f")])
    assert html_rc == 0 and "XLA_FLAGS" in (tmp_path / "f" / "report" / "index.html").read_text()


def _with_flags(path, flags):
    m = json.loads((path / "manifest.json").read_text())
    m["flags"] = flags
    (path / "manifest.json").write_text(json.dumps(m))


def test_runs_differing_only_in_a_flag_are_not_comparable_unless_asked(tmp_path, capsys):
    a = write_synthetic_run(tmp_path / "a", SyntheticRunSpec(include_trace=False))
    b = write_synthetic_run(tmp_path / "b", SyntheticRunSpec(include_trace=False))
    _with_flags(a, {"env": {}, "jax_config": {}, "compiler_options": {}})
    _with_flags(b, {"env": {"XLA_FLAGS": "--xla_tpu_offload_gather_to_sparsecore=false"}, "jax_config": {},
                    "compiler_options": {}})
    assert cli.main(["compare", str(a), str(b), "--out", str(tmp_path / "c1"), "--resamples", "200"]) == 2
    assert "differ in compiler/runtime flags (XLA_FLAGS)" in capsys.readouterr().err
    rc = cli.main(["compare", str(a), str(b), "--out", str(tmp_path / "c2"), "--resamples", "200", "--across-flags",
                   "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc in (0, 1) and out["flag_differences"] == ["XLA_FLAGS"] and out["across_flags"] is True
    assert "XLA_FLAGS" in (tmp_path / "c2" / "index.html").read_text()


@pytest.mark.slow  # two whole runs through the CLI (~17 s); the configs compose in test_workload_configs
@pytest.mark.parametrize("experiment", ["spec_verify", "sliding_window_sweep"])
def test_both_experiments_compose_and_run_at_cpu_scale(tmp_path, experiment):
    cfg = compose([f"experiment={experiment}"])
    assert cfg.run.kernels == ["rpa_v3", "rpa_v2", "jax_rpa", "reference"]
    rc = cli.main(["run", f"experiment={experiment}", "run.kernels=[reference]", "run.max_points=2", *FAST,
                   f"run.results_dir={tmp_path}", "run.name=e"])
    assert rc == 0
    df = pd.read_parquet(tmp_path / "e" / "measurements.parquet")
    assert set(df.status) == {"ok"} and df.bound_time_us.notna().all()
    if experiment == "sliding_window_sweep":
        assert set(df.workload_kind) == {"sliding_window"}
        assert sorted(set(df[df.workload == "sliding_window_decode"].sliding_window)) == [256, 512]
    else:
        assert set(df.num_seqs) == {4} and set(df.num_tokens) <= {8, 16, 32}  # 4 sequences x q in 2, 4, 8
    assert cli.main(["report", str(tmp_path / "e")]) == 0
    html = (tmp_path / "e" / "report" / "index.html").read_text()
    assert ("roofline expects" in html) if experiment == "sliding_window_sweep" else ("memory bound up to" in html)


@pytest.mark.parametrize("q,kv,w", [(1, 8193, 128), (1, 8193, 8192), (1, 100, 4096), (64, 512, 100), (7, 40, 16)])
def test_window_bytes_and_flops_follow_min_kv_len_window_against_brute_force(q, kv, w):
    batch = RaggedBatch.ordered([q], [kv], page_size=16)
    cost = batch_cost(batch, LLAMA, causal=True, sliding_window=w, count="useful")
    cached, pairs = set(), 0
    for p in range(kv - q, kv):  # each new query sees keys (p - w, p]
        keys = [k for k in range(max(0, p - w + 1), p + 1)]
        pairs += len(keys)
        cached |= {k for k in keys if k < kv - q}
    kv_bytes = 2 * LLAMA.num_kv_heads * LLAMA.head_dim * LLAMA.kv_dtype_bytes
    assert cost.flops_causal_useful == 4 * pairs * LLAMA.num_q_heads * LLAMA.head_dim
    assert cost.kv_read_bytes == len(cached) * kv_bytes
    if q == 1:  # decode: min(kv_len, window) keys, min(kv_len - 1, window - 1) of them cached
        assert pairs == min(kv, w) and len(cached) == min(kv - 1, w - 1)


def test_verify_stays_bandwidth_bound_for_small_drafts_on_tpu7x():
    spec = get_device_spec("tpu7x")
    cross = verify_crossover(LLAMA, spec, num_seqs=64, context_len=8192)
    assert cross is not None and 8 < cross < 256
    assert verify_point(LLAMA, spec, num_seqs=64, context_len=8192, query_len=8).bound_by == "memory"
    assert verify_point(LLAMA, spec, num_seqs=64, context_len=8192, query_len=cross).bound_by == "compute"
    assert verify_point(LLAMA, spec, num_seqs=64, context_len=8192, query_len=cross - 1).bound_by == "memory"
