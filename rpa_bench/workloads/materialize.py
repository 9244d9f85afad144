"""Materialisation of a RaggedBatch into canonical kernel inputs (arrays on device).

Canonical layout (every backend converts from this in its ``prepare`` step):
- the cache holds each sequence's *context* tokens (positions ``< kv_len - q_len``);
  the new tokens' K/V come separately in ``new_keys`` / ``new_values`` and are written
  into the cache by kernels that update it (v3), or by the backend's preparation (v2,
  JAX RPA, which read but never write the cache);
- unused pages, padding rows and not-yet-written slots are NaN-poisoned (floating KV),
  so a kernel that reads out of range or leaves output unwritten shows it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import ModelSpec


@dataclasses.dataclass
class KernelInputs:
    batch: RaggedBatch
    model: ModelSpec
    max_num_batched_tokens: int  # T_pad: rows of queries / new K / new V
    max_num_seqs: int  # S_pad: entries of kv_lens, rows of page_indices
    queries: Any  # [T_pad, h_q, d] model.dtype
    new_keys: Any  # [T_pad, h_kv, d] model.kv_dtype
    new_values: Any  # [T_pad, h_kv, d] model.kv_dtype
    k_cache: Any  # [num_pages, page_size, h_kv, d] model.kv_dtype
    v_cache: Any  # [num_pages, page_size, h_kv, d] model.kv_dtype
    kv_lens: Any  # i32[S_pad], including new tokens; 0 for padding sequences
    page_indices: Any  # i32[S_pad, pages_per_seq]; shuffled, non-contiguous pages
    cu_q_lens: Any  # i32[S_pad + 1]; padding sequences have q_len 0
    num_seqs: Any  # i32[1]
    distribution: Any  # i32[3]: (decode_end, prefill_end, num_seqs)
    seed: int = 0

    @property
    def pages_per_seq(self) -> int:
        return int(self.page_indices.shape[1])

    @property
    def num_pages(self) -> int:
        return int(self.k_cache.shape[0])
