"""The bytes the older RPA kernel (tpu-inference v2, JAX's) moves: model against observation.

Its queries and outputs move by BlockSpec pipelining (the interpreter's per-grid-step block
copies), its KV by explicit page DMAs; both are counted. Hand batches spell the arithmetic
out; random ragged batches check model == observation exactly (20 per kind and kernel, slow).
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
KV_TOK = 4 * 128 * 4  # K and V of 2 KV heads, f32: 2048 bytes per token
Q_TOK = 8 * 128 * 4  # 8 query heads, f32: 4096 bytes per token
KERNELS = ("rpa_v2", "jax_rpa")


def _both(kernel, batch, options, attn=AttentionSpec(), model=F32):
    return modelled_and_observed(get_backend(kernel, options=options), model, attn, batch)


@pytest.mark.parametrize("kernel", KERNELS)
def test_one_decode_sequence_reads_whole_kv_blocks(kernel):
    batch = RaggedBatch.ordered([1], [40], page_size=16)
    model, observed = _both(kernel, batch, {"num_kv_pages_per_block": 2, "num_queries_per_block": 8})
    # 40 tokens in 2 blocks of 2 pages: 4 whole pages (64 tokens; the 4th is past the end,
    # clamped to the sequence's first page and fetched all the same); the cache is not written
    expected = {"kv_cache": 64 * KV_TOK, "q": Q_TOK, "output": Q_TOK}
    assert model.comparable() == expected == observed.comparable()
    assert model.dmas_by_operand["kv_cache"] == 4 == observed.dmas_by_operand["kv_cache"]


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_prefill_spanning_three_query_blocks_reads_its_kv_three_times(kernel):
    batch = RaggedBatch.ordered([24], [24], page_size=16)
    model, observed = _both(kernel, batch, {"num_kv_pages_per_block": 2, "num_queries_per_block": 8})
    # every query block fetches every KV block (no causal skip): 3 x one 32-token block
    expected = {"kv_cache": 3 * 32 * KV_TOK, "q": 24 * Q_TOK, "output": 24 * Q_TOK}
    assert model.comparable() == expected == observed.comparable()
    assert model.iterations == 3


def test_a_sequence_shorter_than_one_kv_block_fetches_the_whole_block():
    batch = RaggedBatch.ordered([1], [5], page_size=16)
    model, observed = _both("rpa_v2", batch, {"num_kv_pages_per_block": 4, "num_queries_per_block": 8})
    # pages_per_seq is 1, so the block is clamped to 1 page: 16 tokens for 5
    assert model.comparable() == {"kv_cache": 16 * KV_TOK, "q": Q_TOK, "output": Q_TOK} == observed.comparable()


def _random_case(kind: str, rng: random.Random):
    page = 16
    q, kv, _ = random_lens(kind, rng)  # fixed-size chunks run as ordinary sequences here
    batch = RaggedBatch.ordered(q, kv, page_size=page)
    options = {"num_kv_pages_per_block": rng.randint(1, 4), "num_queries_per_block": rng.choice([8, 16, 32])}
    attn = rng.choice([AttentionSpec(), AttentionSpec(sliding_window=rng.randint(8, 70))])
    model = rng.choice([F32,
                        ModelSpec(name="b", num_q_heads=4, num_kv_heads=1, head_dim=128, dtype="bfloat16",
                                  kv_dtype="bfloat16"),
                        # two head blocks: the grid walks the sequences once per head block
                        ModelSpec(name="h", num_q_heads=32, num_kv_heads=8, head_dim=128, dtype="float32",
                                  kv_dtype="float32")])
    return batch, options, attn, model


def _agree(kernel, kind, seed):
    batch, options, attn, model = _random_case(kind, random.Random(f"{kind}-{seed}"))
    modelled, observed = _both(kernel, batch, options, attn, model)
    assert_model_equals_observation(modelled, observed, batch.q_lens, batch.kv_lens, options, attn, model.name)


@pytest.mark.parametrize("kind", ["decode", "prefill", "mixed"])
def test_model_equals_observation_on_a_random_ragged_batch(kind):
    _agree("rpa_v2", kind, "smoke")


@pytest.mark.slow  # 120 interpret-mode runs (~1 s each)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", ["decode", "prefill", "mixed"])
@pytest.mark.parametrize("seed", range(20))
def test_model_equals_observation_on_twenty_random_batches_per_kind(kernel, kind, seed):
    _agree(kernel, kind, seed)
