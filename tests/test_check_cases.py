"""The named check cases: tiny, ragged, padded alike, faithful to the model's head_dim and ratio."""

from __future__ import annotations

import pytest

from rpa_bench.kernels.cases import CHECK_DTYPES, check_cases, check_model, padded_sizes
from rpa_bench.kernels.checking import QUANTIZED_KV_TOLERANCE, TOLERANCES, tolerance_for
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

LLAMA = ModelSpec("llama3_8b", 32, 8, 128)


@pytest.mark.parametrize(
    "heads,expected",
    [((32, 8), (4, 1)), ((16, 8), (4, 2)), ((8, 8), (2, 2)), ((64, 8), (8, 1)), ((6, 2), (3, 1)), ((1, 1), (1, 1))],
)
def test_check_model_keeps_ratio_and_head_dim_with_few_heads(heads, expected):
    small = check_model(ModelSpec("m", heads[0], heads[1], 96, dtype="float32", kv_dtype="float32"))
    assert (small.num_q_heads, small.num_kv_heads) == expected
    assert small.head_dim == 96 and small.dtype == "float32"


def test_cases_cover_every_scenario_and_dtype():
    cases = check_cases(LLAMA)
    names = {(c.name, c.dtype_label) for c in cases}
    for dtype in CHECK_DTYPES:
        for name in ("decode", "prefill", "mixed", "chunked_prefill", "sliding_window", "soft_cap", "non_causal"):
            assert (name, dtype) in names
    assert ("quantized_kv", "bfloat16/float8_e4m3fn") in names
    assert len(names) == len(cases)


def test_cases_are_tiny_and_share_one_padded_shape():
    cases = check_cases(LLAMA)
    sizes = padded_sizes(16)
    for c in cases:
        assert c.batch.num_seqs <= 4 and c.batch.max_kv_len < 100
        assert c.model.num_q_heads <= 8 and c.model.head_dim == 128
        assert c.max_num_batched_tokens > c.batch.num_tokens  # padding rows exist
        assert c.max_num_seqs > c.batch.num_seqs and c.num_pages > c.batch.num_pages
        assert (c.max_num_batched_tokens, c.max_num_seqs, c.num_pages, c.pages_per_seq) == tuple(sizes.values())


def test_case_batches_have_their_phase():
    by_name = {c.name: c for c in check_cases(LLAMA, dtypes=("float32",))}
    assert by_name["decode"].batch.phase == "decode"
    assert by_name["prefill"].batch.phase == "prefill"
    assert by_name["mixed"].batch.phase == "mixed"
    assert by_name["chunked_prefill"].batch.distribution[1] > by_name["chunked_prefill"].batch.distribution[0]
    assert by_name["sliding_window"].attn.sliding_window < by_name["sliding_window"].batch.max_kv_len
    assert not by_name["non_causal"].attn.causal


def test_quantized_case_uses_scales_and_the_models_8bit_dtype():
    case = check_cases(ModelSpec("q", 8, 2, 64, kv_dtype="int8"))[-1]
    assert case.model.kv_dtype == "int8"
    assert case.attn.k_scale not in (None, 1.0) and case.attn.v_scale not in (None, 1.0)
    assert case.model.num_kv_heads == 2


def test_configured_attention_adds_a_case():
    cases = check_cases(LLAMA, attention=AttentionSpec(soft_cap=30.0))
    configured = [c for c in cases if c.name == "configured"]
    assert len(configured) == len(CHECK_DTYPES) and configured[0].attn.soft_cap == 30.0


@pytest.mark.parametrize(
    "kw,field", [({"dtypes": ("float16",)}, "dtypes"), ({"quantized_kv": "bfloat16"}, "quantized_kv")]
)
def test_bad_case_options_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        check_cases(LLAMA, **kw)


def test_tolerances_by_dtype():
    assert tolerance_for(ModelSpec("a", 2, 1, 8, dtype="float32", kv_dtype="float32")) == TOLERANCES["float32"]
    assert tolerance_for(ModelSpec("b", 2, 1, 8)) == TOLERANCES["bfloat16"]
    assert tolerance_for(ModelSpec("c", 2, 1, 8, kv_dtype="float8_e4m3fn")) == QUANTIZED_KV_TOLERANCE
    assert TOLERANCES["float32"] < TOLERANCES["bfloat16"] < QUANTIZED_KV_TOLERANCE
