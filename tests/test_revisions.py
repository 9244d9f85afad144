"""Kernel revisions side by side: interleaved samples, paired statistics, A/A and A/B verdicts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rpa_bench import cli
from rpa_bench.measure.timing import Sampler, TimingConfig, interleave
from rpa_bench.measure.compare import (CompareOptions, NOT_SIGNIFICANT, UNRELIABLE, WORSE, compare_point,
                                       min_p_value, samples_needed)

FAST = ["scale=cpu_smoke", "timing=quick", "timing.capture=false", "run.progress=false", "timing.warmup_calls=1",
        "timing.min_sample_s=0.002"]


@pytest.fixture(scope="module")
def abc_run(tmp_path_factory):
    """A, its twin A2 and a deliberately slower B (eight times the attention work), interleaved."""
    tmp = tmp_path_factory.mktemp("revisions")
    rc = cli.main(["run", "experiment=paper_decode", "workload.context_lens=[1024]", *FAST, "timing.num_samples=10",
                   "timing.min_samples=10", f"run.results_dir={tmp}", "run.name=abc",
                   "run.kernels=[{use: reference, label: A}, {use: reference, label: A2},"
                   " {use: reference, label: B, options: {extra_work: 7.0}}]"])
    assert rc == 0
    return tmp / "abc"


def test_samples_are_interleaved_and_recorded_with_their_order(abc_run):
    df = pd.read_parquet(abc_run / "measurements.parquet")
    excl = df[df.variant == "excl_prep"].set_index("kernel")
    orders = {k: list(map(int, excl.loc[k, "sample_order"])) for k in ("A", "A2", "B")}
    assert all(len(o) == 10 for o in orders.values())
    # round i holds one sample of each entry: positions 3i..3i+2, alternating direction
    for i in range(10):
        assert sorted(orders[k][i] for k in orders) == [3 * i, 3 * i + 1, 3 * i + 2]
    assert orders["A"][0] < orders["B"][0] and orders["A"][1] > orders["B"][1]


def test_interleaved_a_a_is_not_significant_and_a_slower_b_is_worse(abc_run, capsys):
    assert cli.main(["compare", str(abc_run), "--kernels", "A", "A2", "--json", "--out", str(abc_run / "aa")]) == 0
    aa = json.loads(capsys.readouterr().out)
    assert all(p["mark"] == NOT_SIGNIFICANT and p["paired"] for p in aa["points"])
    assert cli.main(["compare", str(abc_run), "--kernels", "A", "B", "--json", "--out", str(abc_run / "ab")]) == 1
    ab = json.loads(capsys.readouterr().out)
    assert [p["mark"] for p in ab["points"]] == [WORSE, WORSE]
    assert all(p["ci_low"] > 1.1 and p["paired"] for p in ab["points"])


def _row(samples, order=None, run="r"):
    return pd.Series({"status": "ok", "interpret": False, "samples_us": list(samples), "wall_samples_us": list(samples),
                      "sample_order": order, "run_id": run, "latency_us": float(np.median(samples))})


def test_too_few_samples_for_alpha_is_said_with_the_count_needed():
    assert min_p_value(5, 5, paired=False) == pytest.approx(2 / 252)
    assert samples_needed(0.05, paired=False) == 4 and samples_needed(0.05, paired=True) == 6
    out = compare_point(_row([10, 11, 12]), _row([20, 21, 22]), CompareOptions(n_resamples=200))
    assert out["mark"] == NOT_SIGNIFICANT and "timing.num_samples >= 4" in out["note"]


def test_drift_shared_by_both_sides_cannot_fake_a_difference_when_paired():
    rng = np.random.default_rng(0)
    drift = np.linspace(100, 200, 12)  # the host slows down during the run
    a = drift * (1 + rng.normal(0, 0.01, 12))
    b = drift * (1 + rng.normal(0, 0.01, 12))
    order_a, order_b = list(range(0, 24, 2)), list(range(1, 24, 2))
    paired = compare_point(_row(a, order_a), _row(b, order_b), CompareOptions(n_resamples=500))
    assert paired["paired"] and paired["mark"] == NOT_SIGNIFICANT and paired["ratio"] == pytest.approx(1.0, abs=0.03)
    # the same samples as two separate runs with B taken later: an unpaired compare is fooled
    late = compare_point(_row(a[:6]), _row(b[6:]), CompareOptions(n_resamples=500))
    assert late["ratio"] > 1.3


def test_a_noisy_a_side_makes_a_verdict_between_runs_unreliable():
    rng = np.random.default_rng(1)
    a = 100 * (1 + rng.uniform(-0.4, 0.4, 20))
    b = 150 * (1 + rng.uniform(-0.05, 0.05, 20))
    out = compare_point(_row(a, run="r1"), _row(b, run="r2"), CompareOptions(n_resamples=500))
    assert not out["paired"] and out["mark"] == UNRELIABLE and "too noisy" in out["note"]


def test_interleave_alternates_or_shuffles_rounds():
    calls = []

    def make(tag):
        return Sampler(lambda: calls.append(tag), (), config=TimingConfig(warmup_calls=0, num_samples=4,
                                                                        min_samples=4, min_sample_s=0),
                       block=lambda x: x)

    samplers = [make("A"), make("B")]
    for s in samplers:
        s.loops = 1
    positions = interleave(samplers, samplers[0].config)
    assert "".join(calls) == "ABBABAAB" and positions == [[0, 3, 5, 6], [1, 2, 4, 7]]
    with pytest.raises(ValueError, match="interleave_order"):
        interleave(samplers, samplers[0].config, order="zigzag")
