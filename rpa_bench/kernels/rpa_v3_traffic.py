"""RPA v3's HBM traffic for a batch and block sizes, from its block iteration (no arrays).

The schedule of ``tpu_inference``'s ``ragged_paged_attention`` (v3), in numbers. One
``pallas_call`` per non-empty case (decode-only, prefill-only, mixed sequences; each with its
own ``(bq_sz, bkv_sz, bq_csz, bkv_csz)``), and per sequence of ``q`` new tokens over
``kv`` tokens (``gap = kv - q`` cached):

- query blocks: decode ``1``; prefill ``cdiv(chunk, min(bq_sz, chunk))``; mixed
  ``cdiv(q, bq_sz)``. Each query block is fetched once and its output sent once.
- for **every** query block the KV blocks ``[start, end)`` are fetched again: ``end =
  cdiv(min(kv, gap + (i + 1) * bq), bkv_sz)`` with a causal mask (else ``cdiv(kv, bkv_sz)``),
  ``start = max(gap + i * bq - window, 0) // bkv_sz`` with a sliding window (else 0). A KV
  block holds ``min(bkv_sz, kv - j * bkv_sz)`` tokens: the cached ones by one DMA per page of
  the block (``bkv_sz / page_size`` DMAs, empty ones included), the new ones by one more DMA.
  So a prefill sequence spanning N query blocks reads its KV up to N times.
- in the last query block, each KV block holding new tokens writes them to the cache, one
  DMA per page they touch.
- bytes per token: KV ``align(2 h_kv, kv_packing) * align(d, 128) * kv_itemsize`` (the
  merged K/V cache layout), queries and outputs ``h_kv * align(h_q / h_kv, q_packing) *
  align(d, 128) * q_itemsize``; packing = 4 bytes / itemsize.
- metadata: each call's scalar prefetch (kv_lens, page table, cu_q_lens, distribution and
  the kernel's own 13 semaphore / buffer ids), int32, copied once per call.

Where the kernel and this model can differ: a revision that keeps resident KV blocks across
query blocks (or merges decode fetches) moves less than modelled; the observed count
(:func:`rpa_bench.kernels.traffic.observe_traffic`) is the judge.
"""

from __future__ import annotations

import numpy as np

from rpa_bench.kernels.traffic import Traffic


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def align(x: int, m: int) -> int:
    return cdiv(x, m) * m


def _itemsize(dtype: str) -> int:
    return int(np.dtype(dtype).itemsize) if dtype != "bfloat16" else 2


def packing(dtype: str) -> int:
    return 4 // _itemsize(dtype)


def kv_token_bytes(model, head_dim_x2: bool = False) -> int:
    if head_dim_x2:  # K and V side by side in one 128-lane row per KV head (the head_dim 64 kernel)
        return align(model.num_kv_heads, packing(model.kv_dtype)) * 128 * _itemsize(model.kv_dtype)
    return align(2 * model.num_kv_heads, packing(model.kv_dtype)) * align(model.head_dim, 128) * \
        _itemsize(model.kv_dtype)


def q_token_bytes(model) -> int:
    per_kv = model.num_q_heads // model.num_kv_heads
    return model.num_kv_heads * align(per_kv, packing(model.dtype)) * align(model.head_dim, 128) * \
        _itemsize(model.dtype)


def v3_traffic(model, batch, *, block_sizes: dict, causal: bool = True, sliding_window: int | None = None,
               max_num_seqs: int | None = None, pages_per_seq: int | None = None, single_call: bool = False,
               head_dim_x2: bool = False, window_start_per_seq: bool = False) -> Traffic:
    """Modelled traffic of one v3 call on ``batch``; ``block_sizes``: case -> (bq, bkv, bq_c,
    bkv_c) as the backend's plan resolves them (decode / prefill / mixed). ``single_call``: one
    pallas_call walks every sequence with the mixed case's iteration (the head_dim 64 kernel);
    ``head_dim_x2``: its cache layout (K and V side by side in 128 lanes);
    ``window_start_per_seq``: a sliding window's first KV block is the sequence's (from its first
    query token), not each query block's (the head_dim 64 kernel)."""
    kv_tok, q_tok = kv_token_bytes(model, head_dim_x2), q_token_bytes(model)
    page = batch.page_size
    out = {k: 0 for k in ("kv_cache", "new_kv", "q", "output", "kv_cache_write", "metadata")}
    dmas = dict.fromkeys(out, 0)
    iterations = 0
    cases = {"decode": [], "prefill": [], "mixed": []}
    for i in range(batch.num_seqs):
        cases["mixed" if single_call else batch.seq_class(i)].append(i)
    max_seqs = max_num_seqs or batch.num_seqs
    pps = pages_per_seq or max(batch.pages_per_seq)
    calls = 0
    for case, seqs in cases.items():
        if not seqs:
            continue
        calls += 1
        bq_sz, bkv_sz = int(block_sizes[case][0]), int(block_sizes[case][1])
        bkv_p = bkv_sz // page
        out["metadata"] += 4 * (max_seqs + max_seqs * pps + max_seqs + 1 + 3 + 13)  # v3: 13 ids; hd64: 3+4+6
        dmas["metadata"] += 1
        for s in seqs:
            q, kv = int(batch.q_lens[s]), int(batch.kv_lens[s])
            gap = kv - q
            if case == "decode":
                abq, num_bq = 1, 1
            elif case == "prefill":
                chunk = int(batch.chunk_prefill_size)
                abq = min(bq_sz, chunk)
                num_bq = cdiv(chunk, abq)
            else:
                abq, num_bq = bq_sz, cdiv(q, bq_sz)
            for b in range(num_bq):
                rows = min(bq_sz, q - b * bq_sz)  # the q / output DMAs use the kernel's bq_sz
                out["q"] += max(rows, 0) * q_tok
                out["output"] += max(rows, 0) * q_tok
                dmas["q"] += 1
                dmas["output"] += 1
                done = gap + b * abq
                first = gap if window_start_per_seq else done
                start = 0 if sliding_window is None else max(first - sliding_window, 0) // bkv_sz
                end = cdiv(min(kv, done + abq) if causal else kv, bkv_sz)
                for j in range(start, end):
                    iterations += 1
                    left = kv - j * bkv_sz
                    from_cache = min(max(left - q, 0), bkv_sz)
                    from_new = min(bkv_sz - from_cache, left - max(left - q, 0))
                    out["kv_cache"] += from_cache * kv_tok
                    out["new_kv"] += from_new * kv_tok
                    dmas["kv_cache"] += bkv_p
                    dmas["new_kv"] += 1
                    if b == num_bq - 1 and from_new > 0:
                        offset = j * bkv_sz + from_cache
                        out["kv_cache_write"] += from_new * kv_tok
                        dmas["kv_cache_write"] += cdiv(offset + from_new, page) - offset // page
    return Traffic(out, dmas, iterations=iterations, kernel_calls=calls, source="model")
