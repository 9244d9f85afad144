"""HBM traffic of the older RPA kernel (tpu-inference v2, JAX's own), from its block iteration.

One ``pallas_call`` over the grid ``(head blocks H, query blocks Qb)``, ``Qb = cdiv(T, bq)``
for the ``T`` rows of the query array (padding rows included), ``bq =
num_queries_per_block``; a head block holds ``heads_q`` query heads and ``heads_kv2`` merged
K/V heads (``get_min_heads_per_blk``), ``H = h_q / heads_q``:

- queries and outputs are pipelined by ``BlockSpec``: each grid step reads its ``[bq,
  heads_q, d]`` query block and writes its output block once (the in-bounds rows), so every
  query and output byte moves once: ``T * h_q * d * itemsize`` each way, ``H * Qb`` copies.
- KV: in each query block the kernel walks the sequences whose query rows meet it, and for
  **each** of them fetches **all** its KV blocks (``cdiv(kv_len, bkv)`` of ``bkv =
  num_kv_pages_per_block * page_size`` tokens; no causal or sliding-window skip: masked
  blocks are fetched and computed). A KV block is ``num_kv_pages_per_block`` page DMAs of
  ``page_size * heads_kv2 * d`` elements, whole pages, and pages past the sequence's end are
  clamped to its first page and fetched all the same. So a sequence whose rows span N query
  blocks reads its KV N times, and a short sequence reads a whole block of pages.
- the cache is not written: the new tokens' K/V reach ``kv_pages`` before the call (the
  backend's timed ``prepare``, outside the kernel).
- metadata: the scalar prefetch (``kv_lens``, page table, ``cu_q_lens``, ``seq_buf_idx``,
  ``num_seqs``), int32, once per call.

The simulation follows the kernel's own loop (its ``seq_buf_idx`` carried across grid steps)
rather than a closed form, so ragged edges (a sequence ending exactly on a query block's end,
several short sequences in one block) come out as the kernel does them.
"""

from __future__ import annotations

import numpy as np

from rpa_bench.kernels.traffic import Traffic


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def _itemsize(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else int(np.dtype(dtype).itemsize)


def old_api_traffic(model, batch, *, num_kv_pages_per_block: int, num_queries_per_block: int, heads_q: int,
                    heads_kv2: int, num_tokens: int | None = None, max_num_seqs: int | None = None,
                    pages_per_seq: int | None = None) -> Traffic:
    """Modelled traffic of one call; ``heads_q`` / ``heads_kv2``: the kernel's heads per block."""
    d = model.head_dim
    h_q, h_kv = model.num_q_heads, model.num_kv_heads
    q_isz, kv_isz = _itemsize(model.dtype), _itemsize(model.kv_dtype)
    t = int(num_tokens or batch.num_tokens)
    bq, npb, page = int(num_queries_per_block), int(num_kv_pages_per_block), int(batch.page_size)
    bkv = npb * page
    heads = h_q // heads_q
    q_blocks = cdiv(t, bq)
    cu = [0, *np.cumsum(batch.q_lens).tolist()]
    n = batch.num_seqs
    kv_blocks = 0
    seq = 0
    for _ in range(heads):
        for qb in range(q_blocks):
            start, end = qb * bq, (qb + 1) * bq
            done = False
            while not done and start < cu[n] and seq < n:
                kv_blocks += cdiv(batch.kv_lens[seq], bkv)
                q_end = cu[seq + 1]
                if q_end <= end:
                    seq += 1
                done = q_end >= end
        seq = seq if seq < n else 0
    q_bytes = t * h_q * d * q_isz
    max_seqs = max_num_seqs or n
    pps = pages_per_seq or max(batch.pages_per_seq)
    out = {"kv_cache": kv_blocks * npb * page * heads_kv2 * d * kv_isz, "new_kv": 0, "q": q_bytes,
           "output": q_bytes, "kv_cache_write": 0, "metadata": 4 * (max_seqs + max_seqs * pps + max_seqs + 1 + 2 + 1)}
    dmas = {"kv_cache": kv_blocks * npb, "new_kv": 0, "q": heads * q_blocks, "output": heads * q_blocks,
            "kv_cache_write": 0, "metadata": 1}
    assert heads * heads_kv2 == 2 * h_kv, (heads, heads_kv2, h_kv)
    return Traffic(out, dmas, iterations=kv_blocks, kernel_calls=1, source="model")
