"""tpu-inference's context-parallel RPA v3 run without a context-parallel group.

Its block sizes are its own heuristic's (which shrinks prefetch blocks for head_dim > 128,
v3's does not), its traffic is v3's block iteration (the model equals the real kernel's
DMAs), and it agrees with the reference in interpret mode.
"""

from __future__ import annotations

import random

import pytest
from test_traffic import _random_case
from traffic_cases import assert_model_equals_observation, modelled_and_observed

from rpa_bench.kernels.cases import check_cases
from rpa_bench.kernels.checking import check_backend
from rpa_bench.kernels.registry import get_backend, tuning
from rpa_bench.kernels.traffic import hook_status
from rpa_bench.pipeline import tune_space as tn
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import ModelSpec

HD256 = ModelSpec(name="t", num_q_heads=32, num_kv_heads=8, head_dim=256, dtype="bfloat16", kv_dtype="bfloat16")


def test_its_block_sizes_are_its_own_heuristics_for_the_target_generation():
    batch = RaggedBatch.ordered([1] * 8, [8192] * 8, page_size=64)
    cp = get_backend("rpa_v3_cp").plan(HD256, batch, generation="tpu7x")
    v3 = get_backend("rpa_v3").plan(HD256, batch, generation="tpu7x")
    # head_dim 256: the context-parallel heuristic halves the mixed prefetch block, v3's keeps 2048
    assert cp.m_block_sizes == (4, 1024, 4, 512) and v3.m_block_sizes == (4, 2048, 4, 512)
    assert cp.block_sizes_source == {"decode": "heuristic:TPU7x", "mixed": "heuristic:TPU7x"}
    # v6e: its own query block for an all-decode batch (8; v3's is 4)
    assert get_backend("rpa_v3_cp").plan(HD256, batch, generation="v6e").m_block_sizes[0] == 8


def test_its_tuned_sizes_export_as_call_arguments_not_v3s_environment():
    assert tuning("rpa_v3_cp").knob("decode").env is None and tuning("rpa_v3_cp").estimate_checked
    exported = tn.exports({"decode": tn.Candidate("rpa_v3_cp", "decode", (1, 1024, 1, 512))})
    assert "d_block_sizes=(1, 1024, 1, 512)" in str(exported) and "RPA_V3_" not in str(exported)


@pytest.mark.skipif(not hook_status()[0], reason=hook_status()[1])
@pytest.mark.parametrize("kind", ["decode", "prefill", "mixed"])
def test_v3s_traffic_model_equals_its_dmas(kind):
    batch, options, attn, model = _random_case(kind, random.Random(f"{kind}-cp"))
    modelled, observed = modelled_and_observed(get_backend("rpa_v3_cp", options=options), model, attn, batch)
    assert_model_equals_observation(modelled, observed, batch.q_lens, batch.kv_lens, options, attn)


def test_it_matches_the_reference_on_a_mixed_batch_in_interpret_mode():
    model = ModelSpec(name="t", num_q_heads=8, num_kv_heads=2, head_dim=128, dtype="float32", kv_dtype="float32")
    (case,) = [c for c in check_cases(model) if c.name == "mixed" and c.model.dtype == "float32"]
    record = check_backend(get_backend("rpa_v3_cp"), case, interpret=True)
    assert record.status == "ok" and record.max_abs_err < 1e-5, record
