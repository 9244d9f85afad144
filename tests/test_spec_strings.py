"""Batch-spec strings: the documented examples, round trips, and refused strings."""

import pytest
from hypothesis import given, settings, strategies as st

from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.spec import format_batch_spec, parse_batch_spec


@pytest.mark.parametrize(
    "text,q_lens,kv_lens",
    [
        ("128q1s32k", (1,) * 128, (32768,) * 128),
        ("q8k", (8192,), (8192,)),
        ("2q2k_32q1s1k", (1,) * 32 + (2048,) * 2, (1024,) * 32 + (2048,) * 2),
        ("q5s9_3q1s17", (1, 1, 1, 5), (17, 17, 17, 9)),
    ],
)
def test_documented_examples_parse(text, q_lens, kv_lens):
    b = parse_batch_spec(text, page_size=256)
    assert b.q_lens == q_lens and b.kv_lens == kv_lens and b.page_size == 256


def test_canonical_form_groups_runs_and_uses_k():
    assert format_batch_spec(parse_batch_spec("1q8192s8192")) == "q8k"
    assert format_batch_spec(parse_batch_spec("2q2k_32q1s1k")) == "32q1s1k_2q2k"
    assert format_batch_spec(RaggedBatch((1, 1, 3), (1000, 1000, 1500))) == "2q1s1000_q3s1500"


seqs = st.lists(
    st.tuples(st.integers(1, 3000), st.integers(0, 70000)).map(lambda t: (t[0], t[0] + t[1])),
    min_size=1, max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(seqs=seqs, chunk=st.sampled_from([None, 16, 512]))
def test_round_trip_batch_to_string_to_batch(seqs, chunk):
    b = RaggedBatch.ordered([q for q, _ in seqs], [kv for _, kv in seqs], page_size=16, chunk_prefill_size=chunk)
    text = format_batch_spec(b)
    again = parse_batch_spec(text, page_size=16, chunk_prefill_size=chunk)
    assert again == b
    assert format_batch_spec(again) == text


@pytest.mark.parametrize(
    "text,needle",
    [("", "empty"), ("q", "does not match"), ("8x1", "does not match"), ("q4s2", "kv_len=2 < q_len=4"),
     ("q0", "q_len=0"), ("0q4", "count=0"), ("q1__q2", "does not match"), ("Q1", "does not match")],
)
def test_bad_strings_are_refused_with_the_group_named(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_batch_spec(text)
