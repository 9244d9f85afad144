"""Exact analytic cost of one RPA call: HBM bytes and matmul FLOPs, per sequence.

Conventions (each sequence has ``q_len`` new tokens and ``kv_len`` tokens *including*
them; query ``i`` sits at position ``p = kv_len - q_len + i``):

Bytes (the paper's accounting, generalised to any ragged mix):
  q_read_bytes     q_len * h_q * d * dtype_bytes        (queries read)
  out_write_bytes  q_len * h_q * d * dtype_bytes        (output written)
  kv_write_bytes   q_len * 2 * h_kv * d * kv_bytes      (new K/V written to the cache)
  kv_read_bytes    cached tokens read * 2 * h_kv * d * kv_bytes, cached tokens being the
                   positions ``< kv_len - q_len`` some query attends: all of them, or with
                   a causal sliding window ``w`` only the last ``w - 1`` before the new
                   tokens. ``granularity="page"`` rounds that range out to whole pages
                   (what a page DMA moves); ``"token"`` (default) counts tokens, as the
                   paper does.
  hbm_bytes        the sum of the four above.
  metadata_bytes   page table entries of pages touched + kv_lens + cu_q_lens +
                   distribution (int32), reported apart and not in ``hbm_bytes`` (the
                   paper leaves them out). ``new_kv_read_bytes`` (reading the new K/V
                   inputs before the cache write) is likewise reported apart.
  For the paper's decode (n sequences, q_len 1, context c, kv_len = c + 1):
  hbm_bytes = n * d * ((c + 1) * 2 * h_kv + 2 * h_q) * bytes, exactly.

FLOPs: QK^T and PV only, 2 FLOPs per multiply-add, so 4 * h_q * d per (query, key) pair.
  flops_noncausal        4 * q_len * kv_len * h_q * d
  flops_causal_useful    pairs a causal (optionally windowed) mask keeps: query at ``p``
                         sees ``min(p + 1, w)`` keys. Fresh prefill of s: 2*s*(s+1)*h_q*d.
  flops_causal_executed  pairs the kernel computes when it walks K/V in blocks of
                         ``ckv`` aligned at position 0: query at ``p`` processes every
                         block from the one holding its first visible key up to the one
                         holding its own position (masked entries still execute), clipped
                         at ``kv_len``: ``min(kv_len, ceil((p+1)/ckv)*ckv) -
                         ckv*floor(max(0, p-w+1)/ckv)`` keys. For a fresh prefill of s
                         with ckv dividing s this is the paper's 2*s*(s+ckv)*h_q*d; with
                         ckv >= s it is the non-causal count, matching the paper's
                         ``c_kv = min(1024, s)``. ``ckv=None`` means token-exact blocks
                         (executed == useful). Decode: executed == useful.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import ModelSpec

COUNTS = ("executed", "useful")
GRANULARITIES = ("token", "page")
PAPER_CKV = 1024  # the KV compute block the paper's causal tables are consistent with


@dataclasses.dataclass(frozen=True)
class Cost:
    """Analytic cost of one kernel call (all integers; FLOPs count 2 per multiply-add)."""

    q_read_bytes: int
    kv_read_bytes: int
    kv_write_bytes: int
    out_write_bytes: int
    metadata_bytes: int  # not in hbm_bytes
    new_kv_read_bytes: int  # not in hbm_bytes
    flops_noncausal: int
    flops_causal_executed: int
    flops_causal_useful: int
    causal: bool
    count: str  # executed | useful: which causal count ``flops`` uses
    ckv: int | None
    sliding_window: int | None
    granularity: str
    phase: str  # decode | prefill | mixed (from the batch)
    num_seqs: int
    num_tokens: int
    head_dim: int  # for the matrix-unit utilisation cap
    dtype: str  # query/output dtype: the matmul compute dtype metrics use

    @property
    def hbm_bytes(self) -> int:
        return self.q_read_bytes + self.kv_read_bytes + self.kv_write_bytes + self.out_write_bytes

    @property
    def hbm_bytes_with_metadata(self) -> int:
        return self.hbm_bytes + self.metadata_bytes

    @property
    def flops(self) -> int:
        """The FLOPs metrics use: non-causal count, or the causal ``count``."""
        if not self.causal:
            return self.flops_noncausal
        return self.flops_causal_executed if self.count == "executed" else self.flops_causal_useful

    @property
    def flops_kind(self) -> str:
        return f"causal_{self.count}" if self.causal else "noncausal"

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per HBM byte."""
        return self.flops / self.hbm_bytes

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(hbm_bytes=self.hbm_bytes, flops=self.flops, flops_kind=self.flops_kind,
                   arithmetic_intensity=self.arithmetic_intensity)
        return out


