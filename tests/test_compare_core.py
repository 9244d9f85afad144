"""Revision comparison core: a pure function of two measurement tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rpa_bench.measure.compare import (
    IMPROVED,
    NOT_COMPARABLE,
    NOT_SIGNIFICANT,
    WORSE,
    CompareOptions,
    compare_kernels,
    compare_measurements,
    summarize,
)

OPTIONS = CompareOptions(n_resamples=500)


def _row(point: str, samples, *, kernel="reference", status="ok", interpret=False, workload_hash=None, **extra):
    samples = [float(x) for x in samples]
    row = dict(workload="paper_decode", point_id=point, variant="excl_prep", kernel=kernel, phase="decode",
               workload_hash=workload_hash or f"h-{point}", status=status, interpret=interpret,
               samples_us=samples, latency_us=float(np.median(samples)) if samples else None,
               num_seqs=8, num_tokens=8, max_kv_len=513, causal=True, model="llama3_8b", num_q_heads=32,
               num_kv_heads=8, head_dim=128, dtype="bfloat16", kv_dtype="bfloat16", page_size=256, device="cpu",
               num_devices=1, mesh="data=1", timing_source="wall", flops_count="noncausal")
    row.update(extra)
    return row


def _samples(seed: int, scale: float = 1.0, n: int = 20, base: float = 100.0) -> np.ndarray:
    return base * scale * np.random.default_rng(seed).lognormal(0.0, 0.03, n)


def _frames(points_a, points_b):
    return pd.DataFrame(points_a), pd.DataFrame(points_b)


def test_same_distribution_is_not_significant_and_exits_zero():
    a, b = _frames([_row(f"ctx={c}", _samples(c)) for c in (512, 1024, 2048)],
                   [_row(f"ctx={c}", _samples(c + 7)) for c in (512, 1024, 2048)])
    result = compare_measurements(a, b, OPTIONS)
    assert set(result["mark"]) == {NOT_SIGNIFICANT}
    summary = summarize(result)
    assert summary.exit_status == 0
    assert summary.geomean_ratio == pytest.approx(1.0, abs=0.05)
    assert (result["ci_low"] <= result["ratio"]).all() and (result["ratio"] <= result["ci_high"]).all()


def test_one_and_a_half_times_slower_is_worse_and_exits_one():
    a, b = _frames([_row("ctx=512", _samples(1)), _row("ctx=1024", _samples(2))],
                   [_row("ctx=512", _samples(3, 1.5)), _row("ctx=1024", _samples(4))])
    result = compare_measurements(a, b, OPTIONS).set_index("point_id")
    assert result.loc["ctx=512", "mark"] == WORSE
    assert result.loc["ctx=512", "ratio"] == pytest.approx(1.5, rel=0.05)
    assert result.loc["ctx=512", "ci_low"] > 1.1
    assert result.loc["ctx=512", "p_value"] < 0.001
    assert result.loc["ctx=1024", "mark"] == NOT_SIGNIFICANT
    assert summarize(result.reset_index()).exit_status == 1


def test_faster_is_improved_and_exits_zero():
    a, b = _frames([_row("ctx=512", _samples(1))], [_row("ctx=512", _samples(2, 0.6))])
    result = compare_measurements(a, b, OPTIONS)
    assert result["mark"].tolist() == [IMPROVED]
    assert summarize(result).exit_status == 0


def test_significant_change_within_threshold_is_not_flagged():
    a, b = _frames([_row("ctx=512", _samples(1, n=40))], [_row("ctx=512", _samples(2, 1.05, n=40))])
    result = compare_measurements(a, b, OPTIONS)
    assert result["p_value"].iloc[0] < 0.05  # real, but below the 1.1x threshold
    assert result["mark"].iloc[0] == NOT_SIGNIFICANT
    tight = compare_measurements(a, b, CompareOptions(threshold=1.03, n_resamples=500))
    assert tight["mark"].iloc[0] == WORSE
    # a band narrower than A's own spread (~4% IQR/median here): the two runs cannot say
    tighter = compare_measurements(a, b, CompareOptions(threshold=1.02, n_resamples=500))
    assert tighter["mark"].iloc[0] == "unreliable" and "too noisy" in tighter["note"].iloc[0]


@pytest.mark.parametrize(
    "change, reason",
    [
        (dict(workload_hash="other"), "workload hash"),
        (dict(interpret=True), "interpret mode"),
        (dict(status="failed", samples_us=None), "status is failed"),
        (dict(status="incorrect"), "status is incorrect"),
        (dict(device="tpu7x"), "different device"),
        (dict(head_dim=256), "different head_dim"),
        (dict(timing_source="device"), "different timing_source"),
    ],
    ids=["different_hash", "interpret_mode", "failed", "incorrect", "device", "config", "timing_source"],
)
def test_not_comparable_points_are_marked_with_their_reason(change, reason):
    slower = _samples(2, 2.0)
    a, b = _frames([_row("ctx=512", _samples(1))], [{**_row("ctx=512", slower), **change}])
    result = compare_measurements(a, b, OPTIONS)
    assert result["mark"].tolist() == [NOT_COMPARABLE]
    assert reason in result["reason"].iloc[0]
    summary = summarize(result)
    assert summary.exit_status == 0 and summary.geomean_ratio is None and summary.num_comparable == 0


def test_point_on_one_side_only_is_not_comparable():
    a, b = _frames([_row("ctx=512", _samples(1)), _row("ctx=1024", _samples(2))], [_row("ctx=512", _samples(3))])
    result = compare_measurements(a, b, OPTIONS).set_index("point_id")
    assert result.loc["ctx=1024", "mark"] == NOT_COMPARABLE
    assert result.loc["ctx=1024", "reason"] == "measured in A only"


def test_kernel_vs_kernel_within_one_run():
    frame = pd.DataFrame([
        _row("ctx=512", _samples(1), kernel="reference"),
        _row("ctx=512", _samples(2, 1.4), kernel="candidate"),
        _row("ctx=1024", _samples(3), kernel="reference"),
        _row("ctx=1024", _samples(4), kernel="rpa_v3", interpret=True),
    ])
    result = compare_kernels(frame, "reference", "candidate", OPTIONS).set_index("point_id")
    assert result.loc["ctx=512", "mark"] == WORSE
    assert result.loc["ctx=512", "kernel"] == "candidate vs reference"
    interp = compare_kernels(frame, "reference", "rpa_v3", OPTIONS).set_index("point_id")
    assert interp.loc["ctx=1024", "mark"] == NOT_COMPARABLE
    with pytest.raises(ValueError, match="kernel 'nope' is not in this run"):
        compare_kernels(frame, "reference", "nope", OPTIONS)


def test_results_are_ordered_worse_first():
    a, b = _frames([_row(f"ctx={c}", _samples(c)) for c in (1, 2, 3)],
                   [_row("ctx=1", _samples(9)), _row("ctx=2", _samples(8, 1.6)), _row("ctx=3", _samples(7, 0.5))])
    assert compare_measurements(a, b, OPTIONS)["mark"].tolist() == [WORSE, IMPROVED, NOT_SIGNIFICANT]


@pytest.mark.parametrize("kwargs, field", [(dict(threshold=1.0), "threshold"), (dict(alpha=0.0), "alpha"),
                                           (dict(n_resamples=10), "n_resamples")])
def test_bad_options_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CompareOptions(**kwargs)


def test_significant_test_with_a_ci_spanning_one_is_not_flagged():
    # wall-clock samples (us) of the same reference-kernel point in two runs on a busy 2-core host
    a = [95978, 48001, 55877, 47157, 88727, 107965, 63362, 24592, 59870, 54135]
    b = [67109, 64794, 83910, 115969, 67542, 88331, 136156, 120600, 79113, 63944]
    fa, fb = _frames([_row("ctx=256", a)], [_row("ctx=256", b)])
    result = compare_measurements(fa, fb, OPTIONS).iloc[0]
    assert result["p_value"] < 0.05 and result["ratio"] > 1.1 and result["ci_low"] <= 1.0
    assert result["mark"] == NOT_SIGNIFICANT


def test_flagged_points_with_unstable_samples_are_counted():
    warn = ["unstable excl_prep samples: IQR is 14.0% of the median (>= 10%)"]
    a, b = _frames([_row("ctx=512", _samples(1)), _row("ctx=1024", _samples(2))],
                   [_row("ctx=512", _samples(3, 1.5), warnings=warn), _row("ctx=1024", _samples(4, 1.5))])
    result = compare_measurements(a, b, OPTIONS).set_index("point_id")
    assert result.loc["ctx=512", "unstable"] == "B" and pd.isna(result.loc["ctx=1024", "unstable"])
    summary = summarize(result.reset_index())
    assert summary.counts[WORSE] == 2 and summary.flagged_unstable == 1 and summary.exit_status == 1
