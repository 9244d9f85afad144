"""The timing protocol with a fake clock: calibration, samples, stats, warnings, donation."""

from __future__ import annotations

import numpy as np
import pytest

from rpa_bench.measure.stats import StatsConfig, summarize
from rpa_bench.measure.timing import TimingConfig, time_function


class FakeClock:
    """Time advances only when the fake kernel 'runs' (by its scripted cost)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeKernel:
    def __init__(self, clock: FakeClock, costs_s):
        self.clock = clock
        self.costs = iter(costs_s) if not callable(costs_s) else None
        self.cost_fn = costs_s if callable(costs_s) else None
        self.calls = 0
        self.seen_args = []

    def __call__(self, *args):
        cost = self.cost_fn(self.calls) if self.cost_fn else next(self.costs)
        self.clock.now += cost
        self.calls += 1
        self.seen_args.append(args)
        return ("out", self.calls)


def _noblock(x):
    return x


def test_short_kernel_gets_loop_calibrated_to_min_sample_duration():
    clock = FakeClock()
    kern = FakeKernel(clock, lambda i: 10e-6)  # 10 us per call
    cfg = TimingConfig(warmup_calls=2, num_samples=5, min_sample_s=1e-3)
    res = time_function(kern, (1,), config=cfg, clock=clock, block=_noblock)
    assert res.loops_per_sample * 10e-6 >= 1e-3
    assert len(res.samples_us) == 5
    assert res.summary.median_us == pytest.approx(10.0)
    assert res.summary.iqr_us == pytest.approx(0.0, abs=1e-9)
    assert res.warnings == ()


def test_long_kernel_is_timed_once_per_sample():
    clock = FakeClock()
    kern = FakeKernel(clock, lambda i: 0.2)
    cfg = TimingConfig(warmup_calls=1, num_samples=4, min_sample_s=0.01)
    res = time_function(kern, (), config=cfg, clock=clock, block=_noblock)
    assert res.loops_per_sample == 1
    # 1 warm-up call (timed: it is also the calibration's one-call sample) + 4 samples
    assert kern.calls == 5
    assert res.samples_us == pytest.approx((2e5,) * 4)


def test_unstable_samples_warn_with_advice_and_keep_every_sample():
    clock = FakeClock()
    rng = np.random.default_rng(0)
    costs = [1e-3] * 2 + list(rng.uniform(0.7e-3, 1.3e-3, size=20))
    kern = FakeKernel(clock, costs)
    cfg = TimingConfig(warmup_calls=1, num_samples=20, min_sample_s=0.0)
    res = time_function(kern, (), config=cfg, clock=clock, block=_noblock)
    assert len(res.samples_us) == 20
    text = " ".join(res.warnings)
    assert "unstable" in text and "timing.num_samples" in text


def test_first_sample_outlier_is_flagged_not_dropped():
    clock = FakeClock()
    costs = [1e-3] + [5e-3] + [1e-3 + 1e-6 * (i % 3) for i in range(9)]  # warm-up (= calibration), samples
    kern = FakeKernel(clock, costs)
    cfg = TimingConfig(warmup_calls=1, num_samples=10, min_sample_s=0.0)
    res = time_function(kern, (), config=cfg, clock=clock, block=_noblock)
    assert len(res.samples_us) == 10 and res.samples_us[0] == pytest.approx(5000.0)
    assert 0 in res.summary.outlier_indices
    assert any("warmup_calls" in w for w in res.warnings)
    assert res.summary.median_us == pytest.approx(1000.0, rel=1e-2)


def test_donating_kernel_gets_fresh_copies_outside_the_timed_region():
    clock = FakeClock()
    kern = FakeKernel(clock, lambda i: 1e-4)
    copies = []

    class Arr:
        nbytes = 1000

    def copy(args):
        clock.now += 1.0  # a copy that took a full second must not show up in samples
        new = tuple(Arr() for _ in args)
        copies.append(new)
        return new

    cfg = TimingConfig(warmup_calls=1, num_samples=3, min_sample_s=1e-3, max_copy_bytes=4000)
    res = time_function(kern, (Arr(),), config=cfg, donates=True, clock=clock, block=_noblock, copy=copy)
    seen = [id(a[0]) for a in kern.seen_args]
    assert len(seen) == len(set(seen)), "each call must get its own copy of donated inputs"
    assert res.loops_per_sample == 4  # capped by max_copy_bytes // nbytes
    assert res.summary.median_us == pytest.approx(100.0)
    assert any("max_copy_bytes" in w for w in res.warnings)


def test_sampling_budget_stops_early_but_keeps_min_samples():
    clock = FakeClock()
    kern = FakeKernel(clock, lambda i: 2.0)
    cfg = TimingConfig(warmup_calls=0, num_samples=10, min_samples=3, min_sample_s=0.0, max_total_s=1.0)
    res = time_function(kern, (), config=cfg, clock=clock, block=_noblock)
    assert len(res.samples_us) == 3
    assert any("max_total_s" in w for w in res.warnings)


def test_bootstrap_ci_brackets_the_median():
    x = np.random.default_rng(1).normal(100.0, 5.0, size=30)
    s = summarize(x, StatsConfig(seed=3))
    assert s.ci_low_us <= s.median_us <= s.ci_high_us
    assert s.ci_high_us - s.ci_low_us > 0


@pytest.mark.parametrize(
    "field,value",
    [("num_samples", 0), ("warmup_calls", -1), ("max_total_s", 0.0), ("min_samples", 50)],
)
def test_bad_timing_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"timing.{field}"):
        TimingConfig(**{field: value})


def test_timing_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown field"):
        TimingConfig.from_dict({"num_sampels": 3})
    cfg = TimingConfig.from_dict({"name": "quick", "num_samples": 4, "confidence_level": 0.9})
    assert cfg.num_samples == 4 and cfg.stats.confidence_level == 0.9


def test_in_order_devices_block_on_the_last_call_only():
    clock = FakeClock()
    kern = FakeKernel(clock, lambda i: 1e-4)
    blocked = []

    def block(x):
        blocked.append(x)
        return x

    cfg = TimingConfig(warmup_calls=0, num_samples=3, min_sample_s=1e-3)
    res = time_function(kern, (), config=cfg, clock=clock, block=block, in_order=True)
    assert res.loops_per_sample >= 10
    assert all(isinstance(b, tuple) and b[0] == "out" for b in blocked)  # one output, not a list


def test_clock_decisions_follow_the_agreed_values_of_a_multi_host_run():
    # this process's kernel is short, but the writer's clock said a single call already
    # fills a sample and the budget is not spent: every process then runs the writer's calls
    clock = FakeClock()
    kern = FakeKernel(clock, lambda i: 10e-6)
    cfg = TimingConfig(warmup_calls=0, num_samples=4, min_samples=1, min_sample_s=1e-3, max_total_s=1e-9)
    seen = []

    def writers(value):
        seen.append(value)
        return False if isinstance(value, bool) else 1.0  # seconds per calibration sample

    res = time_function(kern, (), config=cfg, clock=clock, block=_noblock, agree=writers)
    assert res.loops_per_sample == 1 and len(res.samples_us) == 4  # not calibrated up, not cut short
    assert kern.calls == 1 + 4
    assert seen[0] == pytest.approx(10e-6) and seen.count(True) == 4  # local values were offered