# --- closed forms, vectorised over sequences ----------------------------------------------
def _check(causal: bool, sliding_window, ckv, count: str, granularity: str) -> None:
    if count not in COUNTS:
        raise ValueError(f"count={count!r}; allowed: {', '.join(COUNTS)}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r}; allowed: {', '.join(GRANULARITIES)}")
    if ckv is not None and ckv < 1:
        raise ValueError(f"ckv={ckv} must be >= 1 or None")
    if sliding_window is not None:
        if sliding_window < 1:
            raise ValueError(f"sliding_window={sliding_window} must be >= 1 or None")
        if not causal:
            raise ValueError(f"sliding_window={sliding_window} requires causal=True")


def _as_lens(q_lens, kv_lens) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(q_lens, dtype=np.int64)
    kv = np.asarray(kv_lens, dtype=np.int64)
    if q.shape != kv.shape:
        raise ValueError(f"q_lens shape {q.shape} must equal kv_lens shape {kv.shape}")
    if np.any(q < 1) or np.any(kv < q):
        raise ValueError("need q_lens >= 1 and kv_lens >= q_lens (kv_lens include the new tokens)")
    return q, kv


def _sum_min_t_w(n: np.ndarray, w: int | None) -> np.ndarray:
    """sum_{t=1..n} min(t, w)."""
    tri = n * (n + 1) // 2
    if w is None:
        return tri
    return np.where(n <= w, tri, w * (w + 1) // 2 + (n - w) * w)


def useful_pairs(q_lens, kv_lens, *, sliding_window: int | None = None) -> np.ndarray:
    """Causal (query, key) pairs kept by the mask, per sequence. i64[num_seqs]."""
    q, kv = _as_lens(q_lens, kv_lens)
    return _sum_min_t_w(kv, sliding_window) - _sum_min_t_w(kv - q, sliding_window)


def _sum_ceil_blocks(n: np.ndarray, c: int) -> np.ndarray:
    """sum_{t=1..n} c * ceil(t / c)."""
    m, r = n // c, n % c
    return c * (c * m * (m + 1) // 2 + r * (m + 1))


def _sum_floor_blocks(n: np.ndarray, c: int) -> np.ndarray:
    """sum_{t=0..n-1} c * floor(t / c)   (0 for n <= 0)."""
    n = np.maximum(n, 0)
    m, r = n // c, n % c
    return c * (c * m * (m - 1) // 2 + r * m)


def executed_pairs(q_lens, kv_lens, *, ckv: int | None, sliding_window: int | None = None) -> np.ndarray:
    """Causal pairs computed by a kernel walking K/V in ``ckv`` blocks. i64[num_seqs]."""
    q, kv = _as_lens(q_lens, kv_lens)
    if ckv is None or ckv == 1:
        return useful_pairs(q, kv, sliding_window=sliding_window)
    c = int(ckv)
    p0 = kv - q
    # upper end: min(kv, c*ceil(t/c)) summed over t = p+1 in (p0, kv]
    last = (-(-kv // c) - 1) * c  # t > last lies in the final (possibly partial) block

    def g(n):
        return _sum_ceil_blocks(n, c) - np.maximum(0, n - last) * (last + c - kv)

    hi = g(kv) - g(p0)
    if sliding_window is None:
        return hi
    w = int(sliding_window)
    # lower end: c*floor(max(0, p-w+1)/c) summed over p in [p0, kv); t = p-w+1
    lo = _sum_floor_blocks(kv - w + 1, c) - _sum_floor_blocks(p0 - w + 1, c)
    return hi - lo


def cached_tokens_read(q_lens, kv_lens, *, sliding_window: int | None = None,
                       granularity: str = "token", page_size: int = 1) -> np.ndarray:
    """Cached K/V tokens read per sequence (positions before the new ones). i64[num_seqs]."""
    q, kv = _as_lens(q_lens, kv_lens)
    end = kv - q  # cached positions are [start, end)
    start = np.zeros_like(end) if sliding_window is None else np.maximum(0, end - (sliding_window - 1))
    if granularity == "token":
        return end - start
    if granularity != "page":
        raise ValueError(f"granularity={granularity!r}; allowed: {', '.join(GRANULARITIES)}")
    pages = np.where(end > start, -(-end // page_size) - start // page_size, 0)
    return pages * page_size


def seq_cost_arrays(q_lens, kv_lens, model: ModelSpec, *, causal: bool = True,
                    sliding_window: int | None = None, ckv: int | None = None, count: str = "executed",
                    granularity: str = "token", page_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-sequence ``(hbm_bytes, flops)``, i64[num_seqs] each, same rules as :func:`batch_cost`.

    ``q_lens, kv_lens``: i64[num_seqs] (any shape, broadcast-free: equal shapes).
    """
    _check(causal, sliding_window, ckv, count, granularity)
    q, kv = _as_lens(q_lens, kv_lens)
    per_q_tok = 2 * model.num_q_heads * model.head_dim * model.dtype_bytes  # Q read + out write
    per_kv_tok = 2 * model.num_kv_heads * model.head_dim * model.kv_dtype_bytes
    cached = cached_tokens_read(q, kv, sliding_window=sliding_window, granularity=granularity,
                                page_size=page_size)
    hbm = q * per_q_tok + (cached + q) * per_kv_tok
    flops_per_pair = 4 * model.num_q_heads * model.head_dim
    if not causal:
        pairs = q * kv
    elif count == "useful":
        pairs = useful_pairs(q, kv, sliding_window=sliding_window)
    else:
        pairs = executed_pairs(q, kv, ckv=ckv, sliding_window=sliding_window)
    return hbm, pairs * flops_per_pair


def batch_cost(batch: RaggedBatch, model: ModelSpec, *, causal: bool = True, sliding_window: int | None = None,
               ckv: int | None = None, count: str = "executed", granularity: str = "token") -> Cost:
    """Exact cost of one call on ``batch`` (see the module docstring for every term)."""
    _check(causal, sliding_window, ckv, count, granularity)
    q, kv = _as_lens(batch.q_lens, batch.kv_lens)
    h_q, h_kv, d = model.num_q_heads, model.num_kv_heads, model.head_dim
    q_tok = h_q * d * model.dtype_bytes
    kv_tok = 2 * h_kv * d * model.kv_dtype_bytes
    cached = cached_tokens_read(q, kv, sliding_window=sliding_window, granularity=granularity,
                                page_size=batch.page_size)
    # pages of the attended range (cached part and new tokens) whose page-table entries are read
    first = np.zeros_like(kv) if sliding_window is None else np.maximum(0, kv - q - (sliding_window - 1))
    pages_touched = -(-kv // batch.page_size) - first // batch.page_size
    n = batch.num_seqs
    metadata = 4 * (int(pages_touched.sum()) + n + (n + 1) + 3)
    per_pair = 4 * h_q * d
    return Cost(
        q_read_bytes=int(q.sum()) * q_tok,
        kv_read_bytes=int(cached.sum()) * kv_tok,
        kv_write_bytes=int(q.sum()) * kv_tok,
        out_write_bytes=int(q.sum()) * q_tok,
        metadata_bytes=metadata,
        new_kv_read_bytes=int(q.sum()) * kv_tok,
        flops_noncausal=int((q * kv).sum()) * per_pair,
        flops_causal_executed=int(executed_pairs(q, kv, ckv=ckv, sliding_window=sliding_window).sum()) * per_pair,
        flops_causal_useful=int(useful_pairs(q, kv, sliding_window=sliding_window).sum()) * per_pair,
        causal=causal,
        count=count,
        ckv=ckv,
        sliding_window=sliding_window,
        granularity=granularity,
        phase=batch.phase,
        num_seqs=n,
        num_tokens=batch.num_tokens,
        head_dim=d,
        dtype=model.dtype,
    )


def roofline_terms_s(hbm_bytes, flops, device, *, dtype: str = "bfloat16", max_mxu_utilization: float = 1.0):
    """(memory seconds ``bytes / bandwidth``, compute seconds ``flops / (peak * cap)``).

    The one definition of the roofline's two sides (metrics and bounds use it). Works
    elementwise on numpy arrays (or scalars). ``device``: a DeviceSpec;
    ``max_mxu_utilization``: see :meth:`DeviceSpec.max_mxu_utilization`.
    """
    if not 0 < max_mxu_utilization <= 1:
        raise ValueError(f"max_mxu_utilization={max_mxu_utilization} must be in (0, 1]")
    mem = np.asarray(hbm_bytes, dtype=np.float64) / device.hbm_bw_bytes_per_s
    comp = np.asarray(flops, dtype=np.float64) / (device.peak_flops_per_s(dtype) * max_mxu_utilization)
    return (float(mem), float(comp)) if mem.ndim == 0 else (mem, comp)


def roofline_time_s(hbm_bytes, flops, device, *, dtype: str = "bfloat16", max_mxu_utilization: float = 1.0):
    """Roofline lower bound ``max(bytes / bandwidth, flops / (peak * cap))`` in seconds
    (see :func:`roofline_terms_s`)."""
    mem, comp = roofline_terms_s(hbm_bytes, flops, device, dtype=dtype, max_mxu_utilization=max_mxu_utilization)
    return max(mem, comp) if isinstance(mem, float) else np.maximum(mem, comp)
