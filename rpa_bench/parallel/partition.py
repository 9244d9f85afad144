"""Sequences of a ragged batch split across the ``data`` axis, balanced by roofline time.

Balancing by sequence count would give one device all the long prefills; balancing by
the roofline time of each sequence (max of its bytes over bandwidth and its FLOPs over
peak) is what bounds the step time. The split is greedy longest-processing-time (LPT):
sequences in decreasing time, each to the least-loaded device; LPT's makespan is at
most 4/3 - 1/(3m) of the optimum for m devices.

Each device keeps its sequences in their original (kernel) order, so every device's
sub-batch is itself a valid :class:`RaggedBatch`. A device can get no sequence when the
batch has fewer sequences than devices; it then runs an all-padding call.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Sequence

import numpy as np

from rpa_bench.roofline.cost import roofline_time_s, seq_cost_arrays
from rpa_bench.workloads.batch import RaggedBatch


def balance_lpt(seq_time_s: Sequence[float], num_parts: int) -> tuple[tuple[int, ...], ...]:
    """Greedy LPT: indices of ``seq_time_s`` per part, ascending within each part.

    Ties (equal times, e.g. a decode batch of equal contexts) go to the part with fewer
    sequences, then the lower part index, so equal sequences spread evenly and the
    result is deterministic.
    """
    if num_parts < 1:
        raise ValueError(f"num_parts={num_parts} must be >= 1")
    times = np.asarray(seq_time_s, dtype=np.float64)
    if times.ndim != 1:
        raise ValueError(f"seq_time_s must be one-dimensional; got shape {times.shape}")
    if np.any(~np.isfinite(times)) or np.any(times < 0):
        raise ValueError(f"seq_time_s must be finite and >= 0; got {times.tolist()}")
    heap = [(0.0, 0, p) for p in range(num_parts)]  # (load, count, part)
    parts: list[list[int]] = [[] for _ in range(num_parts)]
    for i in sorted(range(len(times)), key=lambda i: (-times[i], i)):
        load, count, p = heapq.heappop(heap)
        parts[p].append(i)
        heapq.heappush(heap, (load + float(times[i]), count + 1, p))
    return tuple(tuple(sorted(p)) for p in parts)


@dataclasses.dataclass(frozen=True)
class DataPartition:
    """``batch``'s sequences split into ``len(seq_ids)`` parts (one per ``data`` index)."""

    batch: RaggedBatch
    seq_ids: tuple[tuple[int, ...], ...]  # per part: indices into batch, ascending (kernel order)
    seq_time_s: tuple[float, ...]  # per sequence: the modelled time the split balanced

    def __post_init__(self) -> None:
        object.__setattr__(self, "seq_ids", tuple(tuple(int(i) for i in p) for p in self.seq_ids))
        object.__setattr__(self, "seq_time_s", tuple(float(t) for t in self.seq_time_s))
        if not self.seq_ids:
            raise ValueError("partition needs at least one part (seq_ids is empty)")
        if len(self.seq_time_s) != self.batch.num_seqs:
            raise ValueError(
                f"len(seq_time_s)={len(self.seq_time_s)} must equal batch.num_seqs={self.batch.num_seqs}"
            )
        flat = sorted(i for p in self.seq_ids for i in p)
        if flat != list(range(self.batch.num_seqs)):
            raise ValueError(
                f"seq_ids must hold each of the batch's {self.batch.num_seqs} sequences exactly once; "
                f"got {self.seq_ids}"
            )
        for k, p in enumerate(self.seq_ids):
            if list(p) != sorted(p):
                raise ValueError(f"seq_ids[{k}]={p} must be ascending (kernel order)")

    @property
    def num_parts(self) -> int:
        return len(self.seq_ids)

    def sub_batch(self, part: int) -> RaggedBatch | None:
        """The part's sequences as a batch (None for a part with no sequence)."""
        ids = self.seq_ids[part]
        if not ids:
            return None
        b = self.batch
        return RaggedBatch(
            tuple(b.q_lens[i] for i in ids), tuple(b.kv_lens[i] for i in ids),
            b.page_size, b.chunk_prefill_size,
        )

    @property
    def sub_batches(self) -> tuple[RaggedBatch | None, ...]:
        return tuple(self.sub_batch(p) for p in range(self.num_parts))

    def token_rows(self, part: int) -> np.ndarray:
        """Rows of the unsharded query array held by ``part``, in the part's order."""
        cu = self.batch.cu_q_lens()
        rows = [np.arange(cu[i], cu[i + 1]) for i in self.seq_ids[part]]
        return np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)

    # --- per-part sizes (the common padded shape is the max over parts) ------------------
    @property
    def tokens_per_part(self) -> tuple[int, ...]:
        return tuple(sum(self.batch.q_lens[i] for i in p) for p in self.seq_ids)

    @property
    def seqs_per_part(self) -> tuple[int, ...]:
        return tuple(len(p) for p in self.seq_ids)

    @property
    def pages_per_part(self) -> tuple[int, ...]:
        pps = self.batch.pages_per_seq
        return tuple(sum(pps[i] for i in p) for p in self.seq_ids)

    @property
    def part_time_s(self) -> tuple[float, ...]:
        """Modelled time of each part (sum of its sequences' roofline times)."""
        return tuple(sum(self.seq_time_s[i] for i in p) for p in self.seq_ids)

    @property
    def modelled_imbalance(self) -> float:
        """max / mean of the parts' modelled times (1.0: perfectly balanced)."""
        times = self.part_time_s
        mean = sum(times) / len(times)
        return max(times) / mean if mean > 0 else 1.0


