"""Statistics of raw latency samples: median, IQR, bootstrap CI, outliers, stability.

Nothing is dropped: outliers are *flagged* (their indices kept beside the samples) and
instability becomes a warning whose text says what to do about it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    confidence_level: float = 0.95
    bootstrap_resamples: int = 1000
    unstable_rel_iqr: float = 0.10  # IQR / median at or above this: instability warning
    outlier_iqr_factor: float = 1.5  # Tukey fences: beyond Q1 - k*IQR or Q3 + k*IQR
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence_level < 1.0:
            raise ValueError(f"timing.confidence_level={self.confidence_level} must be in (0, 1)")
        if self.bootstrap_resamples < 100:
            raise ValueError(f"timing.bootstrap_resamples={self.bootstrap_resamples} must be >= 100")
        if self.unstable_rel_iqr <= 0:
            raise ValueError(f"timing.unstable_rel_iqr={self.unstable_rel_iqr} must be > 0")
        if self.outlier_iqr_factor <= 0:
            raise ValueError(f"timing.outlier_iqr_factor={self.outlier_iqr_factor} must be > 0")


@dataclasses.dataclass(frozen=True)
class SampleSummary:
    median_us: float
    iqr_us: float
    ci_low_us: float
    ci_high_us: float
    outlier_indices: tuple[int, ...]
    warnings: tuple[str, ...]

    @property
    def rel_iqr(self) -> float:
        return self.iqr_us / self.median_us if self.median_us > 0 else float("nan")


def _median_ci(x: np.ndarray, cfg: StatsConfig) -> tuple[float, float]:
    if len(x) < 2 or np.all(x == x[0]):
        m = float(np.median(x))
        return m, m
    res = sps.bootstrap(
        (x,),
        np.median,
        confidence_level=cfg.confidence_level,
        n_resamples=cfg.bootstrap_resamples,
        method="percentile",
        random_state=np.random.default_rng(cfg.seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(samples_us: Sequence[float], cfg: StatsConfig = StatsConfig(), *, label: str = "samples") -> SampleSummary:
    """Median, IQR, bootstrap CI of the median; outliers flagged; warnings that say what to do."""
    x = np.asarray(list(samples_us), dtype=np.float64)
    if x.size == 0:
        raise ValueError(f"{label}: no samples to summarize")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{label}: samples must be finite, got {x.tolist()}")
    q1, median, q3 = (float(v) for v in np.percentile(x, [25, 50, 75]))
    iqr = q3 - q1
    lo, hi = _median_ci(x, cfg)
    fence = cfg.outlier_iqr_factor * iqr
    outliers = tuple(int(i) for i in np.flatnonzero((x < q1 - fence) | (x > q3 + fence)))
    warnings: list[str] = []
    if median > 0 and iqr / median >= cfg.unstable_rel_iqr:
        warnings.append(
            f"unstable {label}: IQR is {100 * iqr / median:.1f}% of the median "
            f"(>= {100 * cfg.unstable_rel_iqr:.0f}%); run on an idle machine (close other jobs, "
            "fix the CPU frequency), or raise timing.num_samples and timing.min_sample_s"
        )
    if 0 in outliers and x.size >= 3:
        warnings.append(
            f"first {label[:-1] if label.endswith('s') else label} is an outlier "
            f"({x[0]:.1f} us vs median {median:.1f} us): warm-up was too short; "
            "raise timing.warmup_calls"
        )
    other = [i for i in outliers if i != 0]
    if other:
        warnings.append(
            f"{len(other)} outlier {label} (indices {other[:8]}{'...' if len(other) > 8 else ''}) "
            "flagged and kept (not dropped); look for interference from other processes"
        )
    return SampleSummary(median, iqr, lo, hi, outliers, tuple(warnings))
