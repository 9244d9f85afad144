"""Settings of the continuous-batching simulation, validated before anything runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from rpa_bench.typed import from_dict
from rpa_bench.workloads.batch import cdiv

SAMPLING_METHODS = ("all", "every_k", "stratified", "top_n")
PAD_TO = ("scheduler", "exact", "pow2")


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """Which simulated steps become benchmark points (see :mod:`.sampling`)."""

    method: str = "stratified"
    every_k: int = 1000  # every_k: keep steps 0, k, 2k, ...
    per_bucket: int = 1  # stratified: steps drawn per (tokens, max kv_len) bucket
    top_n: int = 16  # top_n: the N steps with the longest modelled time
    max_points: int | None = None  # cap on points (stratified: largest buckets kept)

    def __post_init__(self) -> None:
        if self.method not in SAMPLING_METHODS:
            raise ValueError(f"sampling.method={self.method!r}; allowed: {', '.join(SAMPLING_METHODS)}")
        for field in ("every_k", "per_bucket", "top_n"):
            if getattr(self, field) < 1:
                raise ValueError(f"sampling.{field}={getattr(self, field)} must be >= 1")
        if self.max_points is not None and self.max_points < 1:
            raise ValueError(f"sampling.max_points={self.max_points} must be >= 1 or null")


@dataclasses.dataclass(frozen=True)
class SchedulerSpec:
    """vLLM-v1-like scheduler and the hardware that times its steps.

    ``chunk_prefill_size``: when set, no request gets more than this many prefill tokens
    in one step, and batches carry it so full chunks form v3's fixed-chunk prefill class.
    ``prefix_cache_blocks``: LRU capacity of the prefix cache in ``prefix_block_tokens``
    blocks (None: as many blocks as the KV page pool holds tokens).
    ``device`` names the device whose peaks time the steps (roofline device specs);
    ``hbm_bw_bytes_per_s`` / ``peak_flops_per_s`` override them.
    """

    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    page_size: int = 256
    num_kv_pages: int = 4096
    chunked_prefill: bool = True
    chunk_prefill_size: int | None = None
    prefix_caching: bool = False
    prefix_block_tokens: int = 512
    prefix_cache_blocks: int | None = None
    device: str = "tpu7x"
    hbm_bw_bytes_per_s: float | None = None
    peak_flops_per_s: float | None = None
    step_overhead_s: float = 0.0003
    pad_to: str = "scheduler"
    sampling: SamplingSpec = dataclasses.field(default_factory=SamplingSpec)

    def __post_init__(self) -> None:
        for field in ("max_num_batched_tokens", "max_num_seqs", "page_size", "num_kv_pages", "prefix_block_tokens"):
            value = getattr(self, field)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"scheduler.{field}={value!r} must be an integer >= 1")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"scheduler.max_num_batched_tokens={self.max_num_batched_tokens} must be >= "
                f"scheduler.max_num_seqs={self.max_num_seqs} (every running decode needs a token)"
            )
        if self.chunk_prefill_size is not None and not 2 <= self.chunk_prefill_size <= self.max_num_batched_tokens:
            raise ValueError(
                f"scheduler.chunk_prefill_size={self.chunk_prefill_size} must be null or in "
                f"[2, max_num_batched_tokens={self.max_num_batched_tokens}]"
            )
        if self.chunk_prefill_size is not None and not self.chunked_prefill:
            raise ValueError(
                f"scheduler.chunk_prefill_size={self.chunk_prefill_size} needs scheduler.chunked_prefill=true"
            )
        if self.prefix_cache_blocks is not None and self.prefix_cache_blocks < 0:
            raise ValueError(f"scheduler.prefix_cache_blocks={self.prefix_cache_blocks} must be >= 0 or null")
        if not self.step_overhead_s >= 0:
            raise ValueError(f"scheduler.step_overhead_s={self.step_overhead_s} must be >= 0")
        if self.pad_to not in PAD_TO:
            raise ValueError(f"scheduler.pad_to={self.pad_to!r}; allowed: {', '.join(PAD_TO)}")
        if isinstance(self.sampling, dict):
            object.__setattr__(self, "sampling", SamplingSpec(**self.sampling))

    @property
    def cache_capacity_blocks(self) -> int:
        if self.prefix_cache_blocks is not None:
            return self.prefix_cache_blocks
        return self.num_kv_pages * self.page_size // self.prefix_block_tokens

    @property
    def chunk_cap(self) -> int:
        """Most prefill tokens one request may get in one step."""
        return self.chunk_prefill_size or self.max_num_batched_tokens

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SchedulerSpec":
        return from_dict(cls, d, section="scheduler")


def check_feasible(spec: SchedulerSpec, prompt_len: np.ndarray, output_len: np.ndarray) -> None:
    """Refuse settings under which some request could never run (before simulating).

    prompt_len,  # i64[N]
    output_len,  # i64[N]
    """
    if len(prompt_len) == 0:
        raise ValueError("the trace has no requests")
    need_pages = -(-(prompt_len + output_len - 1) // spec.page_size)
    worst = int(np.argmax(need_pages))
    if need_pages[worst] > spec.num_kv_pages:
        raise ValueError(
            f"scheduler.num_kv_pages={spec.num_kv_pages} is smaller than request {worst}'s need: "
            f"prompt {int(prompt_len[worst])} + output {int(output_len[worst])} - 1 tokens = "
            f"{int(need_pages[worst])} pages of page_size={spec.page_size}"
        )
    if not spec.chunked_prefill:
        longest = int(np.argmax(prompt_len))
        if prompt_len[longest] > spec.max_num_batched_tokens:
            raise ValueError(
                f"request {longest}'s prompt of {int(prompt_len[longest])} tokens exceeds "
                f"scheduler.max_num_batched_tokens={spec.max_num_batched_tokens} with chunked_prefill=false"
            )


def pages_for(tokens: int, page_size: int) -> int:
    return cdiv(tokens, page_size)
