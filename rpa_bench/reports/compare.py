"""Revision comparison: a pure function of two sets of stored measurements.

Per workload point: ratio B/A of the median latency with a bootstrap confidence
interval, a two-sided Mann-Whitney U test on the raw samples, and a mark:

- ``worse`` / ``improved``: the ratio is beyond the threshold (default 1.1x), the test
  is significant at ``alpha`` and the ratio's confidence interval excludes 1 (two pieces
  of evidence, as asv asks for non-overlapping intervals and a significant test);
- ``not significant``: otherwise;
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

WORSE, IMPROVED, NOT_SIGNIFICANT, NOT_COMPARABLE = "worse", "improved", "not significant", "not comparable"
MARK_ORDER = (WORSE, IMPROVED, NOT_SIGNIFICANT, NOT_COMPARABLE)
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
        if row.get("status") != "ok":
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


def _ratio_ci(a: np.ndarray, b: np.ndarray, options: CompareOptions) -> tuple[float, float]:
    def stat(bs, as_, axis=-1):
        return np.median(bs, axis=axis) / np.median(as_, axis=axis)

    res = stats.bootstrap((b, a), stat, vectorized=True, paired=False, method="percentile",
                          confidence_level=options.confidence_level, n_resamples=options.n_resamples,
                          rng=np.random.default_rng(options.seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def compare_point(a: pd.Series, b: pd.Series, options: CompareOptions) -> dict:
    """Compare one point measured on side A and side B."""
    out = {"latency_a_us": a.get("latency_us"), "latency_b_us": b.get("latency_us"), "ratio": np.nan,
           "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "n_a": 0, "n_b": 0, "reason": None}
    reason = _why_not_comparable(a, b, options)
    if reason is not None:
        return {**out, "mark": NOT_COMPARABLE, "reason": reason}
    sa, sb = _samples(a), _samples(b)
    ratio = float(np.median(sb) / np.median(sa))
    low, high = _ratio_ci(sa, sb, options)
    p = float(stats.mannwhitneyu(sb, sa, alternative="two-sided").pvalue)
    significant = p < options.alpha
    if significant and ratio > options.threshold and low > 1.0:
        mark = WORSE
    elif significant and ratio < 1.0 / options.threshold and high < 1.0:
        mark = IMPROVED
    else:
        mark = NOT_SIGNIFICANT
    return {**out, "latency_a_us": float(np.median(sa)), "latency_b_us": float(np.median(sb)), "ratio": ratio,
            "ci_low": low, "ci_high": high, "p_value": p, "n_a": len(sa), "n_b": len(sb), "mark": mark,
            "unstable": unstable_sides(a, b)}


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
