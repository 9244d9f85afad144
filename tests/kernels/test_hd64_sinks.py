"""Attention sinks: the reference against upstream's own reference, and the head_dim 64 kernel
(interpret mode) against both, on a gpt-oss-shaped batch (ratio 8 query heads per KV head)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rpa_bench.kernels.reference import reference_attention
from rpa_bench.kernels.registry import get_backend
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.materialize import materialize
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

GPT_OSS_SHARD = ModelSpec(name="gpt-oss-shard", num_q_heads=8, num_kv_heads=1, head_dim=64, dtype="float32",
                          kv_dtype="float32", attention_sinks=True)
BATCH = RaggedBatch.ordered([1, 1, 12, 5], [33, 70, 12, 40], page_size=16)  # decode, prefill, mixed rows


def _valid(x, batch):
    return np.asarray(x)[: batch.num_tokens]


@pytest.fixture(scope="module")
def inputs():
    return materialize(BATCH, GPT_OSS_SHARD, poison=False, seed=3)


def _upstream_reference(backend, inputs, attn):
    """tpu-inference's ref_ragged_paged_attention_hd64 on the kernel's own layout."""
    prepared = backend.build(GPT_OSS_SHARD, attn, BATCH)
    args = prepared.layout(inputs)
    out, _ = backend.module().ref_ragged_paged_attention_hd64(
        *args[:8], args[8], sm_scale=attn.scale(64), sliding_window=attn.sliding_window)
    return out


@pytest.mark.parametrize("attn", [AttentionSpec(), AttentionSpec(sliding_window=20)], ids=["causal", "window"])
def test_reference_sinks_equal_upstreams_reference(inputs, attn):
    backend = get_backend("rpa_v3_hd64")
    ours = reference_attention(inputs, attn).output
    theirs = _upstream_reference(backend, inputs, attn)
    np.testing.assert_allclose(_valid(ours, BATCH), _valid(theirs, BATCH), atol=2e-5, rtol=1e-4)


def test_sinks_change_the_output(inputs):
    without = dataclasses.replace(inputs, attention_sink=None)
    a = _valid(reference_attention(inputs, AttentionSpec()).output, BATCH)
    b = _valid(reference_attention(without, AttentionSpec()).output, BATCH)
    assert np.abs(a - b).max() > 1e-2  # a sink takes softmax mass: the outputs shrink


def test_hd64_kernel_with_sinks_matches_the_reference_in_interpret_mode(inputs):
    backend = get_backend("rpa_v3_hd64", options={"num_kv_pages_per_block": 2, "num_queries_per_block": 8})
    prepared = backend.build(GPT_OSS_SHARD, AttentionSpec(), BATCH, interpret=True)
    out = prepared.finish(prepared.kernel(*prepared.prepare(prepared.layout(inputs)))).output
    ref = reference_attention(inputs, AttentionSpec()).output
    np.testing.assert_allclose(_valid(out, BATCH), _valid(ref, BATCH), atol=2e-5, rtol=1e-4)


def test_kernels_without_sinks_refuse_a_model_with_sinks():
    with pytest.raises(ValueError, match=r"kernel=rpa_v3: model.attention_sinks=true unsupported; allowed: false"):
        get_backend("rpa_v3").validate(dataclasses.replace(GPT_OSS_SHARD, head_dim=128), AttentionSpec(), BATCH)


@pytest.mark.parametrize("seed", [0, 1, pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow),
                                  pytest.param(4, marks=pytest.mark.slow), pytest.param(5, marks=pytest.mark.slow)])
def test_hd64_traffic_model_equals_the_observed_dmas(seed):
    import random

    from rpa_bench.kernels.traffic import hook_status, observe_traffic

    if not hook_status()[0]:
        pytest.skip(hook_status()[1])
    rng = random.Random(seed)
    q = [rng.choice([1, rng.randint(2, 40)]) for _ in range(rng.randint(1, 4))]
    batch = RaggedBatch.ordered(q, [x + rng.randint(0, 90) for x in q], page_size=16)
    model = dataclasses.replace(GPT_OSS_SHARD, dtype="bfloat16", kv_dtype="bfloat16")
    backend = get_backend("rpa_v3_hd64", options={"num_kv_pages_per_block": rng.randint(1, 3),
                                                  "num_queries_per_block": rng.choice([8, 16])})
    attn = rng.choice([AttentionSpec(), AttentionSpec(sliding_window=30)])
    modelled, observed = backend.traffic(model, attn, batch), observe_traffic(backend, model, attn, batch)
    assert modelled.comparable() == observed.comparable(), (batch.q_lens, batch.kv_lens)
