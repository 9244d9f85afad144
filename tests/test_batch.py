import pytest

from rpa_bench.workloads.batch import RaggedBatch


def test_ordered_sorts_into_kernel_order_and_distribution():
    b = RaggedBatch.ordered([5, 1, 8, 1], [20, 7, 8, 3], page_size=4, chunk_prefill_size=8)
    assert b.q_lens == (1, 1, 8, 5)
    assert b.distribution == (2, 3, 4)
    assert b.phase == "mixed"
    assert b.pages_per_seq == (2, 1, 2, 5)


def test_unordered_batch_refused():
    with pytest.raises(ValueError, match="ordered"):
        RaggedBatch((4, 1), (4, 9))


@pytest.mark.parametrize("q,kv,field", [((0,), (3,), "q_lens"), ((4,), (3,), "kv_lens")])
def test_bad_lengths_name_field(q, kv, field):
    with pytest.raises(ValueError, match=field):
        RaggedBatch(q, kv)


def test_hash_is_stable_and_shape_sensitive():
    a = RaggedBatch((1, 1), (10, 20))
    assert a.content_hash() == RaggedBatch((1, 1), (10, 20)).content_hash()
    assert a.content_hash() != RaggedBatch((1, 1), (10, 21)).content_hash()
