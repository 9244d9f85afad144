"""Step sampling: which simulated steps are benchmarked, and what each one stands for.

Every sampled step carries two weights: ``step_weight`` (the share of the trace's steps
it represents) and ``time_weight`` (the share of the trace's modelled busy time it
represents). Weighted sums over the sample estimate whole-trace aggregates (e.g.
time-weighted MBU = sum(time_weight * MBU) / sum(time_weight)).

- ``all``: every step stands for itself.
- ``every_k``: steps 0, k, 2k, ...; each stands for the k steps from it to the next.
- ``stratified``: steps bucketed by (log2 tokens, log2 max kv_len); ``per_bucket`` steps
  drawn per bucket (seeded) share the bucket's steps and time. With ``max_points`` only
  the buckets with the most time are kept; the others are represented by none.
- ``top_n``: the N steps with the longest modelled time; each stands only for itself.

Coverage (:func:`coverage`): the fraction of steps and of time the sampled steps are
themselves, and the fraction their weights represent (1 unless buckets were dropped or
the method is ``top_n``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rpa_bench.workloads.scheduler_spec import SamplingSpec

SAMPLE_COLUMNS = ("step", "step_weight", "time_weight", "bucket")


def _buckets(num_tokens: np.ndarray, max_kv_len: np.ndarray) -> np.ndarray:
    """Bucket id per step from (floor(log2 tokens), floor(log2 max kv_len))."""
    tok = np.minimum(np.floor(np.log2(np.maximum(num_tokens, 1))), 63).astype(np.int64)
    kv = np.minimum(np.floor(np.log2(np.maximum(max_kv_len, 1))), 63).astype(np.int64)
    return tok * 64 + kv  # < 2**12


def sample_steps(steps: dict | pd.DataFrame, spec: SamplingSpec, *, seed: int) -> pd.DataFrame:
    """Sampled steps with weights.

    steps: per-step ``step_time_s`` f64[S], ``num_tokens`` i64[S], ``max_kv_len`` i64[S]
    (row i is step i). Returns SAMPLE_COLUMNS sorted by step.
    """
    dt = np.asarray(steps["step_time_s"], dtype=np.float64)
    total_steps, total_time = len(dt), float(dt.sum())
    if total_steps == 0:
        raise ValueError("no steps to sample")
    bucket = np.full(total_steps, -1, np.int64)
    if spec.method == "all":
        picked = np.arange(total_steps)
        n_rep, t_rep = np.ones(total_steps), dt
    elif spec.method == "every_k":
        picked = np.arange(0, total_steps, spec.every_k)
        n_rep = np.diff(np.append(picked, total_steps)).astype(np.float64)
        t_rep = np.add.reduceat(dt, picked)
    elif spec.method == "top_n":
        k = min(spec.top_n, total_steps)
        picked = np.sort(np.argsort(-dt, kind="stable")[:k])
        n_rep, t_rep = np.ones(k), dt[picked]
    else:  # stratified
        bucket = _buckets(np.asarray(steps["num_tokens"]), np.asarray(steps["max_kv_len"]))
        counts = np.bincount(bucket)
        times = np.bincount(bucket, weights=dt)
        ids = np.flatnonzero(counts)
        order = ids[np.argsort(-times[ids], kind="stable")]  # buckets by time, most first
        if spec.max_points is not None:
            order = order[: max(1, spec.max_points // spec.per_bucket)]
        rng = np.random.default_rng(seed)
        members = np.argsort(bucket.astype(np.int16), kind="stable")  # steps grouped by bucket
        starts = np.concatenate([[0], np.cumsum(counts)])
        chosen, n_list, t_list = [], [], []
        for b in order:
            pool = members[starts[b] : starts[b + 1]]
            m = min(spec.per_bucket, len(pool))
            pick = np.sort(rng.choice(pool, size=m, replace=False))
            chosen.append(pick)
            n_list.append(np.full(m, counts[b] / m))
            t_list.append(np.full(m, times[b] / m))
        picked = np.concatenate(chosen)
        n_rep, t_rep = np.concatenate(n_list), np.concatenate(t_list)
        keep = np.argsort(picked, kind="stable")
        picked, n_rep, t_rep = picked[keep], n_rep[keep], t_rep[keep]
    if spec.max_points is not None and spec.method != "stratified" and len(picked) > spec.max_points:
        raise ValueError(
            f"sampling.method={spec.method!r} picks {len(picked)} steps > sampling.max_points={spec.max_points}; "
            "raise max_points, or use every_k with a larger k, top_n or stratified"
        )
    return pd.DataFrame({
        "step": np.asarray(steps["step"])[picked] if "step" in steps else picked,
        "step_weight": n_rep / total_steps,
        "time_weight": t_rep / total_time if total_time > 0 else n_rep / total_steps,
        "bucket": bucket[picked],
    })


def coverage(sample: pd.DataFrame, steps: dict | pd.DataFrame, method: str) -> dict:
    """What the sample covers: its own share of steps and time, and what it represents."""
    dt = np.asarray(steps["step_time_s"], dtype=np.float64)
    total_time = float(dt.sum())
    own_time = float(dt[sample["step"].to_numpy()].sum()) if len(steps["step_time_s"]) else 0.0
    return {
        "method": method,
        "points": int(len(sample)),
        "steps_total": int(len(dt)),
        "sampled_steps_fraction": len(sample) / len(dt),
        "sampled_time_fraction": own_time / total_time if total_time else 0.0,
        "represented_steps_fraction": float(sample["step_weight"].sum()),
        "represented_time_fraction": float(sample["time_weight"].sum()),
    }
