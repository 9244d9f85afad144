"""The one timing protocol (wall clock; device time comes from :mod:`.capture`).

For a compiled function ``fn`` and its arguments:

1. compile is measured apart (:func:`compile_apart`: lower + compile, nothing executed);
2. ``warmup_calls`` untimed calls;
3. loop calibration: the number of calls per sample grows until one sample lasts at least
   ``min_sample_s`` (short kernels are timed over many calls, long ones once);
4. ``num_samples`` samples (trials); each blocks on the real outputs of all its calls
   (``jax.block_until_ready``), and its per-call time is ``elapsed / loops``;
5. raw samples are kept; median, IQR and a bootstrap CI come from :mod:`.stats`;
   outliers are flagged, never dropped; instability becomes a warning.

Donated inputs: a kernel that donates its arguments (RPA v3 donates q, k, v and the KV
cache) gets a fresh copy of the arguments for every call, made *before* the sample's
clock starts. The copies of one sample are bounded by ``max_copy_bytes``, which caps the
loops per sample for large donated inputs (the cap is reported as a warning).

The clock, the blocking function and the copier are injectable, so the protocol is
tested with a fake clock.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from rpa_bench.measure.phases import phase
from rpa_bench.measure.stats import SampleSummary, StatsConfig, summarize
from rpa_bench.typed import from_dict

Clock = Callable[[], float]  # seconds, monotonic


@dataclasses.dataclass(frozen=True)
class TimingConfig:
    """``conf/timing/*.yaml``. Durations in seconds, counts in calls."""

    warmup_calls: int = 3
    num_samples: int = 10
    min_samples: int = 3  # never fewer, even past max_total_s
    min_sample_s: float = 0.005  # loop calibration target per sample
    max_loops_per_sample: int = 1000
    max_total_s: float = 60.0  # per (point, kernel, variant) sampling budget
    max_copy_bytes: int = 1 << 30  # fresh copies of donated inputs per sample
    capture: bool = True  # profiler capture for device time
    # profiled calls per (point, kernel, variant): on an accelerator the device-time samples
    # latency_us and its CI rest on. None: as many as num_samples (the protocol's promise)
    capture_calls: int | None = None
    capture_hlo: bool = False  # embed HLO protos in captures (larger files)
    keep_captures: bool = True  # copy xplane.pb files into the run's captures/
    time_interpret: bool = False  # time Pallas interpret-mode kernels (never performance)
    compiler_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # every executable's
    # several kernel entries at a point: take their samples in alternating rounds (auto:
    # when the run has more than one kernel entry), so drift hits every side alike
    interleave: Any = "auto"  # auto | true | false
    interleave_order: str = "alternate"  # alternate (ABAB, BABA, ...) | random (seeded shuffle per round)
    stats: StatsConfig = StatsConfig()

    @property
    def profiled_calls(self) -> int:
        """Calls profiled per capture: ``capture_calls``, or ``num_samples`` when unset."""
        return self.num_samples if self.capture_calls is None else int(self.capture_calls)

    @property
    def device_samples_setting(self) -> str:
        """The setting that governs how many device-time samples a row has."""
        return "timing.num_samples" if self.capture_calls is None else "timing.capture_calls"

    def __post_init__(self) -> None:
        for name in ("warmup_calls", "capture_calls"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"timing.{name}={getattr(self, name)} must be >= 0")
        for name in ("num_samples", "min_samples", "max_loops_per_sample", "max_copy_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"timing.{name}={getattr(self, name)} must be >= 1")
        if self.interleave not in ("auto", True, False):
            raise ValueError(f"timing.interleave={self.interleave!r}; allowed: auto, true, false")
        if self.interleave_order not in ("alternate", "random"):
            raise ValueError(f"timing.interleave_order={self.interleave_order!r}; allowed: alternate, random")
        if self.min_samples > self.num_samples:
            raise ValueError(f"timing.min_samples={self.min_samples} must be <= timing.num_samples={self.num_samples}")
        if self.min_sample_s < 0 or self.max_total_s <= 0:
            raise ValueError(
                f"timing.min_sample_s={self.min_sample_s} must be >= 0 and timing.max_total_s={self.max_total_s} > 0"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TimingConfig":
        d = dict(d)
        d.pop("name", None)  # the conf/timing preset's name
        # the statistics' fields may also sit at the top of the timing group
        stats_fields = {f.name for f in dataclasses.fields(StatsConfig)}
        stats = dict(d.pop("stats", None) or {})
        stats.update({k: d.pop(k) for k in list(d) if k in stats_fields})
        d["compiler_options"] = dict(d.get("compiler_options") or {})
        return from_dict(cls, {**d, "stats": stats}, section="timing")


@dataclasses.dataclass(frozen=True)
class WallTiming:
    loops_per_sample: int
    samples_us: tuple[float, ...]  # per-call latency of each sample
    summary: SampleSummary
    warnings: tuple[str, ...]


def compile_apart(jitted: Any, args: tuple, *, clock: Clock = time.perf_counter,
                  compiler_options: Mapping[str, Any] | None = None) -> tuple[Any, float]:
    """Lower and compile ``jitted`` for ``args`` without executing it: (compiled, seconds).
    ``compiler_options``: per-executable XLA options (``--xla_...`` flags without dashes)."""
    t0 = clock()
    compiled = jitted.lower(*args).compile(dict(compiler_options) if compiler_options else None)
    return compiled, clock() - t0


def _nbytes(tree: Any) -> int:
    import jax

    return sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(tree))


def _default_copy(args: tuple) -> tuple:
    import jax

    return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, args)


def _default_block(x: Any) -> Any:
    import jax

    return jax.block_until_ready(x)


class Sampler:
    """The protocol above for one function, in steps: :meth:`calibrate` (warm-up and loop
    calibration), then :meth:`take` one sample at a time, then :meth:`result`. Several
    samplers can be interleaved (:func:`interleave`) so drift hits every side alike."""

    def __init__(self, fn: Callable[..., Any], args: tuple, *, config: TimingConfig, donates: bool = False,
                 clock: Clock = time.perf_counter, block: Callable[[Any], Any] = _default_block,
                 copy: Callable[[tuple], tuple] = _default_copy, label: str = "samples", in_order: bool = False,
                 agree: Callable[[Any], Any] = lambda value: value) -> None:
        self.fn, self.args, self.config, self.donates = fn, args, config, donates
        self.clock, self.block, self.copy, self.label = clock, block, copy, label
        self.in_order, self.agree = in_order, agree
        self.warnings: list[str] = []
        self.samples: list[float] = []
        self.loops = 1
        self.loop_cap = config.max_loops_per_sample
        if donates:
            per_set = max(1, _nbytes(args))
            copy_cap = max(1, config.max_copy_bytes // per_set)
            if copy_cap < self.loop_cap:
                self.loop_cap = copy_cap

    def _arg_sets(self, n: int) -> list[tuple]:
        if not self.donates:
            return [self.args] * n
        sets = [self.copy(self.args) for _ in range(n)]
        self.block(sets)  # copies finish before the clock starts
        return sets

    def _sample(self, n: int) -> float:
        sets = self._arg_sets(n)
        t0 = self.clock()
        if self.in_order:
            out = None
            for a in sets:
                out = self.fn(*a)
            self.block(out)
        else:
            self.block([self.fn(*a) for a in sets])
        return self.clock() - t0

    def calibrate(self) -> None:
        """Warm-up calls, then calls per sample grown until a sample lasts ``min_sample_s``."""
        config = self.config
        elapsed = None
        with phase("warm-up"):
            for i in range(config.warmup_calls):
                if i == config.warmup_calls - 1:  # the last warm-up call is also a one-call sample
                    elapsed = self.agree(self._sample(1))
                else:
                    self.block(self.fn(*self._arg_sets(1)[0]))
        with phase("calibration"):
            loops, cap = 1, self.loop_cap
            if elapsed is None:  # no warm-up call to read it from
                elapsed = self.agree(self._sample(loops))
            while elapsed < config.min_sample_s and loops < cap:
                grow = config.min_sample_s / elapsed * 1.2 if elapsed > 0 else 10.0
                loops = min(cap, max(loops * 2, math.ceil(loops * grow)))
                elapsed = self.agree(self._sample(loops))
        if elapsed < config.min_sample_s and loops >= cap:
            why = "timing.max_copy_bytes (fresh copies of donated inputs)" if cap < config.max_loops_per_sample \
                else "timing.max_loops_per_sample"
            self.warnings.append(
                f"a sample of {loops} calls lasts {elapsed * 1e6:.1f} us < timing.min_sample_s="
                f"{config.min_sample_s * 1e6:.0f} us; loops capped by {why}: wall-clock samples are "
                "near the timer's resolution, prefer the profiler's device time"
            )
        self.loops = loops

    def take(self) -> float:
        """One sample: per-call microseconds."""
        with phase("timed samples"):
            value = self._sample(self.loops) / self.loops * 1e6
        self.samples.append(value)
        return value

    def result(self) -> WallTiming:
        with phase("statistics"):
            summary = summarize(self.samples, self.config.stats, label=self.label)
        return WallTiming(self.loops, tuple(self.samples), summary, tuple(self.warnings) + summary.warnings)


def time_function(
    fn: Callable[..., Any],
    args: tuple,
    *,
    config: TimingConfig,
    donates: bool = False,
    clock: Clock = time.perf_counter,
    block: Callable[[Any], Any] = _default_block,
    copy: Callable[[tuple], tuple] = _default_copy,
    label: str = "samples",
    in_order: bool = False,
    agree: Callable[[Any], Any] = lambda value: value,
) -> WallTiming:
    """Run the protocol above on ``fn(*args)``; returns raw per-call samples and their summary.

    ``in_order``: the device runs calls in dispatch order (one TPU / GPU stream), so a sample
    blocks on its last call's outputs only and earlier outputs are freed as they complete
    (bounded memory for large KV caches). Otherwise every call's outputs are kept and
    blocked on.
    ``agree``: every decision taken from the clock (calls per sample, the sampling budget)
    passes through it; a multi-host run gives the writer's value to every process
    (``parallel.distributed.from_writer``) so all of them run the same calls.
    """
    sampler = Sampler(fn, args, config=config, donates=donates, clock=clock, block=block, copy=copy, label=label,
                      in_order=in_order, agree=agree)
    sampler.calibrate()
    _sample_rounds([sampler], config, clock=clock, agree=agree)
    return sampler.result()


def _sample_rounds(samplers: list[Sampler], config: TimingConfig, *, clock: Clock,
                   agree: Callable[[Any], Any], order: Callable[[int], list[int]] | None = None) -> list[list[int]]:
    """Rounds of one sample per sampler (``order(round)``: the samplers' order in that round)
    until ``num_samples``, or past ``min_samples`` once ``max_total_s`` is spent. Returns
    each sampler's position in the global sequence per sample (the interleaving order)."""
    positions: list[list[int]] = [[] for _ in samplers]
    t_start, seq = clock(), 0
    for i in range(config.num_samples):
        for j in (order(i) if order else range(len(samplers))):
            samplers[j].take()
            positions[j].append(seq)
            seq += 1
        if i + 1 >= config.min_samples and agree(clock() - t_start > config.max_total_s * len(samplers)):
            for s in samplers:
                s.warnings.append(
                    f"only {i + 1} of timing.num_samples={config.num_samples} samples fit in "
                    f"timing.max_total_s={config.max_total_s:g}; raise it for a tighter CI")
            break
    return positions


INTERLEAVE_ORDERS = ("alternate", "random")


def interleave(samplers: list[Sampler], config: TimingConfig, *, clock: Clock = time.perf_counter,
               agree: Callable[[Any], Any] = lambda value: value, order: str = "alternate",
               seed: int = 0) -> list[list[int]]:
    """Samples of several calibrated samplers taken in rounds, one per sampler per round:
    ``alternate`` (round i starts at sampler i mod n, the order rotated, and every other
    rotation reversed: AB, BA, AB, ... for two; each sampler takes each position equally
    often, so no side always runs first, last or after the same neighbour) or ``random``
    (each round's order shuffled, seeded). Sample ``i`` of every sampler comes
    from round ``i``: the samples are paired by index. Returns each sample's position in the
    global sequence (stored with the rows)."""
    if order not in INTERLEAVE_ORDERS:
        raise ValueError(f"timing.interleave_order={order!r}; allowed: {', '.join(INTERLEAVE_ORDERS)}")
    n = len(samplers)
    rng = np.random.default_rng(seed)

    def round_order(i: int) -> list[int]:
        if order == "random":
            return [int(j) for j in rng.permutation(n)]
        rotated = [(j + i // 2) % n for j in range(n)]
        return rotated if i % 2 == 0 else rotated[::-1]

    return _sample_rounds(samplers, config, clock=clock, agree=agree, order=round_order)
