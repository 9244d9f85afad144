"""The bytes RPA v3 moves: the analytic model against the real kernel's DMAs (interpret mode).

Hand-computable batches check both against arithmetic written out here; random ragged
batches (decode, prefill, mixed; causal, windowed, non-causal) check the model against the
observation exactly. Every observation runs the real kernel in Pallas TPU interpret mode
with the floating-point work skipped (a few seconds each).
"""

from __future__ import annotations

import random

import pytest
from traffic_cases import (
    assert_model_equals_observation,
    modelled_and_observed,
    random_lens,
)

from rpa_bench.kernels.registry import get_backend
from rpa_bench.kernels.traffic import hook_status
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

pytestmark = pytest.mark.skipif(not hook_status()[0], reason=hook_status()[1])

F32 = ModelSpec(name="t", num_q_heads=8, num_kv_heads=2, head_dim=128, dtype="float32", kv_dtype="float32")
KV_TOK = 4 * 128 * 4  # merged K and V of 2 KV heads, f32: 2048 bytes per token
Q_TOK = 2 * 4 * 128 * 4  # 8 query heads, f32: 4096 bytes per token


def _both(batch, options, attn=AttentionSpec(), model=F32):
    return modelled_and_observed(get_backend("rpa_v3", options=options), model, attn, batch)


def test_one_decode_sequence_reads_its_kv_once():
    batch = RaggedBatch.ordered([1], [40], page_size=16)
    model, observed = _both(batch, {"d_block_sizes": [8, 32, 8, 32]})
    # 39 cached tokens: block 0 holds 32, block 1 the other 7; the new token comes with block 1
    expected = {"kv_cache": 39 * KV_TOK, "new_kv": 1 * KV_TOK, "q": Q_TOK, "output": Q_TOK,
                "kv_cache_write": KV_TOK}
    assert model.comparable() == expected == observed.comparable()
    assert model.dmas_by_operand["kv_cache"] == 2 * 2 == observed.dmas_by_operand["kv_cache"]  # 2 blocks x 2 pages


def test_a_prefill_spanning_three_query_blocks_rereads_its_kv_per_block():
    batch = RaggedBatch.ordered([24], [24], page_size=16)  # a first chunk: every token new
    model, observed = _both(batch, {"m_block_sizes": [8, 32, 8, 32]})
    # causal: query block i needs KV tokens [0, 8(i+1)), all in KV block 0 (32 tokens), which is
    # fetched whole (its 24 tokens) for each of the 3 query blocks: the KV is read 3 times
    expected = {"new_kv": 3 * 24 * KV_TOK, "q": 24 * Q_TOK, "output": 24 * Q_TOK,
                "kv_cache_write": 24 * KV_TOK}
    assert model.comparable() == expected == observed.comparable()
    assert model.iterations == 3


def test_a_prefill_of_three_blocks_without_causal_mask_reads_the_kv_three_times():
    batch = RaggedBatch.ordered([24], [24], page_size=16)
    model, observed = _both(batch, {"m_block_sizes": [8, 32, 8, 32]}, AttentionSpec(causal=False))
    assert model.comparable()["new_kv"] == 3 * 24 * KV_TOK == observed.comparable()["new_kv"]


def test_a_sequence_shorter_than_one_kv_block_fetches_only_its_tokens():
    batch = RaggedBatch.ordered([1], [5], page_size=16)
    model, observed = _both(batch, {"d_block_sizes": [8, 64, 8, 64]})
    expected = {"kv_cache": 4 * KV_TOK, "new_kv": KV_TOK, "q": Q_TOK, "output": Q_TOK, "kv_cache_write": KV_TOK}
    assert model.comparable() == expected == observed.comparable()
    # the block's 4 page DMAs are issued even where they are empty (3 of them here)
    assert model.dmas_by_operand["kv_cache"] == 4 == observed.dmas_by_operand["kv_cache"]


def _random_case(kind: str, rng: random.Random):
    page = 16
    bq, bkv = rng.choice([8, 16, 32]), rng.choice([16, 32, 48, 64])
    sizes = [bq, bkv, bq, bkv]
    q, kv, chunk = random_lens(kind, rng)
    batch = RaggedBatch.ordered(q, kv, page_size=page, chunk_prefill_size=chunk)
    attn = rng.choice([AttentionSpec(), AttentionSpec(sliding_window=rng.randint(8, 70)),
                       AttentionSpec(causal=False)])
    model = rng.choice([F32, ModelSpec(name="b", num_q_heads=4, num_kv_heads=1, head_dim=128, dtype="bfloat16",
                                       kv_dtype="bfloat16")])
    return batch, {"d_block_sizes": sizes, "p_block_sizes": sizes, "m_block_sizes": sizes}, attn, model


@pytest.mark.parametrize("kind", ["decode", "prefill", "mixed"])
def test_model_equals_observation_on_a_random_ragged_batch(kind):
    batch, options, attn, model = _random_case(kind, random.Random(f"{kind}-smoke"))
    modelled, observed = _both(batch, options, attn, model)
    assert modelled.comparable() == observed.comparable(), (batch.q_lens, batch.kv_lens, options, attn)


@pytest.mark.slow  # 60 interpret-mode runs (~4 s each)
@pytest.mark.parametrize("kind", ["decode", "prefill", "mixed"])
@pytest.mark.parametrize("seed", range(20))
def test_model_equals_observation_on_twenty_random_batches_per_kind(kind, seed):
    batch, options, attn, model = _random_case(kind, random.Random(f"{kind}-{seed}"))
    modelled, observed = _both(batch, options, attn, model)
    assert_model_equals_observation(modelled, observed, batch.q_lens, batch.kv_lens, options, attn)


def test_the_modelled_time_ranks_fewer_rereads_first():
    """The tuner's TPU-free ranking: the same mixed batch with larger query blocks re-reads its
    KV fewer times, so it models faster (bytes dominate at these shapes)."""
    from rpa_bench.roofline.specs import listed_device_spec
    from rpa_bench.roofline.traffic import modelled_time_s

    model = ModelSpec(name="l", num_q_heads=32, num_kv_heads=8, head_dim=128)
    batch = RaggedBatch.ordered([256], [4096], page_size=256)
    spec = listed_device_spec("tpu7x")
    times = {}
    for bq in (16, 128):
        t = get_backend("rpa_v3", options={"m_block_sizes": [bq, 1024, bq, 512]}).traffic(model, AttentionSpec(), batch)
        times[bq] = modelled_time_s(t.hbm_bytes, 10**9, spec, steps=t.iterations, step_s=0.35e-6)
    assert times[128] < times[16]
