"""Property tests of the analytic cost (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rpa_bench.roofline.cost import executed_pairs, seq_cost_arrays, useful_pairs
from rpa_bench.workloads.model import ModelSpec

MODEL = ModelSpec("m", num_q_heads=8, num_kv_heads=2, head_dim=64)
lens = st.integers(min_value=1, max_value=5000)
windows = st.one_of(st.none(), st.integers(min_value=1, max_value=6000))
blocks = st.one_of(st.none(), st.integers(min_value=1, max_value=2048))
SETTINGS = settings(max_examples=150, deadline=None)


def _cost(q, kv, **kw):
    hbm, flops = seq_cost_arrays([q], [kv], MODEL, **kw)
    return int(hbm[0]), int(flops[0])


@SETTINGS
@given(q=lens, ctx=lens, extra=lens)
def test_bytes_grow_linearly_with_kv_len(q, ctx, extra):
    b0, _ = _cost(q, q + ctx)
    b1, _ = _cost(q, q + ctx + extra)
    b2, _ = _cost(q, q + ctx + 2 * extra)
    assert b1 - b0 == b2 - b1 == extra * 2 * MODEL.num_kv_heads * MODEL.head_dim * MODEL.kv_dtype_bytes


@SETTINGS
@given(s=st.integers(min_value=1, max_value=20000))
def test_fresh_prefill_flops_quadratic_in_s(s):
    _, nc = _cost(s, s, causal=False)
    _, nc2 = _cost(2 * s, 2 * s, causal=False)
    assert nc2 == 4 * nc
    _, useful = _cost(s, s, count="useful")
    assert useful == 2 * s * (s + 1) * MODEL.num_q_heads * MODEL.head_dim


@SETTINGS
@given(q=lens, ctx=st.integers(min_value=0, max_value=5000), ckv=blocks, w=windows)
def test_executed_at_least_useful_at_most_noncausal(q, ctx, ckv, w):
    kv = q + ctx
    ex = int(executed_pairs([q], [kv], ckv=ckv, sliding_window=w)[0])
    us = int(useful_pairs([q], [kv], sliding_window=w)[0])
    assert us <= ex <= q * kv
    if ckv is None or ckv == 1:
        assert ex == us
    if q == 1 and w is None:
        assert ex == us == kv  # decode wastes nothing


@SETTINGS
@given(q=lens, ctx=st.integers(min_value=0, max_value=5000), w=st.integers(min_value=1, max_value=6000),
       ckv=blocks)
def test_sliding_window_clips_bytes_and_flops(q, ctx, w, ckv):
    kv = q + ctx
    b_full, f_full = _cost(q, kv, ckv=ckv)
    b_win, f_win = _cost(q, kv, ckv=ckv, sliding_window=w)
    b_wider, f_wider = _cost(q, kv, ckv=ckv, sliding_window=w + 1)
    assert b_win <= b_wider <= b_full and f_win <= f_wider <= f_full
    u_win = int(useful_pairs([q], [kv], sliding_window=w)[0])
    assert u_win <= q * w  # no query sees more than w keys
    if w >= kv:
        assert (b_win, f_win) == (b_full, f_full)


@SETTINGS
@given(q=lens, ctx=st.integers(min_value=0, max_value=5000), page=st.sampled_from([1, 16, 64, 256]))
def test_page_granularity_never_below_token_granularity(q, ctx, page):
    kv = q + ctx
    tok, _ = _cost(q, kv)
    pg, _ = _cost(q, kv, granularity="page", page_size=page)
    per_tok = 2 * MODEL.num_kv_heads * MODEL.head_dim * MODEL.kv_dtype_bytes
    assert tok <= pg < tok + page * per_tok
