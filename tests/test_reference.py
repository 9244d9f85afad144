"""The pure-jnp reference against a plain numpy loop (per sequence, per token, per head)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpa_bench.kernels.base import check_capabilities
from rpa_bench.kernels.reference import ReferenceBackend, reference_attention
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.materialize import materialize
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

# fixed padded shape: every batch below fits, so cases of one model/attention share a compile
T_PAD, S_PAD, PAGES, PAGE = 96, 5, 56, 8
PPS = 13  # ceil(99 / 8)


def loop_attention(inputs, attn: AttentionSpec) -> np.ndarray:
    """Independent oracle: float64, one (sequence, token, head) at a time."""
    b, m = inputs.batch, inputs.model

    def f64(x):
        return np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)

    q, new_k, new_v = f64(inputs.queries), f64(inputs.new_keys), f64(inputs.new_values)
    k_cache, v_cache = f64(inputs.k_cache), f64(inputs.v_cache)
    table = np.asarray(inputs.page_indices)
    group = m.num_q_heads // m.num_kv_heads
    sm_scale = attn.sm_scale if attn.sm_scale is not None else 1.0 / np.sqrt(m.head_dim)
    k_scale = 1.0 if attn.k_scale is None else attn.k_scale
    v_scale = 1.0 if attn.v_scale is None else attn.v_scale
    out = np.zeros((b.num_tokens, m.num_q_heads, m.head_dim))
    row = 0
    for s, (q_len, kv_len) in enumerate(zip(b.q_lens, b.kv_lens)):
        ctx = kv_len - q_len
        keys, values = [], []
        for pos in range(kv_len):
            if pos < ctx:
                page, slot = table[s, pos // b.page_size], pos % b.page_size
                keys.append(k_cache[page, slot])
                values.append(v_cache[page, slot])
            else:
                keys.append(new_k[row + pos - ctx])
                values.append(new_v[row + pos - ctx])
        keys, values = np.stack(keys), np.stack(values)
        for i in range(q_len):
            pos = ctx + i
            for h in range(m.num_q_heads):
                logits = []
                for j in range(kv_len):
                    visible = (not attn.causal or j <= pos) and (
                        attn.sliding_window is None or j > pos - attn.sliding_window
                    )
                    if not visible:
                        continue
                    x = float(q[row + i, h] @ keys[j, h // group]) * sm_scale * k_scale
                    if attn.soft_cap is not None:
                        x = attn.soft_cap * np.tanh(x / attn.soft_cap)
                    logits.append((x, j))
                xs = np.array([x for x, _ in logits])
                w = np.exp(xs - xs.max())
                w /= w.sum()
                out[row + i, h] = sum(wk * values[j, h // group] for wk, (_, j) in zip(w, logits)) * v_scale
        row += q_len
    return out


def assert_matches_loop(inputs, attn, result):
    got = np.asarray(result.output.astype(jnp.float32))
    want = loop_attention(inputs, attn)
    n = inputs.batch.num_tokens
    # the only rounding beyond f32 is the final cast of the output to model.dtype
    rtol = 2.0**-8 if inputs.model.dtype == "bfloat16" else 1e-5
    np.testing.assert_allclose(got[:n], want, rtol=rtol, atol=2e-5)
    assert np.all(got[n:] == 0), "padding rows must be zero"


def make(q_lens, kv_lens, *, heads=(4, 2), head_dim=16, dtype="float32", kv_dtype=None, chunk=None, seed=0):
    batch = RaggedBatch.ordered(q_lens, kv_lens, page_size=PAGE, chunk_prefill_size=chunk)
    model = ModelSpec("tiny", heads[0], heads[1], head_dim, dtype=dtype, kv_dtype=kv_dtype or dtype)
    return materialize(batch, model, max_num_batched_tokens=T_PAD, max_num_seqs=S_PAD, num_pages=PAGES,
                       pages_per_seq=PPS, seed=seed)


SCENARIOS = {
    "decode": dict(q_lens=[1, 1, 1, 1], kv_lens=[9, 33, 64, 1]),
    "prefill": dict(q_lens=[17, 30], kv_lens=[17, 50]),
    "mixed": dict(q_lens=[1, 1, 12, 25], kv_lens=[40, 8, 12, 70]),
    "chunked_prefill": dict(q_lens=[1, 8, 8, 5], kv_lens=[21, 8, 45, 61], chunk=8),
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_batch_shapes_match_loop(scenario, dtype):
    x = make(**SCENARIOS[scenario], dtype=dtype)
    attn = AttentionSpec()
    assert_matches_loop(x, attn, reference_attention(x, attn))


@pytest.mark.parametrize(
    "attn",
    [
        AttentionSpec(sliding_window=7),
        AttentionSpec(soft_cap=1.5),
        AttentionSpec(causal=False),
        AttentionSpec(causal=False, sliding_window=5),
        AttentionSpec(sm_scale=0.3, sliding_window=1, soft_cap=4.0),
    ],
    ids=["sliding_window", "soft_cap", "non_causal", "non_causal_window", "scale_window1_cap"],
)
def test_attention_features_match_loop(attn):
    x = make(**SCENARIOS["mixed"])
    assert_matches_loop(x, attn, reference_attention(x, attn))


@pytest.mark.parametrize("heads", [(2, 2), (4, 1)], ids=["mha", "gqa4"])  # (4, 2) is everywhere else
def test_gqa_ratios_match_loop(heads):
    x = make(**SCENARIOS["mixed"], heads=heads)
    assert_matches_loop(x, AttentionSpec(), reference_attention(x, AttentionSpec()))


@pytest.mark.parametrize(
    "kv_dtype,k_scale,v_scale",
    [("float8_e4m3fn", 0.5, 1.5), ("int8", 1 / 32, 1 / 40)],
)
def test_quantized_kv_scales_honoured(kv_dtype, k_scale, v_scale):
    x = make(**SCENARIOS["mixed"], dtype="bfloat16", kv_dtype=kv_dtype)
    attn = AttentionSpec(k_scale=k_scale, v_scale=v_scale)  # the loop applies them too
    assert_matches_loop(x, attn, reference_attention(x, attn))


def test_tiny_working_set_takes_many_groups_and_blocks_same_result():
    x = make(**SCENARIOS["chunked_prefill"])
    attn = AttentionSpec(sliding_window=20)
    big = reference_attention(x, attn)
    small = reference_attention(x, attn, block_bytes=1)  # one tile per group, one page per step
    np.testing.assert_allclose(np.asarray(small.output), np.asarray(big.output), rtol=1e-6, atol=1e-6)


def test_kv_update_writes_new_tokens_and_nothing_else():
    x = make(**SCENARIOS["mixed"], seed=3)
    r = reference_attention(x, AttentionSpec())
    before, after = np.asarray(x.k_cache), np.asarray(r.k_cache)
    new_k, table = np.asarray(x.new_keys), np.asarray(x.page_indices)
    expected = before.copy()
    row = 0
    for s, (q_len, kv_len) in enumerate(zip(x.batch.q_lens, x.batch.kv_lens)):
        for i in range(q_len):
            pos = kv_len - q_len + i
            expected[table[s, pos // PAGE], pos % PAGE] = new_k[row + i]
        row += q_len
    np.testing.assert_array_equal(after, expected)  # NaN == NaN here: untouched poison stays
    assert np.isnan(after).any(), "unused slots must stay poisoned"


def test_nan_poisoned_padding_does_not_leak():
    x = make(**SCENARIOS["mixed"], dtype="bfloat16")
    assert np.isnan(np.asarray(x.queries[x.batch.num_tokens:], np.float32)).all()
    out = np.asarray(reference_attention(x, AttentionSpec(causal=False)).output, np.float32)
    assert np.isfinite(out).all()


def test_backend_pieces_equal_plain_function():
    x = make(**SCENARIOS["mixed"])
    attn = AttentionSpec(soft_cap=2.0)
    backend = ReferenceBackend()
    call = backend.build(x.model, attn, x.batch, interpret=True)
    got = call.finish(call.kernel(*call.prepare(x)))
    want = reference_attention(x, attn)
    for a, b in ((got.output, want.output), (got.k_cache, want.k_cache), (got.v_cache, want.v_cache)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_backend_supports_everything_the_model_allows():
    model = ModelSpec("odd", 6, 3, 96, dtype="bfloat16", kv_dtype="int8")
    attn = AttentionSpec(causal=False, sliding_window=3, soft_cap=5.0, k_scale=0.1, v_scale=0.1)
    batch = RaggedBatch.ordered([1, 4], [5, 9], page_size=3, chunk_prefill_size=4)
    check_capabilities("reference", ReferenceBackend.capabilities, model, attn, batch)
    assert ReferenceBackend().availability()[0]
    assert ReferenceBackend.capabilities.updates_kv_cache


def test_unknown_backend_option_names_field():
    with pytest.raises(ValueError, match="block_bytes"):
        ReferenceBackend(options={"bq": 8})


@st.composite
def ragged_batches(draw):
    n = draw(st.integers(1, 4))
    q_lens, kv_lens = [], []
    for _ in range(n):
        kv = draw(st.integers(1, 99))
        longest = min(kv, T_PAD // 4)
        q = draw(st.sampled_from([1, longest, draw(st.integers(1, longest))]))
        q_lens.append(q)
        kv_lens.append(kv)
    return q_lens, kv_lens


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lens=ragged_batches(), seed=st.integers(0, 2**16))
def test_random_ragged_batches_match_loop(lens, seed):
    q_lens, kv_lens = lens
    x = make(q_lens, kv_lens, seed=seed)
    attn = AttentionSpec(soft_cap=3.0)
    assert_matches_loop(x, attn, reference_attention(x, attn))


def test_output_lives_on_input_device():
    x = make(**SCENARIOS["decode"])
    out = reference_attention(x, AttentionSpec()).output
    assert out.devices() == {jax.devices()[0]}
