"""Revision comparison: a pure function of two sets of stored measurements.

Per workload point: ratio B/A of the median latency with a bootstrap confidence
interval, a significance test, and a mark. Two kinds of evidence:

- **paired** (both sides measured in one run with interleaved samples, ``sample_order``):
  the wall-clock samples are paired by round; the ratio's CI is a bootstrap over pairs and
  the test is Wilcoxon's signed-rank test on the per-pair log ratios. Drift between
  rounds hits both sides alike, so a shared noisy host cannot fake a difference.
- **unpaired** (two runs): the raw samples of each side, a bootstrap over each, and a
  two-sided Mann-Whitney U test.

Marks:
- ``worse`` / ``improved``: the test is significant at ``alpha`` and the ratio's CI lies
  wholly beyond the threshold band (low > threshold, or high < 1/threshold): the noise
  floor is the threshold, not 1;
- ``unreliable`` (two runs only): a difference that would count, but side A's own spread
  (IQR / median) is wider than the threshold band: the host was too noisy to say (paired
  evidence carries its noise in the CI over pairs);
- ``not significant``: otherwise, including settings too small for the test to ever reach
  ``alpha`` (say 3 samples per side), which is said in the row's ``note`` with the sample
  count needed;
- ``not comparable``: the points differ in workload hash or config, either side ran in
  interpret mode (its time is the interpreter's, not the kernel's), either status is not
  ok, samples are missing, or the point exists on one side only.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from scipy import stats
from rpa_bench.status import Status

WORSE, IMPROVED, NOT_SIGNIFICANT, NOT_COMPARABLE = "worse", "improved", "not significant", "not comparable"
UNRELIABLE = "unreliable"
MARK_ORDER = (WORSE, IMPROVED, UNRELIABLE, NOT_SIGNIFICANT, NOT_COMPARABLE)
POINT_KEY = ("workload", "point_id", "variant")
# Fields that must agree for two measurements to be comparable (beyond the workload hash).
CONFIG_FIELDS = (
    "workload_hash", "phase", "num_seqs", "num_tokens", "max_kv_len", "causal", "model", "num_q_heads",
    "num_kv_heads", "head_dim", "dtype", "kv_dtype", "page_size", "device", "num_devices", "mesh",
    "timing_source", "flops_count", "compiler_options",
)
FLAG_FIELDS = ("compiler_options",)  # ignored with CompareOptions(across_flags=True)


@dataclasses.dataclass(frozen=True)
class CompareOptions:
    threshold: float = 1.1
    alpha: float = 0.05
    confidence_level: float = 0.95
    n_resamples: int = 2000
    seed: int = 0
    across_flags: bool = False  # compare rows whose compiler options differ (the page says which)

    def __post_init__(self) -> None:
        if not self.threshold > 1.0:
            raise ValueError(f"threshold={self.threshold} must be > 1 (e.g. 1.1 for 10%)")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha={self.alpha} must be in (0, 1)")
        if not 0.0 < self.confidence_level < 1.0:
            raise ValueError(f"confidence_level={self.confidence_level} must be in (0, 1)")
        if self.n_resamples < 100:
            raise ValueError(f"n_resamples={self.n_resamples} must be >= 100")


@dataclasses.dataclass(frozen=True, eq=False)
class CompareSummary:
    counts: dict[str, int]
    geomean_ratio: float | None  # over comparable points
    flagged_unstable: int  # worse / improved points whose samples carry an instability warning
    num_comparable: int
    exit_status: int  # 1 on a significant regression beyond the threshold, else 0


def _same(a, b) -> bool:
    a_missing = a is None or (isinstance(a, float) and math.isnan(a)) or a is pd.NA
    b_missing = b is None or (isinstance(b, float) and math.isnan(b)) or b is pd.NA
    if a_missing or b_missing:
        return a_missing and b_missing
    return a == b


def _flag(value) -> bool:
    """A nullable boolean cell: missing counts as False."""
    return False if _same(value, None) else bool(value)


def _samples(row: pd.Series) -> np.ndarray:
    values = row.get("samples_us")
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return np.array([], dtype=float)
    arr = np.asarray(values, dtype=float).ravel()
    return arr[np.isfinite(arr) & (arr > 0)]


def unstable_sides(a: pd.Series, b: pd.Series) -> str | None:
    """Which sides carry an instability warning from the timing protocol ("A", "B", "A+B")."""
    def unstable(row) -> bool:
        warnings = row.get("warnings")
        if warnings is None or isinstance(warnings, float):
            return False
        return any(str(w).startswith("unstable") for w in warnings)

    sides = [name for name, row in (("A", a), ("B", b)) if unstable(row)]
    return "+".join(sides) or None


def _why_not_comparable(a: pd.Series, b: pd.Series, options: "CompareOptions | None" = None) -> str | None:
    options = options or CompareOptions()
    for side, row in (("A", a), ("B", b)):
        if row.get("status") != Status.OK:
            return f"{side} status is {row.get('status')}"
        if _flag(row.get("interpret")):
            return f"{side} ran in interpret mode (time is the interpreter's, not the kernel's)"
    fields = [f for f in CONFIG_FIELDS if not (options.across_flags and f in FLAG_FIELDS)]
    diffs = [f for f in fields if f in a.index and f in b.index and not _same(a[f], b[f])]
    if diffs:
        what = "workload hash" if diffs[0] == "workload_hash" else diffs[0]
        return f"different {what}: {a[diffs[0]]} vs {b[diffs[0]]}" + (f" (+{len(diffs) - 1} more)" if len(diffs) > 1 else "")
    if len(_samples(a)) < 2 or len(_samples(b)) < 2:
        return "fewer than 2 raw samples on a side"
    return None


def _ratio_ci(a: np.ndarray, b: np.ndarray, options: CompareOptions, *, paired: bool = False) -> tuple[float, float]:
    def stat(bs, as_, axis=-1):
        return np.median(bs, axis=axis) / np.median(as_, axis=axis)

    res = stats.bootstrap((b, a), stat, vectorized=True, paired=paired, method="percentile",
                          confidence_level=options.confidence_level, n_resamples=options.n_resamples,
                          rng=np.random.default_rng(options.seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def min_p_value(n_a: int, n_b: int, *, paired: bool) -> float:
    """The smallest two-sided p the test can give: Wilcoxon signed-rank over ``n`` pairs
    2 / 2^n; Mann-Whitney U 2 / C(n_a + n_b, n_a) (all of one side below the other)."""
    if paired:
        return min(1.0, 2.0 / 2.0 ** n_a)
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a))


def samples_needed(alpha: float, *, paired: bool) -> int:
    """Fewest samples per side (pairs) with which the test can reach ``alpha``."""
    n = 2
    while min_p_value(n, n, paired=paired) >= alpha:
        n += 1
    return n


def _pairs(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """Interleaved wall samples of one run, paired by round; None when the rows are not paired."""
    oa, ob = a.get("sample_order"), b.get("sample_order")
    if oa is None or ob is None or isinstance(oa, float) or isinstance(ob, float):
        return None
    if a.get("run_id") != b.get("run_id") or len(oa) != len(ob) or len(oa) < 2:
        return None
    wa = np.asarray(a.get("wall_samples_us"), dtype=float).ravel()
    wb = np.asarray(b.get("wall_samples_us"), dtype=float).ravel()
    if len(wa) != len(oa) or len(wb) != len(ob) or not (np.all(wa > 0) and np.all(wb > 0)):
        return None
    return wa, wb


def _sample_setting(a: pd.Series, b: pd.Series) -> str:
    """The setting that governs the compared samples: device-time rows rest on the profiled
    calls (timing.capture_calls, which follows timing.num_samples when null), wall rows on
    timing.num_samples."""
    if "device" in (a.get("timing_source"), b.get("timing_source")):
        return "timing.capture_calls (device-time samples; null follows timing.num_samples)"
    return "timing.num_samples"


def spread(samples: np.ndarray) -> float:
    """IQR / median of a side's samples (its own noise)."""
    q1, q3 = np.percentile(samples, [25, 75])
    return float((q3 - q1) / np.median(samples))


