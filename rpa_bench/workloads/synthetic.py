"""Synthetic ragged batches: the paper's sweeps and seeded random batches.

Paper decode sweep: ``num_seqs`` sequences, one query token each, all with the same
context ``c``; the kernel's ``kv_len`` is ``c + 1`` (``c`` cached tokens plus the new
one), which is what the paper's byte count ``(c + 1) * 2 * h_kv`` reads and writes.
Paper prefill sweep: ``num_seqs`` sequences of ``s`` tokens each, ``q_len = kv_len = s``.
"""

from __future__ import annotations

import numpy as np

from rpa_bench.workloads.batch import RaggedBatch

RANDOM_DISTRIBUTIONS = ("uniform", "zipf")


def decode_batch(num_seqs: int, context_len: int, *, page_size: int) -> RaggedBatch:
    """``num_seqs`` decodes over ``context_len`` cached tokens each (kv_len = context + 1)."""
    if num_seqs < 1:
        raise ValueError(f"num_seqs={num_seqs} must be >= 1")
    if context_len < 0:
        raise ValueError(f"context_len={context_len} must be >= 0")
    return RaggedBatch((1,) * num_seqs, (context_len + 1,) * num_seqs, page_size=page_size)


def prefill_batch(num_seqs: int, seq_len: int, *, page_size: int) -> RaggedBatch:
    """``num_seqs`` whole prefills of ``seq_len`` tokens (q_len = kv_len = seq_len)."""
    if num_seqs < 1:
        raise ValueError(f"num_seqs={num_seqs} must be >= 1")
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    return RaggedBatch.ordered((seq_len,) * num_seqs, (seq_len,) * num_seqs, page_size=page_size)


def random_batch(
    rng: np.random.Generator,
    *,
    num_seqs: int,
    max_kv_len: int,
    max_q_len: int,
    decode_fraction: float,
    distribution: str = "uniform",
    zipf_a: float = 1.2,
    page_size: int = 16,
    max_num_batched_tokens: int | None = None,
) -> RaggedBatch:
    """A seeded random ragged batch.

    ``kv_len`` is drawn per sequence from ``distribution``: ``uniform`` on
    [1, max_kv_len], or ``zipf`` (bounded Zipf with exponent ``zipf_a``: many short
    contexts, a heavy tail of long ones). A ``decode_fraction`` share of sequences gets
    ``q_len`` 1; the rest draw ``q_len`` uniformly in [2, min(kv_len, max_q_len)]
    (sequences with kv_len 1 decode). With ``max_num_batched_tokens`` the non-decode
    ``q_len`` are scaled down so the batch fits the token budget.
    """
    if distribution not in RANDOM_DISTRIBUTIONS:
        raise ValueError(f"distribution={distribution!r}; allowed: {', '.join(RANDOM_DISTRIBUTIONS)}")
    if num_seqs < 1:
        raise ValueError(f"num_seqs={num_seqs} must be >= 1")
    if max_kv_len < 1 or max_q_len < 1:
        raise ValueError(f"max_kv_len={max_kv_len} and max_q_len={max_q_len} must be >= 1")
    if not 0.0 <= decode_fraction <= 1.0:
        raise ValueError(f"decode_fraction={decode_fraction} must be in [0, 1]")
    if max_num_batched_tokens is not None and max_num_batched_tokens < num_seqs:
        raise ValueError(f"max_num_batched_tokens={max_num_batched_tokens} must be >= num_seqs={num_seqs}")
    if distribution == "uniform":
        kv = rng.integers(1, max_kv_len, size=num_seqs, endpoint=True)
    else:
        from scipy import stats  # heavy import, only needed here

        kv = stats.zipfian(zipf_a, max_kv_len).rvs(size=num_seqs, random_state=rng)
    kv = kv.astype(np.int64)
    decode = rng.random(num_seqs) < decode_fraction
    q_hi = np.minimum(kv, max_q_len)
    q = np.where(decode | (q_hi < 2), 1, 0)
    draw = rng.integers(2, np.maximum(q_hi, 2), endpoint=True)
    q = np.where(q == 1, 1, draw).astype(np.int64)
    if max_num_batched_tokens is not None and q.sum() > max_num_batched_tokens:
        long = q > 1
        spare = max_num_batched_tokens - num_seqs  # tokens beyond one per sequence
        extra = q[long] - 1
        q[long] = 1 + (extra * spare) // int(extra.sum())
    return RaggedBatch.ordered(q.tolist(), kv.tolist(), page_size=page_size)
