"""Sequences split over the data axis: balanced by roofline time, each part a valid batch."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpa_bench.parallel.partition import (
    DataPartition,
    balance_lpt,
    partition_batch,
    partition_by_count,
    roofline_seq_time_s,
)
from rpa_bench.roofline.specs import get_device_spec
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

LLAMA = ModelSpec("llama3_8b", 32, 8, 128)
TPU7X = get_device_spec("tpu7x")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=40), st.integers(1, 9))
def test_lpt_assigns_each_sequence_once_within_the_list_scheduling_bound(times, parts):
    split = balance_lpt(times, parts)
    assert len(split) == parts
    assert sorted(i for p in split for i in p) == list(range(len(times)))
    assert all(list(p) == sorted(p) for p in split)
    makespan = max(sum(times[i] for i in p) for p in split)
    # any greedy list schedule: makespan <= sum/m + (1 - 1/m) * max
    assert makespan <= sum(times) / parts + (1 - 1 / parts) * max(times) + 1e-9


def test_equal_sequences_spread_evenly_by_count():
    split = balance_lpt([1.0] * 10, 4)
    assert sorted(len(p) for p in split) == [2, 2, 3, 3]


def test_roofline_split_beats_a_count_split_on_a_skewed_mixed_batch():
    # one long prefill chunk and many short decodes: a count split gives one device the
    # prefill *and* half the decodes
    batch = RaggedBatch.ordered([1] * 8 + [2048], [4096] * 8 + [8192], page_size=16)
    times = roofline_seq_time_s(batch, LLAMA, AttentionSpec(), TPU7X)
    balanced = partition_batch(batch, 2, seq_time_s=times)
    by_count = partition_by_count(batch, 2)
    by_count_times = DataPartition(batch, by_count.seq_ids, tuple(times))
    assert balanced.modelled_imbalance < by_count_times.modelled_imbalance
    assert balanced.seq_ids[0] == (8,) or balanced.seq_ids[1] == (8,)  # prefill alone


def test_parts_are_valid_batches_in_kernel_order_with_their_distribution():
    batch = RaggedBatch.ordered([1, 1, 1, 8, 8, 5, 3], [30, 7, 60, 8, 40, 20, 3], page_size=4, chunk_prefill_size=8)
    part = partition_batch(batch, 3, seq_time_s=[kv * q for q, kv in zip(batch.q_lens, batch.kv_lens)])
    subs = part.sub_batches
    assert sum(s.num_seqs for s in subs) == batch.num_seqs
    for p, sub in enumerate(subs):
        assert sub.chunk_prefill_size == 8 and sub.page_size == 4
        ids = part.seq_ids[p]
        assert sub.q_lens == tuple(batch.q_lens[i] for i in ids)
        d, pf, n = sub.distribution
        assert all(q == 1 for q in sub.q_lens[:d]) and all(q == 8 for q in sub.q_lens[d:pf])
        rows = part.token_rows(p)
        assert len(rows) == sub.num_tokens
    assert sum(part.tokens_per_part) == batch.num_tokens
    assert sum(part.pages_per_part) == batch.num_pages


def test_more_devices_than_sequences_leaves_empty_parts():
    batch = RaggedBatch((64,), (64,))
    part = partition_batch(batch, 2, seq_time_s=[1.0])
    assert part.sub_batch(1) is None and part.seqs_per_part == (1, 0)
    assert part.token_rows(1).size == 0
    assert part.modelled_imbalance == pytest.approx(2.0)


def test_roofline_time_grows_with_context_and_decode_is_memory_bound():
    batch = RaggedBatch((1, 1, 1), (1024, 2048, 4096), page_size=16)
    t = roofline_seq_time_s(batch, LLAMA, AttentionSpec(), TPU7X)
    assert t[0] < t[1] < t[2]
    one_device_bw = TPU7X.per_device_spec().hbm_bw_bytes_per_s
    # decode: bytes / one TensorCore's bandwidth (half the chip's 7380 GB/s)
    kv_bytes = 4096 * 2 * 8 * 128 * 2 + 2 * 32 * 128 * 2
    assert t[2] == pytest.approx(kv_bytes / one_device_bw)


@pytest.mark.parametrize("ids,match", [
    (((0,), (0, 1)), "exactly once"),
    (((1, 0),), "ascending"),
    ((), "at least one part"),
])
def test_inconsistent_partitions_are_refused(ids, match):
    with pytest.raises(ValueError, match=match):
        DataPartition(RaggedBatch((1, 1), (5, 6)), ids, (1.0, 1.0))