def compare_point(a: pd.Series, b: pd.Series, options: CompareOptions) -> dict:
    """Compare one point measured on side A and side B (paired when interleaved in one run)."""
    out = {"latency_a_us": a.get("latency_us"), "latency_b_us": b.get("latency_us"), "ratio": np.nan,
           "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "n_a": 0, "n_b": 0, "reason": None,
           "paired": False, "spread_a": np.nan, "spread_b": np.nan, "note": None}
    reason = _why_not_comparable(a, b, options)
    if reason is not None:
        return {**out, "mark": NOT_COMPARABLE, "reason": reason}
    pairs = _pairs(a, b)
    paired = pairs is not None
    sa, sb = pairs if paired else (_samples(a), _samples(b))
    ratio = float(np.median(sb) / np.median(sa))
    low, high = _ratio_ci(sa, sb, options, paired=paired)
    if paired:
        diff = np.log(sb) - np.log(sa)
        p = 1.0 if np.allclose(diff, 0.0) else float(stats.wilcoxon(diff, alternative="two-sided").pvalue)
    else:
        p = float(stats.mannwhitneyu(sb, sa, alternative="two-sided").pvalue)
    note = None
    floor = min_p_value(len(sa), len(sb), paired=paired)
    if floor >= options.alpha:
        need = samples_needed(options.alpha, paired=paired)
        note = (f"with {len(sa)} {'pairs' if paired else 'samples per side'} the "
                f"{'Wilcoxon signed-rank' if paired else 'Mann-Whitney'} test cannot go below p={floor:.3g} >= "
                f"alpha={options.alpha:g}: no verdict is possible; use {_sample_setting(a, b)} >= {need}")
    significant = p < options.alpha
    spread_a, spread_b = spread(sa), spread(sb)
    if significant and low > options.threshold:
        mark = WORSE
    elif significant and high < 1.0 / options.threshold:
        mark = IMPROVED
    else:
        mark = NOT_SIGNIFICANT
    # two runs: side A's own spread wider than the band means the host's noise alone could
    # make the difference (paired evidence already carries its noise in the CI over pairs)
    if not paired and mark in (WORSE, IMPROVED) and spread_a > options.threshold - 1.0:
        mark = UNRELIABLE
        note = (f"side A's own spread (IQR/median {spread_a:.1%}) exceeds the threshold band "
                f"({options.threshold - 1.0:.0%}): the host was too noisy to call this; measure A and B "
                "interleaved in one run")
    return {**out, "latency_a_us": float(np.median(sa)), "latency_b_us": float(np.median(sb)), "ratio": ratio,
            "ci_low": low, "ci_high": high, "p_value": p, "n_a": len(sa), "n_b": len(sb), "mark": mark,
            "unstable": unstable_sides(a, b), "paired": paired, "spread_a": spread_a, "spread_b": spread_b,
            "note": note}


