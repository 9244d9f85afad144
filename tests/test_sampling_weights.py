"""Step sampling: each method's picks, weights that represent the trace, and coverage."""

import numpy as np
import pytest

from rpa_bench.workloads.sampling import coverage, sample_steps
from rpa_bench.workloads.scheduler_spec import SamplingSpec


@pytest.fixture
def steps():
    rng = np.random.default_rng(0)
    n = 5000
    tokens = np.where(rng.random(n) < 0.9, rng.integers(1, 64, n), rng.integers(512, 8192, n))
    max_kv = rng.integers(100, 40000, n)
    return {"step": np.arange(n), "num_tokens": tokens, "max_kv_len": max_kv,
            "step_time_s": 1e-3 + 1e-7 * tokens + 1e-9 * max_kv}


@pytest.mark.parametrize("spec", [SamplingSpec("all"), SamplingSpec("every_k", every_k=7),
                                  SamplingSpec("stratified", per_bucket=3)])
def test_weights_represent_the_whole_trace(steps, spec):
    s = sample_steps(steps, spec, seed=1)
    assert s["step_weight"].sum() == pytest.approx(1.0) and s["time_weight"].sum() == pytest.approx(1.0)
    assert s["step"].is_monotonic_increasing and s["step"].is_unique
    # a weighted mean over the sample estimates the trace's time-weighted mean (exact for "all")
    dt = steps["step_time_s"]
    truth = np.sum(dt * steps["num_tokens"]) / dt.sum()
    est = np.sum(s["time_weight"] * steps["num_tokens"][s["step"]])
    rel = 1e-9 if spec.method == "all" else 0.35
    assert est == pytest.approx(truth, rel=rel)


def test_every_k_picks_every_kth_and_the_tail_weighs_less(steps):
    s = sample_steps(steps, SamplingSpec("every_k", every_k=1000), seed=0)
    assert s["step"].tolist() == [0, 1000, 2000, 3000, 4000]
    s = sample_steps(steps, SamplingSpec("every_k", every_k=3000), seed=0)
    assert s["step_weight"].tolist() == pytest.approx([0.6, 0.4])


def test_top_n_takes_the_longest_steps_and_covers_only_itself(steps):
    s = sample_steps(steps, SamplingSpec("top_n", top_n=10), seed=0)
    dt = steps["step_time_s"]
    assert set(s["step"]) == set(np.argsort(-dt)[:10])
    cov = coverage(s, steps, "top_n")
    assert cov["represented_time_fraction"] == pytest.approx(cov["sampled_time_fraction"])
    assert cov["represented_steps_fraction"] == pytest.approx(10 / 5000)


def test_stratified_draws_per_bucket_seeded_and_caps_by_time(steps):
    a = sample_steps(steps, SamplingSpec("stratified", per_bucket=2), seed=5)
    b = sample_steps(steps, SamplingSpec("stratified", per_bucket=2), seed=5)
    assert a.equals(b)
    assert a.groupby("bucket").size().max() <= 2
    capped = sample_steps(steps, SamplingSpec("stratified", per_bucket=1, max_points=4), seed=5)
    assert len(capped) == 4
    cov = coverage(capped, steps, "stratified")
    assert 0 < cov["represented_time_fraction"] < 1 and cov["points"] == 4


def test_method_over_the_point_cap_is_refused(steps):
    with pytest.raises(ValueError, match="max_points=10"):
        sample_steps(steps, SamplingSpec("all", max_points=10), seed=0)
    with pytest.raises(ValueError, match="sampling.method='random'"):
        SamplingSpec("random")
