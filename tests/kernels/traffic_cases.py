"""Random ragged batches and the model-vs-observation comparison the traffic tests share."""

from __future__ import annotations

import random

from rpa_bench.kernels.traffic import observe_traffic
from rpa_bench.workloads.batch import RaggedBatch


def random_lens(kind: str, rng: random.Random) -> tuple[list[int], list[int], int | None]:
    """(q_lens, kv_lens, prefill chunk) of 1-5 sequences: all decodes, fixed-chunk prefills, or mixed."""
    n = rng.randint(1, 5)
    chunk = None
    if kind == "decode":
        q = [1] * n
        kv = [rng.randint(1, 150) for _ in range(n)]
    elif kind == "prefill":
        chunk = rng.choice([16, 24, 40])
        q = [chunk] * n
        kv = [chunk + rng.randint(0, 100) for _ in range(n)]
    else:
        q = [rng.randint(2, 45) for _ in range(n)]
        kv = [x + rng.randint(0, 90) for x in q]
    return q, kv, chunk


def modelled_and_observed(backend, model, attn, batch: RaggedBatch):
    return backend.traffic(model, attn, batch), observe_traffic(backend, model, attn, batch)


def assert_model_equals_observation(modelled, observed, *context) -> None:
    """Same bytes per operand, and the same DMA count per operand (the model's metadata aside)."""
    assert modelled.comparable() == observed.comparable(), context
    assert {k: v for k, v in modelled.dmas_by_operand.items() if k != "metadata" and v} == \
        {k: v for k, v in observed.dmas_by_operand.items() if v}, context
