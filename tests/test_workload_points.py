"""Trace workloads: sampled steps become points that materialize accepts; tables and summary."""

from __future__ import annotations

import numpy as np
import pytest

from rpa_bench.workloads.materialize import materialize
from rpa_bench.workloads.model import ModelSpec
from rpa_bench.workloads.points import build_workload, workload_spec_from_dict
from rpa_bench.workloads.prefix_cache import PrefixCache
from rpa_bench.workloads.scheduler_spec import SamplingSpec, SchedulerSpec

TINY = ModelSpec("tiny", 2, 1, 64, dtype="float32", kv_dtype="float32", num_layers=2,
                 model_weight_bytes=10**9, model_flops_per_token=10**9)
PEAKS = dict(hbm_bw_bytes_per_s=1e12, peak_flops_per_s=1e14)


def trace_workload(name="azure_code", path="azure-llm-2023/AzureLLMInferenceTrace_code.csv", fmt="azure",
                   max_requests=60, **sched):
    spec = workload_spec_from_dict({"name": name, "kind": "trace", "format": fmt, "path": path,
                                    "max_requests": max_requests})
    scheduler = SchedulerSpec(**{"max_num_batched_tokens": 512, "max_num_seqs": 16, "page_size": 16,
                                 "num_kv_pages": 4000, **PEAKS, **sched})
    return build_workload(spec, TINY, scheduler, seed=0)


def test_a_sampled_step_materializes_with_the_scheduler_padding():
    wl = trace_workload(sampling=SamplingSpec("top_n", top_n=3))
    p = wl.points[0]
    assert p.point_id == f"step={p.meta['step']}" and (p.max_num_batched_tokens, p.max_num_seqs) == (512, 16)
    inputs = materialize(p.batch, TINY, max_num_batched_tokens=p.max_num_batched_tokens,
                         max_num_seqs=p.max_num_seqs, seed=0)
    kv = np.asarray(inputs.kv_lens)
    assert kv.shape == (16,) and kv[: p.batch.num_seqs].tolist() == list(p.batch.kv_lens)
    assert np.asarray(inputs.cu_q_lens)[p.batch.num_seqs] == p.batch.num_tokens
    assert np.asarray(inputs.queries).shape == (512, 2, 64)


@pytest.mark.parametrize("pad_to,check", [("exact", lambda p: p.max_num_batched_tokens == p.batch.num_tokens),
                                          ("pow2", lambda p: p.max_num_seqs & (p.max_num_seqs - 1) == 0)])
def test_padding_choices(pad_to, check):
    wl = trace_workload(pad_to=pad_to, sampling=SamplingSpec("every_k", every_k=500))
    assert all(check(p) and p.batch.num_tokens <= p.max_num_batched_tokens for p in wl.points)


def test_trace_points_carry_step_meta_and_time_weights():
    wl = trace_workload(sampling=SamplingSpec("every_k", every_k=100))
    steps = wl.steps
    assert steps["sampled"].sum() == len(wl.points)
    assert sum(p.weight for p in wl.points) == pytest.approx(1.0)
    for p in wl.points[:5]:
        row = steps.loc[p.meta["step"]]
        assert row["num_tokens"] == p.batch.num_tokens and row["max_kv_len"] == p.batch.max_kv_len
        assert p.meta["modelled_step_time_s"] == pytest.approx(row["step_time_s"])
    s = wl.summary
    assert s["requests_completed"] == 60 and s["steps"] == len(steps)
    assert sum(s["seq_share"].values()) == pytest.approx(1.0) and s["kv_len"]["max"] >= s["kv_len"]["p99"]


def test_mooncake_prefix_caching_skips_shared_blocks():
    kw = dict(name="mc", path="mooncake-fast25/conversation_trace.jsonl", fmt="mooncake", max_requests=80,
              max_num_batched_tokens=8192, max_num_seqs=64, page_size=256, num_kv_pages=3000)
    off = trace_workload(**kw, prefix_caching=False).summary
    on = trace_workload(**kw, prefix_caching=True).summary
    assert off["prefix_cache"]["hit_tokens"] == 0 and on["prefix_cache"]["hit_rate"] > 0.02
    assert on["prefill_tokens_computed"] == off["prefill_tokens_computed"] - on["prefix_cache"]["hit_tokens"]


def test_prefix_cache_is_lru_over_leading_blocks():
    cache = PrefixCache(capacity_blocks=3, block_tokens=512)
    cache.insert([1, 2, 3])
    assert cache.lookup([1, 2, 9, 3]) == 2
    cache.touch([1])
    cache.insert([4])  # evicts 2, the least recently used
    assert 2 not in cache and cache.lookup([1]) == 1 and len(cache) == 3
    assert cache.full_blocks(np.array([7, 8, 9]), 1100) == [7, 8]


def test_workload_writes_its_tables(tmp_path):
    wl = trace_workload(sampling=SamplingSpec("top_n", top_n=2))
    names = {p.relative_to(tmp_path).as_posix() for p in wl.write_tables(tmp_path)}
    assert names == {"summary.json", "steps.parquet", "batches/points.parquet", "batches/sample.parquet",
                     "stream/segments.parquet", "stream/decodes.parquet", "stream/chunks.parquet"}
    assert [p.name for p in tmp_path.glob("*.parquet")] == ["steps.parquet"]  # the one table reports chart


def test_trace_workload_needs_scheduler_settings():
    spec = workload_spec_from_dict({"name": "a", "kind": "trace", "format": "azure",
                                    "path": "azure-llm-2023/AzureLLMInferenceTrace_code.csv"})
    with pytest.raises(ValueError, match="needs scheduler settings"):
        build_workload(spec, TINY, None, seed=0)
