"""Step-time model: aggregates match the roofline cost of the batch; arrays equal scalars to the bit."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rpa_bench.roofline.cost import batch_cost
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import ModelSpec
from rpa_bench.workloads.steptime import causal_pairs, step_time_model

MODEL = ModelSpec("m", 32, 8, 128, num_layers=32, model_weight_bytes=16 * 10**9, model_flops_per_token=16 * 10**9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 600), st.integers(0, 5000)), min_size=1, max_size=20))
def test_step_bytes_and_flops_are_layers_times_the_kernel_cost_plus_the_model(seqs):
    q = [a for a, _ in seqs]
    kv = [a + b for a, b in seqs]
    batch = RaggedBatch.ordered(q, kv, page_size=16)
    cost = step_time_model(7.38e12, 2.307e15, 0.0, MODEL)
    kernel = batch_cost(batch, MODEL, causal=True, count="useful")
    pairs = sum(causal_pairs(a, b) for a, b in zip(q, kv))
    assert cost.hbm_bytes(sum(q), sum(kv)) == MODEL.model_weight_bytes + 32 * kernel.hbm_bytes
    assert cost.flops(sum(q), pairs) == MODEL.model_flops_per_token * sum(q) + 32 * kernel.flops_causal_useful


def test_decode_step_is_weight_and_kv_bandwidth_bound_on_tpu7x():
    cost = step_time_model(7.38e12, 2.307e15, 3e-4, MODEL)
    # 128 decodes at 8K context: 16 GB of weights + 32 layers x 128 x 8193 x 4 KiB of K/V
    expected = (16e9 + 32 * (128 * 8193 * 2 * 8 * 128 * 2 + 128 * 2 * 32 * 128 * 2)) / 7.38e12 + 3e-4
    assert cost.scalar_step_time_s(128, 128 * 8193, 128 * 8193) == pytest.approx(expected, rel=1e-12)


def test_a_long_prefill_step_is_compute_bound():
    cost = step_time_model(7.38e12, 2.307e15, 0.0, MODEL)
    t = cost.scalar_step_time_s(8192, 8192, causal_pairs(8192, 8192))
    assert t == pytest.approx(cost.flops(8192, causal_pairs(8192, 8192)) / 2.307e15)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 256), st.integers(0, 10**7), st.integers(1, 3000), st.sampled_from([1e15, 1e12, 1e10]))
def test_array_and_scalar_step_times_are_bit_identical(n, s0, k, peak):
    cost = step_time_model(1e12, peak, 3e-4, MODEL)
    sums = s0 + n * np.arange(k, dtype=np.int64)
    arr = cost.step_time_s(n, sums, sums)
    assert all(a == cost.scalar_step_time_s(n, int(s), int(s)) for a, s in zip(arr[:50], sums[:50]))
    assert arr[-1] == cost.scalar_step_time_s(n, int(sums[-1]), int(sums[-1]))


def test_bad_peaks_are_refused():
    with pytest.raises(ValueError, match="hbm_bw_bytes_per_s"):
        step_time_model(0, 1e12, 0.0, MODEL)
    with pytest.raises(ValueError, match="overhead_s"):
        step_time_model(1e12, 1e12, -1.0, MODEL)
