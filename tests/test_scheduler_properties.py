"""Scheduler simulation: invariants of the rules, and the fast simulator equals the reference.

The reference steps one by one with explicit page ids (asserting no page is held twice
and none is lost); the fast simulator jumps over decode stretches. Both must give the
same step stream: same sequences in the same order, same step times to the bit.
"""

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from rpa_bench.workloads.model import ModelSpec
from rpa_bench.workloads.scheduler import simulate
from rpa_bench.workloads.scheduler_ref import simulate_reference
from rpa_bench.workloads.scheduler_spec import SamplingSpec, SchedulerSpec
from rpa_bench.workloads.steptime import step_time_model
from rpa_bench.workloads.traces import PRESETS, RequestTable, read_trace

MODEL = ModelSpec("m", 8, 2, 64, num_layers=4, model_weight_bytes=10**8, model_flops_per_token=10**8)


@st.composite
def scenarios(draw, max_output=40):
    n = draw(st.integers(1, 24))
    block = 16
    prompt = np.array(draw(st.lists(st.integers(1, 400), min_size=n, max_size=n)), np.int64)
    output = np.array(draw(st.lists(st.integers(1, max_output), min_size=n, max_size=n)), np.int64)
    gaps = draw(st.lists(st.sampled_from([0.0, 1e-4, 2e-3, 0.01, 0.05]), min_size=n, max_size=n))
    arrival = np.cumsum(gaps) - gaps[0]
    convo = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))  # requests sharing a prefix
    blocks = [[c * 1000 + i for i in range(-(-int(p) // block))] for c, p in zip(convo, prompt)]
    offs = np.concatenate([[0], np.cumsum([len(b) for b in blocks])]).astype(np.int64)
    ids = np.array([x for b in blocks for x in b], np.int64)
    requests = RequestTable(arrival, prompt, output, offs, ids)
    page_size = draw(st.sampled_from([4, 16, 32]))
    max_seqs = draw(st.integers(1, 8))
    budget = draw(st.integers(max_seqs, 96))
    chunked = draw(st.booleans())
    if not chunked:
        budget = max(budget, int(prompt.max()))
    need = int((-(-(prompt + output - 1) // page_size)).max())
    spec = SchedulerSpec(
        max_num_batched_tokens=budget, max_num_seqs=max_seqs, page_size=page_size,
        num_kv_pages=draw(st.integers(need, 3 * need + 4)), chunked_prefill=chunked,
        chunk_prefill_size=draw(st.sampled_from([None, 2, 8])) if chunked and budget >= 8 else None,
        prefix_caching=draw(st.booleans()), prefix_block_tokens=block,
        prefix_cache_blocks=draw(st.sampled_from([None, 0, 3, 40])), sampling=SamplingSpec("all"),
    )
    # memory-bound, compute-bound or balanced steps
    peak = draw(st.sampled_from([1e15, 1e12, 5e10]))
    cost = step_time_model(1e12, peak, draw(st.sampled_from([0.0, 3e-4])), MODEL)
    return requests, spec, cost


def assert_same(fast, ref):
    assert fast.num_steps == len(ref.steps)
    for i, step in enumerate(ref.steps):
        assert fast.sequences_at(i) == step.seqs, f"step {i}"
    cols = fast.step_columns(("start_s", "step_time_s"))
    assert np.array_equal(cols["step_time_s"], [s.step_time_s for s in ref.steps])
    np.testing.assert_allclose(cols["start_s"], [s.start_s for s in ref.steps], rtol=1e-12, atol=0)
    seg_start = fast.segments["step0"].to_numpy()
    assert np.array_equal(fast.segments["start_s"], [ref.steps[i].start_s for i in seg_start])  # exact
    assert fast.end_s == ref.end_s
    assert fast.finish_step.tolist() == ref.finish_step
    assert (fast.preemptions, fast.prefix_hit_tokens) == (ref.preemptions, ref.prefix_hit_tokens)


def check_invariants(requests, spec, ref):
    prompt, output = requests.prompt_len, requests.output_len
    last_kv = {}
    preempted_since = defaultdict(int)  # preemptions of a request since it last ran
    by_step = defaultdict(list)
    for step, r in ref.preempted:
        by_step[step].append(r)
    assert len(ref.preempted) == ref.preemptions
    for i, step in enumerate(ref.steps):
        for r in by_step[i]:
            preempted_since[r] += 1
        assert sum(q for _, q, _ in step.seqs) <= spec.max_num_batched_tokens
        assert len(step.seqs) <= spec.max_num_seqs
        assert len({r for r, _, _ in step.seqs}) == len(step.seqs)  # a request at most once per step
        for r, q, kv in step.seqs:
            assert 1 <= q <= kv
            start = kv - q
            if preempted_since[r] or r not in last_kv:  # a new life: starts at 0 or after cached blocks
                assert start == 0 or (spec.prefix_caching and (
                    start % spec.prefix_block_tokens == 0 or start + 1 == kv))
                preempted_since[r] = 0
            else:  # tokens continue exactly where the last step left them: none twice, none skipped
                assert start == last_kv[r]
            last_kv[r] = kv
    assert all(f >= 0 for f in ref.finish_step)  # every request finishes
    # the last life ends with every prompt and output token computed (the last output is not fed back)
    assert all(last_kv[r] == prompt[r] + output[r] - 1 for r in range(len(prompt)))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_fast_simulation_equals_reference_and_invariants_hold(case):
    requests, spec, cost = case
    ref = simulate_reference(requests, spec, cost, check_pages=True)
    check_invariants(requests, spec, ref)
    assert_same(simulate(requests, spec, cost), ref)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(max_output=400))
def test_long_decode_stretches_equal_reference(case):
    requests, spec, cost = case
    ref = simulate_reference(requests, spec, cost, check_pages=True)
    check_invariants(requests, spec, ref)
    assert_same(simulate(requests, spec, cost), ref)


@pytest.mark.parametrize(
    "preset,path,spec_kw",
    [("mooncake", "mooncake-fast25/conversation_trace.jsonl", dict(prefix_caching=True)),
     ("mooncake", "mooncake-fast25/conversation_trace.jsonl",
      dict(num_kv_pages=520, max_num_seqs=32, max_num_batched_tokens=2048, chunk_prefill_size=512)),
     ("azure", "azure-llm-2023/AzureLLMInferenceTrace_conv.csv", dict(page_size=16, num_kv_pages=1000))],
)
def test_trace_heads_equal_reference_with_jumps_and_preemptions(preset, path, spec_kw):
    requests = read_trace(path, columns=PRESETS[preset], max_requests=120)
    spec = SchedulerSpec(**spec_kw)
    cost = step_time_model(7.38e12, 2.307e15, 3e-4, ModelSpec("llama", 32, 8, 128, num_layers=32,
                                                               model_weight_bytes=16 * 10**9))
    ref = simulate_reference(requests, spec, cost, check_pages=False)
    fast = simulate(requests, spec, cost)
    assert_same(fast, ref)
    assert (fast.segments["num_steps"] > 1).any()  # the fast path did jump
    if "num_kv_pages" in spec_kw and spec_kw["num_kv_pages"] < 1000:
        assert fast.preemptions > 0