def compare_measurements(a: pd.DataFrame, b: pd.DataFrame, options: CompareOptions = CompareOptions(),
                         *, key: tuple[str, ...] = POINT_KEY + ("kernel",)) -> pd.DataFrame:
    """One row per point found on either side, ordered worse, improved, not significant,
    not comparable, then by ratio (largest first)."""
    for side, frame in (("A", a), ("B", b)):
        missing = [k for k in key if k not in frame.columns]
        if missing:
            raise ValueError(f"side {side} lacks key columns {missing}")
    index_a = {tuple(r[k] for k in key): r for _, r in a.iterrows()}
    index_b = {tuple(r[k] for k in key): r for _, r in b.iterrows()}
    dup_a = a.duplicated(list(key)).sum()
    dup_b = b.duplicated(list(key)).sum()
    rows = []
    for point in list(dict.fromkeys(list(index_a) + list(index_b))):
        ra, rb = index_a.get(point), index_b.get(point)
        base = dict(zip(key, point))
        ref = ra if ra is not None else rb
        base.update(phase=ref.get("phase"), kernel_a=None if ra is None else ra.get("kernel"),
                    kernel_b=None if rb is None else rb.get("kernel"))
        if ra is None or rb is None:
            rows.append({**base, "mark": NOT_COMPARABLE, "reason": f"measured in {'B' if ra is None else 'A'} only"})
            continue
        rows.append({**base, **compare_point(ra, rb, options)})
    result = pd.DataFrame(rows)
    if result.empty:
        return result
    for column in ("ratio", "reason"):  # every point one-sided: no comparison ran, the columns still exist
        if column not in result.columns:
            result[column] = np.nan if column == "ratio" else None
    if dup_a or dup_b:
        result.attrs["warning"] = f"duplicate points kept last: A {dup_a}, B {dup_b}"
    order = result["mark"].map({m: i for i, m in enumerate(MARK_ORDER)})
    result = result.assign(_order=order, _r=-result["ratio"].fillna(0)).sort_values(["_order", "_r"], kind="stable")
    return result.drop(columns=["_order", "_r"]).reset_index(drop=True)


def compare_kernels(frame: pd.DataFrame, kernel_a: str, kernel_b: str,
                    options: CompareOptions = CompareOptions()) -> pd.DataFrame:
    """Kernel vs kernel within one run: the same points, A = kernel_a, B = kernel_b."""
    kernels = set(frame["kernel"].dropna())
    for name in (kernel_a, kernel_b):
        if name not in kernels:
            raise ValueError(f"kernel {name!r} is not in this run; kernels here: {', '.join(sorted(kernels))}")
    result = compare_measurements(frame[frame["kernel"] == kernel_a], frame[frame["kernel"] == kernel_b],
                                  options, key=POINT_KEY)
    if not result.empty:
        result.insert(3, "kernel", f"{kernel_b} vs {kernel_a}")
    return result


def summarize(result: pd.DataFrame) -> CompareSummary:
    counts = {m: int((result["mark"] == m).sum()) if not result.empty else 0 for m in MARK_ORDER}
    comparable = result[result["mark"] != NOT_COMPARABLE] if not result.empty else result
    ratios = comparable["ratio"].dropna().to_numpy(float) if not comparable.empty else np.array([])
    geomean = float(stats.gmean(ratios)) if len(ratios) else None
    flagged = result[result["mark"].isin((WORSE, IMPROVED))] if not result.empty else result
    unstable = int(flagged["unstable"].notna().sum()) if "unstable" in flagged.columns else 0
    return CompareSummary(counts=counts, geomean_ratio=geomean, flagged_unstable=unstable,
                          num_comparable=len(comparable), exit_status=1 if counts[WORSE] else 0)
