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

from rpa_bench.measure.stats import SampleSummary, StatsConfig, summarize

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
    capture_calls: int = 5
    capture_hlo: bool = False  # embed HLO protos in captures (larger files)
    keep_captures: bool = True  # copy xplane.pb files into the run's captures/
    time_interpret: bool = False  # time Pallas interpret-mode kernels (never performance)
    compiler_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # every executable's
    stats: StatsConfig = StatsConfig()

    def __post_init__(self) -> None:
        for name in ("warmup_calls", "capture_calls"):
            if getattr(self, name) < 0:
                raise ValueError(f"timing.{name}={getattr(self, name)} must be >= 0")
        for name in ("num_samples", "min_samples", "max_loops_per_sample", "max_copy_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"timing.{name}={getattr(self, name)} must be >= 1")
        if self.min_samples > self.num_samples:
            raise ValueError(f"timing.min_samples={self.min_samples} must be <= timing.num_samples={self.num_samples}")
        if self.min_sample_s < 0 or self.max_total_s <= 0:
            raise ValueError(
                f"timing.min_sample_s={self.min_sample_s} must be >= 0 and timing.max_total_s={self.max_total_s} > 0"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TimingConfig":
        d = dict(d)
        d.pop("name", None)
        stats_fields = {f.name for f in dataclasses.fields(StatsConfig)}
        own = {f.name for f in dataclasses.fields(cls)} - {"stats"}
        unknown = set(d) - own - stats_fields - {"stats"}
        if unknown:
            raise ValueError(f"timing: unknown field(s) {sorted(unknown)}; allowed: {sorted(own | stats_fields)}")
        stats = dict(d.pop("stats", None) or {})
        d["compiler_options"] = dict(d.get("compiler_options") or {})
        stats.update({k: d.pop(k) for k in list(d) if k in stats_fields})
        return cls(**d, stats=StatsConfig(**stats))


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
    warnings: list[str] = []
    loop_cap = config.max_loops_per_sample
    if donates:
        per_set = max(1, _nbytes(args))
        copy_cap = max(1, config.max_copy_bytes // per_set)
        if copy_cap < loop_cap:
            loop_cap = copy_cap

    def arg_sets(n: int) -> list[tuple]:
        if not donates:
            return [args] * n
        sets = [copy(args) for _ in range(n)]
        block(sets)  # copies finish before the clock starts
        return sets

    def sample(n: int) -> float:
        sets = arg_sets(n)
        t0 = clock()
        if in_order:
            out = None
            for a in sets:
                out = fn(*a)
            block(out)
        else:
            block([fn(*a) for a in sets])
        return clock() - t0

    for _ in range(config.warmup_calls):
        block(fn(*arg_sets(1)[0]))

    loops = 1
    elapsed = agree(sample(loops))
    while elapsed < config.min_sample_s and loops < loop_cap:
        grow = config.min_sample_s / elapsed * 1.2 if elapsed > 0 else 10.0
        loops = min(loop_cap, max(loops * 2, math.ceil(loops * grow)))
        elapsed = agree(sample(loops))
    if elapsed < config.min_sample_s and loops >= loop_cap:
        why = "timing.max_copy_bytes (fresh copies of donated inputs)" if loop_cap < config.max_loops_per_sample \
            else "timing.max_loops_per_sample"
        warnings.append(
            f"a sample of {loops} calls lasts {elapsed * 1e6:.1f} us < timing.min_sample_s="
            f"{config.min_sample_s * 1e6:.0f} us; loops capped by {why}: wall-clock samples are "
            "near the timer's resolution, prefer the profiler's device time"
        )

    samples: list[float] = []
    t_start = clock()
    for i in range(config.num_samples):
        samples.append(sample(loops) / loops * 1e6)
        if i + 1 >= config.min_samples and agree(clock() - t_start > config.max_total_s):
            warnings.append(
                f"only {len(samples)} of timing.num_samples={config.num_samples} samples fit in "
                f"timing.max_total_s={config.max_total_s:g}; raise it for a tighter CI"
            )
            break
    summary = summarize(samples, config.stats, label=label)
    return WallTiming(loops, tuple(samples), summary, tuple(warnings) + summary.warnings)