def partition_batch(batch: RaggedBatch, num_parts: int, *, seq_time_s: Sequence[float]) -> DataPartition:
    """Split ``batch`` over ``num_parts`` devices by LPT on ``seq_time_s`` (one per sequence)."""
    if len(seq_time_s) != batch.num_seqs:
        raise ValueError(f"len(seq_time_s)={len(seq_time_s)} must equal batch.num_seqs={batch.num_seqs}")
    return DataPartition(batch, balance_lpt(seq_time_s, num_parts), tuple(seq_time_s))


def partition_by_count(batch: RaggedBatch, num_parts: int) -> DataPartition:
    """Round-robin split ignoring cost (a baseline to compare the balanced split with)."""
    if num_parts < 1:
        raise ValueError(f"num_parts={num_parts} must be >= 1")
    ids = tuple(tuple(range(p, batch.num_seqs, num_parts)) for p in range(num_parts))
    return DataPartition(batch, ids, (1.0,) * batch.num_seqs)


def roofline_seq_time_s(batch: RaggedBatch, model, attn, device_spec, *, ckv: int | None = None) -> np.ndarray:
    """Per-sequence roofline lower bound on one device: ``max(bytes / bw, flops / peak)``.

    ``model``: the per-device attention shape (``MeshSpec.local_model``); ``attn``: an
    AttentionSpec; ``device_spec``: a roofline DeviceSpec (rescaled to one device here).
    The FLOP roof uses the model dtype's peak (bf16 when the device publishes none) and the
    matrix unit's cap for the head dim. f64[num_seqs].
    """

    one = device_spec.per_device_spec()
    hbm, flops = seq_cost_arrays(
        batch.q_lens, batch.kv_lens, model, causal=attn.causal,
        sliding_window=attn.sliding_window if attn.causal else None, ckv=ckv, page_size=batch.page_size,
    )
    try:
        one.peak_flops_per_s(model.dtype)
        dtype = model.dtype
    except ValueError:
        dtype = "bfloat16"
    return np.atleast_1d(roofline_time_s(hbm, flops, one, dtype=dtype,
                                         max_mxu_utilization=one.max_mxu_utilization(model.head_dim)))
