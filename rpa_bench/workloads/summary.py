"""Summary of a simulated trace, computed from the compact stream (no per-step expansion)."""

from __future__ import annotations

import numpy as np

from rpa_bench.workloads.stream import SimulationResult


def _percentiles(counts: np.ndarray, qs=(50, 90, 99)) -> dict[str, int]:
    """Percentiles of a distribution given as counts[value]."""
    cum = np.cumsum(counts)
    total = cum[-1]
    out = {f"p{q}": int(np.searchsorted(cum, total * q / 100.0, side="left")) for q in qs}
    out["max"] = int(np.flatnonzero(counts)[-1])
    out["mean"] = float((np.arange(len(counts)) * counts).sum() / total)
    return out


def simulation_summary(result: SimulationResult) -> dict:
    """Requests, steps, batch shape shares, kv_len distribution, preemptions, prefix hits."""
    seg = result.segments
    n = seg["num_steps"].to_numpy()
    seqs = seg["num_seqs"].to_numpy()
    q1 = seg["num_q1"].to_numpy()
    chunk = seg["num_chunk"].to_numpy()
    tokens = seg["num_tokens"].to_numpy()
    dur = seg["end_s"].to_numpy() - seg["start_s"].to_numpy()
    total_time = float(dur.sum())
    seq_steps = int((seqs * n).sum())
    decode_seqs, prefill_seqs = int((q1 * n).sum()), int((chunk * n).sum())
    phase = np.where(q1 == seqs, 0, np.where(q1 == 0, 1, 2))
    steps_by_phase = np.bincount(phase, weights=n, minlength=3)
    time_by_phase = np.bincount(phase, weights=dur, minlength=3)

    req = result.requests
    finish = result.finish_step
    done = finish >= 0
    seg_of = np.searchsorted(seg["step0"].to_numpy(), finish[done], side="right") - 1
    latency = seg["end_s"].to_numpy()[seg_of] - req.arrival_s[done]
    prefill_computed = int(result.chunks["q_len"].sum())
    hits = result.prefix_hit_tokens
    decode_tokens = int(req.output_len[done].sum() - done.sum())  # first token comes with the prefill

    return {
        "requests_total": len(req),
        "requests_completed": int(done.sum()),
        "steps": int(result.num_steps),
        "segments": len(seg),
        "simulated_time_s": float(result.end_s),
        "busy_time_s": total_time,
        "tokens_per_step_mean": float((tokens * n).sum() / max(result.num_steps, 1)),
        "seqs_per_step_mean": float(seq_steps / max(result.num_steps, 1)),
        "seq_share": {
            "decode": decode_seqs / seq_steps,
            "prefill": prefill_seqs / seq_steps,
            "mixed": (seq_steps - decode_seqs - prefill_seqs) / seq_steps,
        },
        "step_share": dict(zip(("decode", "prefill", "mixed"), (steps_by_phase / result.num_steps).tolist())),
        "time_share": dict(zip(("decode", "prefill", "mixed"), (time_by_phase / total_time).tolist())),
        "kv_len": _percentiles(result.kv_len_counts()),
        "preemptions": int(result.preemptions),
        "prefix_cache": {
            "enabled": bool(result.spec.prefix_caching),
            "hit_tokens": int(hits),
            "hit_rate": hits / (hits + prefill_computed) if hits + prefill_computed else 0.0,
        },
        "prefill_tokens_computed": prefill_computed,
        "decode_tokens": decode_tokens,
        "output_tokens_per_s": float(req.output_len[done].sum() / result.end_s) if result.end_s else 0.0,
        "latency_s": {
            "mean": float(latency.mean()),
            "p50": float(np.percentile(latency, 50)),
            "p99": float(np.percentile(latency, 99)),
        },
    }
