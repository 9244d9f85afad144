"""The roofline's view of speculative decoding's verify step.

A verify call carries ``q`` tokens per sequence over a context of ``c`` cached tokens:
bytes are dominated by the cache (read once whatever ``q``), FLOPs grow with ``q``. The
call is bandwidth bound while ``flops / peak < bytes / bandwidth``; :func:`verify_crossover`
finds the first ``q`` at which it stops being so on a device (exact cost model, not an
asymptote).
"""

from __future__ import annotations

import dataclasses

from rpa_bench.roofline.cost import batch_cost
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import ModelSpec


@dataclasses.dataclass(frozen=True)
class VerifyPoint:
    query_len: int
    hbm_bytes: int
    flops: int
    memory_time_s: float
    compute_time_s: float

    @property
    def bound_by(self) -> str:
        return "compute" if self.compute_time_s > self.memory_time_s else "memory"

    @property
    def intensity(self) -> float:
        return self.flops / self.hbm_bytes


def verify_point(model: ModelSpec, device, *, num_seqs: int, context_len: int, query_len: int,
                 page_size: int = 256) -> VerifyPoint:
    batch = RaggedBatch.ordered([query_len] * num_seqs, [context_len + query_len] * num_seqs, page_size=page_size)
    cost = batch_cost(batch, model, causal=True, count="useful")
    peak = device.peak_flops_per_s(model.dtype if model.dtype != "float32" else "bfloat16")
    cap = device.max_mxu_utilization(model.head_dim)
    return VerifyPoint(query_len, cost.hbm_bytes, cost.flops, cost.hbm_bytes / device.hbm_bw_bytes_per_s,
                       cost.flops / (peak * cap))


def verify_crossover(model: ModelSpec, device, *, num_seqs: int, context_len: int, max_query_len: int = 256,
                     page_size: int = 256) -> int | None:
    """The smallest tokens-per-sequence at which the verify call is compute bound (None: not up to ``max_query_len``)."""
    for q in range(1, max_query_len + 1):
        if verify_point(model, device, num_seqs=num_seqs, context_len=context_len, query_len=q,
                        page_size=page_size).bound_by == "compute":
            return q
    return None
