"""Analytic cost: hand-computed cases and the paper's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rpa_bench.roofline.cost import (
    batch_cost,
    cached_tokens_read,
    executed_pairs,
    roofline_time_s,
    seq_cost_arrays,
    useful_pairs,
)
from rpa_bench.roofline.specs import get_device_spec
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import ModelSpec

LLAMA = ModelSpec("llama3_8b", num_q_heads=32, num_kv_heads=8, head_dim=128)


def _brute_pairs(q: int, kv: int, ckv: int | None, w: int | None) -> tuple[int, int]:
    """Per-token loop: (executed, useful) causal pairs."""
    executed = useful = 0
    for i in range(q):
        p = kv - q + i
        first = 0 if w is None else max(0, p - w + 1)
        useful += p + 1 - first
        c = ckv or 1
        executed += min(kv, math.ceil((p + 1) / c) * c) - c * (first // c)
    return executed, useful


@pytest.mark.parametrize("context", [512, 1024, 8192, 32768])
def test_decode_bytes_equal_paper_formula(context):
    n, d, h_q, h_kv, b = 128, 128, 32, 8, 2
    batch = RaggedBatch((1,) * n, (context + 1,) * n, page_size=256)
    cost = batch_cost(batch, LLAMA)
    assert cost.hbm_bytes == n * d * ((context + 1) * 2 * h_kv + 2 * h_q) * b
    assert cost.phase == "decode"
    assert cost.flops_causal_executed == cost.flops_causal_useful == n * 4 * (context + 1) * h_q * d


@pytest.mark.parametrize("s", [512, 1024, 4096, 32768])
def test_fresh_prefill_flops_equal_paper_formulas(s):
    h, d = 32, 128
    batch = RaggedBatch((s,), (s,), page_size=256)
    causal = batch_cost(batch, LLAMA, causal=True, ckv=1024)
    ckv = min(1024, s)
    assert causal.flops_noncausal == 4 * s * s * h * d
    assert causal.flops_causal_executed == 2 * s * (s + ckv) * h * d
    assert causal.flops_causal_useful == 2 * s * (s + 1) * h * d
    assert causal.flops == causal.flops_causal_executed
    useful = batch_cost(batch, LLAMA, causal=True, ckv=1024, count="useful")
    assert useful.flops == useful.flops_causal_useful
    assert batch_cost(batch, LLAMA, causal=False).flops == 4 * s * s * h * d


def test_mixed_batch_hand_computed():
    # one decode (kv 10), one chunk of 4 new tokens on 6 cached (kv 10), tiny model
    model = ModelSpec("tiny", num_q_heads=2, num_kv_heads=1, head_dim=4, dtype="float32", kv_dtype="bfloat16")
    batch = RaggedBatch((1, 4), (10, 10), page_size=4)
    cost = batch_cost(batch, model)
    q_tok, kv_tok = 2 * 4 * 4, 2 * 1 * 4 * 2  # 32 B per query token, 16 B per K+V token
    assert cost.q_read_bytes == cost.out_write_bytes == 5 * q_tok
    assert cost.kv_read_bytes == (9 + 6) * kv_tok
    assert cost.kv_write_bytes == 5 * kv_tok
    assert cost.hbm_bytes == 10 * q_tok + 20 * kv_tok
    # pages touched: 3 + 3; kv_lens 2, cu_q_lens 3, distribution 3 (int32)
    assert cost.metadata_bytes == 4 * (6 + 2 + 3 + 3)
    # useful pairs: decode 10; chunk queries at 6..9 see 7+8+9+10 = 34
    assert cost.flops_causal_useful == (10 + 34) * 4 * 2 * 4
    assert cost.flops_noncausal == (10 + 40) * 4 * 2 * 4
    assert cost.phase == "mixed"
    assert cost.arithmetic_intensity == pytest.approx(cost.flops / cost.hbm_bytes)


def test_sliding_window_decode_reads_window_only():
    batch = RaggedBatch((1,), (1000,), page_size=16)
    cost = batch_cost(batch, LLAMA, sliding_window=128)
    kv_tok = 2 * 8 * 128 * 2
    assert cost.kv_read_bytes == 127 * kv_tok
    assert cost.flops_causal_useful == 128 * 4 * 32 * 128


def test_page_granularity_rounds_cached_range_to_pages():
    # cached range [0, 100) with page 16 -> 7 pages; window 30 on kv 101 -> [71, 100) -> pages 4..6
    assert cached_tokens_read([1], [101], granularity="page", page_size=16)[0] == 7 * 16
    assert cached_tokens_read([1], [101], sliding_window=30, granularity="page", page_size=16)[0] == 3 * 16
    assert cached_tokens_read([5], [5], granularity="page", page_size=16)[0] == 0


@pytest.mark.parametrize("ckv", [None, 1, 2, 3, 8])
@pytest.mark.parametrize("w", [None, 1, 4, 13])
def test_closed_forms_match_per_token_loop(ckv, w):
    qs, kvs = np.meshgrid(np.arange(1, 14), np.arange(1, 30))
    keep = kvs >= qs
    q, kv = qs[keep], kvs[keep]
    brute = np.array([_brute_pairs(int(a), int(b), ckv, w) for a, b in zip(q, kv)])
    np.testing.assert_array_equal(executed_pairs(q, kv, ckv=ckv, sliding_window=w), brute[:, 0])
    np.testing.assert_array_equal(useful_pairs(q, kv, sliding_window=w), brute[:, 1])


def test_seq_cost_arrays_sum_to_batch_cost():
    q, kv = [1, 1, 300, 17], [50, 4097, 300, 2000]
    batch = RaggedBatch(q, kv, page_size=64)
    for causal, count, w in [(True, "executed", None), (True, "useful", 100), (False, "executed", None)]:
        hbm, flops = seq_cost_arrays(q, kv, LLAMA, causal=causal, count=count, ckv=256, sliding_window=w)
        cost = batch_cost(batch, LLAMA, causal=causal, count=count, ckv=256, sliding_window=w)
        assert int(hbm.sum()) == cost.hbm_bytes
        assert int(flops.sum()) == cost.flops


def test_roofline_time_on_arrays_is_max_of_memory_and_compute():
    dev = get_device_spec("tpu7x")
    t = roofline_time_s(np.array([7.38e9, 0.0]), np.array([0.0, 2.307e15]), dev)
    np.testing.assert_allclose(t, [1e-3, 1.0])
    assert roofline_time_s(0.0, 2.307e15, dev, max_mxu_utilization=0.5) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"count": "all"}, "count"), ({"granularity": "byte"}, "granularity"), ({"ckv": 0}, "ckv"),
     ({"sliding_window": 8, "causal": False}, "sliding_window")],
)
def test_bad_knobs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        batch_cost(RaggedBatch((1,), (8,)), LLAMA, **kwargs)
