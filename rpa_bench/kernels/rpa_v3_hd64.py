"""tpu-inference's RPA for head_dim 64 (``v3/kernel_hd64.py``), the only path with attention sinks.

What tpu-inference runs for every model whose head_dim is 64 (its attention interface switches
on ``q.shape[-1] == 64``), e.g. gpt-oss with its learned sinks (``attention_sink: f32[h_q]``).
The API is v3's (new K/V in, cache updated in place, ``distribution``) with one block-size pair
for every case: ``num_kv_pages_per_block`` / ``num_queries_per_block``, looked up in its own
tuned table (``tuned_block_sizes_hd64``) for the target generation as production does.
The cache layout: ``[pages, page_size, align(h_kv, packing) / packing, packing, 128]``, K and
V side by side in the last axis (64 + 64).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from rpa_bench.kernels import tpu_target
from rpa_bench.kernels.backend_util import (
    UpstreamKernel,
    attention_kwargs,
    device_kind,
    positive_int,
    take_options,
    v3_signature_call,
)
from rpa_bench.kernels.base import Capabilities, PreparedCall, check_capabilities
from rpa_bench.kernels.declaration import KernelDeclaration
from rpa_bench.kernels.tuning import PageBlockTuning
from rpa_bench.kernels.rpa_v3_traffic import align, packing, v3_traffic
from rpa_bench.kernels.traffic import Traffic
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.materialize import KernelInputs
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

MODULE = "kernels.ragged_paged_attention.v3.kernel_hd64"
OPTIONS = {"num_kv_pages_per_block": None, "num_queries_per_block": None, "vmem_limit_bytes": None,
           "generation": None}
CAPABILITIES = Capabilities(
    dtypes=("float32", "bfloat16"),
    # static_validate_inputs: the cache must be floating point and of the new K/V's dtype
    kv_dtypes=("float32", "bfloat16", "float8_e4m3fn", "float8_e5m2"),
    head_dims=(64,),
    page_sizes=None,
    # causal only (no mask switch); sinks are this kernel's own feature
    features=frozenset({"sliding_window", "soft_cap", "kv_scales", "kv_update", "chunked_prefill", "attention_sinks"}),
    updates_kv_cache=True,
)


class RpaV3Hd64Backend(UpstreamKernel):
    """``ragged_paged_attention_hd64``; ``source``: installed release, checkout path, or path@ref."""

    name = "rpa_v3_hd64"
    upstream, missing = MODULE, "head_dim 64 kernel"
    capabilities = CAPABILITIES
    tuning = PageBlockTuning()

    def __init__(self, *, source: str | None = None, options: Mapping[str, Any] | None = None) -> None:
        opts = take_options(self.name, options, OPTIONS)
        self.options, self.source = opts, source
        self.num_kv_pages_per_block = positive_int(self.name, "num_kv_pages_per_block", opts["num_kv_pages_per_block"])
        self.num_queries_per_block = positive_int(self.name, "num_queries_per_block", opts["num_queries_per_block"])
        self.vmem_limit_bytes = positive_int(self.name, "vmem_limit_bytes", opts["vmem_limit_bytes"])
        self.generation = opts["generation"]
        if self.generation is not None:
            device_kind(self.name, self.generation)

    def validate(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch | None = None) -> None:
        check_capabilities(self.name, self.capabilities, model, attn, batch)
        if batch is not None and batch.page_size % packing(model.kv_dtype):
            raise ValueError(f"kernel={self.name}: page_size={batch.page_size} unsupported for "
                             f"model.kv_dtype={model.kv_dtype!r}; allowed: multiples of {packing(model.kv_dtype)}")

    def block_sizes(self, model: ModelSpec, batch: RaggedBatch, *, generation: str | None = None) -> dict:
        """(num_kv_pages_per_block, num_queries_per_block), where each came from, and the generation."""
        mod = self.module()
        kind = device_kind(self.name, generation or self.generation)
        pages = max(batch.pages_per_seq)
        tuned = mod.get_tuned_block_sizes
        table = sys.modules[tuned.__module__]
        args = (jnp.dtype(model.dtype), jnp.dtype(model.kv_dtype), model.num_q_heads, model.num_kv_heads,
                model.head_dim, batch.page_size, batch.num_tokens, pages)
        with tpu_target.as_tpu(table, kind):
            kv_pages, queries = tuned(*args)
            # in the table, or the kernel's per-generation fallback (it logs "Couldn't find tuned sizes")
            origin = "tuned" if _in_table(table, args) else "fallback"
        source = {"num_kv_pages_per_block": f"{origin}:{kind}", "num_queries_per_block": f"{origin}:{kind}"}
        if self.num_kv_pages_per_block is not None:
            kv_pages, source["num_kv_pages_per_block"] = self.num_kv_pages_per_block, "config"
        if self.num_queries_per_block is not None:
            queries, source["num_queries_per_block"] = self.num_queries_per_block, "config"
        return {"num_kv_pages_per_block": int(kv_pages), "num_queries_per_block": int(queries), "source": source,
                "device_kind": kind}

    def vmem_estimate_bytes(self, model: ModelSpec, meta: Mapping[str, Any]) -> int | None:
        """The kernel's own ``get_vmem_estimate_bytes`` for a build's block sizes."""
        bq, bkv = meta.get("num_queries_per_block"), meta.get("num_kv_pages_per_block")
        if bq is None or bkv is None or meta.get("page_size") is None:
            return None
        return int(self.module().get_vmem_estimate_bytes(
            model.num_kv_heads, model.num_queries_per_kv, model.head_dim, bq, bkv * meta["page_size"],
            jnp.dtype(model.dtype), jnp.dtype(model.kv_dtype)))

    # --- traffic --------------------------------------------------------------------------
    def traffic(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch, *,
                generation: str | None = None) -> Traffic:
        """Modelled traffic: v3's block iteration with one (bq, bkv) for every sequence, one call,
        and no causal trim: every query block walks the KV blocks to the sequence's end
        (``num_bkv = cdiv(kv_len, bkv_sz)``); a sliding window moves the first block once per
        sequence (from its first query token), not per query block."""
        b = self.block_sizes(model, batch, generation=generation)
        bq, bkv = b["num_queries_per_block"], b["num_kv_pages_per_block"] * batch.page_size
        return v3_traffic(model, batch, block_sizes=dict.fromkeys(("decode", "prefill", "mixed"), (bq, bkv)),
                          causal=False, sliding_window=attn.sliding_window, single_call=True,
                          head_dim_x2=True, window_start_per_seq=True)

    def traffic_blocks(self, model: ModelSpec, batch: RaggedBatch, generation: str | None = None) -> dict:
        b = self.block_sizes(model, batch, generation=generation)
        return {k: b[k] for k in ("num_kv_pages_per_block", "num_queries_per_block")}

    def traffic_operands(self, model: ModelSpec, inputs: KernelInputs) -> dict[tuple[int, ...], str]:
        q_pack, kv_pack = packing(model.dtype), packing(model.kv_dtype)
        h_kv = model.num_kv_heads
        per_kv = align(model.num_q_heads // h_kv, q_pack)
        kv_heads = align(h_kv, kv_pack)
        tokens = int(inputs.queries.shape[0])
        pages, page = int(inputs.k_cache.shape[0]), int(inputs.k_cache.shape[1])
        return {(h_kv, tokens, per_kv // q_pack, q_pack, 128): "q",
                (tokens, kv_heads // kv_pack, kv_pack, 128): "new_kv",
                (pages, page, kv_heads // kv_pack, kv_pack, 128): "kv_cache"}

    # --- build ----------------------------------------------------------------------------
    def build(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch, *, interpret: bool = False) -> PreparedCall:
        self.validate(model, attn, batch)
        mod = self.module()
        blocks = self.block_sizes(model, batch)
        static = dict(
            attention_kwargs(model, attn),
            chunk_prefill_size=batch.chunk_prefill_size,
            num_kv_pages_per_block=blocks["num_kv_pages_per_block"],
            num_queries_per_block=blocks["num_queries_per_block"],
            vmem_limit_bytes=self.vmem_limit_bytes,
        )
        h_kv, d = model.num_kv_heads, model.head_dim

        def merge(k_cache, v_cache):
            pages, page = k_cache.shape[:2]
            merged = mod.merge_kv(k_cache.reshape(-1, h_kv, d), v_cache.reshape(-1, h_kv, d))
            return merged.reshape(pages, page, *merged.shape[1:])

        def split(kv_cache):
            pages, page = kv_cache.shape[:2]
            flat = kv_cache.reshape(pages, page, -1, 2 * d)[:, :, :h_kv]
            return flat[..., :d], flat[..., d:]

        meta = {
            "num_kv_pages_per_block": blocks["num_kv_pages_per_block"],
            "num_queries_per_block": blocks["num_queries_per_block"],
            "page_size": batch.page_size,
            "block_sizes_source": blocks["source"],
            "device_kind": blocks["device_kind"],
            "vmem_limit_bytes": self.vmem_limit_bytes,
            "kernel_includes_prep": True,
            "pallas_name_prefix": "RPA",
            "source": self.source,
        }
        return v3_signature_call(mod.ragged_paged_attention_hd64, static, merge=merge, split=split, meta=meta,
                                 interpret=interpret, sinks=True)


def _in_table(table, args) -> bool:
    """Whether ``get_tuned_block_sizes(*args)`` found its keys in the tuned table."""
    q_dtype, kv_dtype, h_q, h_kv, d, page, _, pages = args
    try:
        device, page_size, dtypes, head_dims, extra = table.get_lookup_keys(page, q_dtype, kv_dtype, h_q, h_kv, d,
                                                                            page * pages, None)
        table.TUNED_BLOCK_SIZES[device][page_size][dtypes][head_dims][extra]  # noqa: B018
    except (KeyError, AttributeError, TypeError):
        return False
    return True


DECLARATION = KernelDeclaration(
    name="rpa_v3_hd64", backend=RpaV3Hd64Backend, pallas=True, takes_source=True, upstream_module=MODULE,
    summary="tpu-inference RPA for head_dim 64, with attention sinks (gpt-oss)")
