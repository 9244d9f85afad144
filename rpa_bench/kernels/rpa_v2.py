"""tpu-inference RPA v2 as a backend, and the older RPA API it shares with JAX's own kernel.

The older API takes ``q [T, h_q, d]``, ``kv_pages [pages, page_size, 2*h_kv, d]`` (K and
V interleaved per head: even = K, odd = V), ``kv_lens``, ``page_indices [S, pages_per_seq]``,
``cu_q_lens``, ``num_seqs`` and block sizes ``num_kv_pages_per_block`` /
``num_queries_per_block``. It never writes the cache, so:

- ``layout`` (not timed) interleaves the canonical K/V caches into ``kv_pages``;
- ``prepare`` (timed: the paper's "Incl. Prep") scatters the new tokens' K/V into
  ``kv_pages``, donating it so the update is in place as in a serving engine;
- ``kernel`` is the jitted ``ragged_paged_attention``; it returns the output and the
  (updated) ``kv_pages`` so ``finish`` can hand back canonical caches.

Default block sizes come from JAX's tuned table (``get_tuned_block_sizes``) for the
target generation (option ``generation``; else the attached TPU; else TPU7x), with
``num_kv_pages_per_block`` at most the batch's pages per sequence.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from rpa_bench.kernels import loader, tpu_target
from rpa_bench.kernels.backend_util import (
    UpstreamKernel,
    attention_kwargs,
    call_context,
    device_kind,
    positive_int,
    settled,
    take_options,
)
from rpa_bench.kernels.declaration import KernelDeclaration
from rpa_bench.kernels.tuning import PageBlockTuning
from rpa_bench.kernels.base import Capabilities, KernelOutput, KernelProvenance, PreparedCall, check_capabilities
from rpa_bench.kernels.old_api_traffic import old_api_traffic
from rpa_bench.kernels.reference import kv_write_slots
from rpa_bench.kernels.traffic import Traffic
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.materialize import KernelInputs
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

OPTIONS = {"num_kv_pages_per_block": None, "num_queries_per_block": None, "vmem_limit_bytes": None, "generation": None}

OLD_API_CAPABILITIES = Capabilities(
    dtypes=("float32", "bfloat16"),
    # Integer KV caches are a TODO upstream; 8-bit floats are tested there (with scales).
    kv_dtypes=("float32", "bfloat16", "float8_e4m3fn", "float8_e5m2"),
    head_dims=None,
    head_dim_multiple=128,  # upstream: "TODO: Support non-128 head_dim!"
    page_sizes=None,
    # Causal only. Batches with fixed-size prefill chunks run as ordinary sequences.
    features=frozenset({"sliding_window", "soft_cap", "kv_scales", "chunked_prefill"}),
    updates_kv_cache=False,
)


def interleave_cache(
    k_cache,  # [num_pages, page_size, h_kv, d]
    v_cache,  # [num_pages, page_size, h_kv, d]
):
    """Canonical K/V caches -> ``kv_pages [num_pages, page_size, 2*h_kv, d]`` (even K, odd V)."""
    num_pages, page_size, h_kv, d = k_cache.shape
    return jnp.stack([k_cache, v_cache], axis=3).reshape(num_pages, page_size, 2 * h_kv, d)


def write_new_kv(
    kv_pages,  # [num_pages, page_size, 2*h_kv, d]
    new_keys,  # [T_pad, h_kv, d]
    new_values,  # [T_pad, h_kv, d]
    kv_lens,  # i32[S_pad]
    page_indices,  # i32[S_pad, pages_per_seq]
    cu_q_lens,  # i32[S_pad + 1]
    num_seqs,  # i32[1]
):
    """Scatter each query row's new K/V to its slot: position ``kv_len - q_len + i`` of its sequence."""

    num_pages, page_size = kv_pages.shape[:2]
    t_pad, h_kv, d = new_keys.shape
    page, slot, _ = kv_write_slots(kv_lens, page_indices, cu_q_lens, num_seqs,
                                   num_rows=t_pad, page_size=page_size, num_pages=num_pages)
    rows = jnp.stack([new_keys, new_values], axis=2).reshape(t_pad, 2 * h_kv, d).astype(kv_pages.dtype)
    return kv_pages.at[page, slot].set(rows, mode="drop")


def split_pages(
    kv_pages,  # [num_pages, page_size, 2*h_kv, d]
):
    """``kv_pages`` -> canonical (k_cache, v_cache), each [num_pages, page_size, h_kv, d]."""
    return kv_pages[:, :, 0::2], kv_pages[:, :, 1::2]


class OldApiBackend:
    """A kernel with the older RPA signature (subclasses say which module)."""

    name = "old_api"
    capabilities = OLD_API_CAPABILITIES
    tuning = PageBlockTuning()

    def __init__(self, *, source: str | None = None, options: Mapping[str, Any] | None = None) -> None:
        opts = take_options(self.name, options, OPTIONS)
        self.options = opts
        self.source = source
        self.num_kv_pages_per_block = positive_int(self.name, "num_kv_pages_per_block", opts["num_kv_pages_per_block"])
        self.num_queries_per_block = positive_int(self.name, "num_queries_per_block", opts["num_queries_per_block"])
        self.vmem_limit_bytes = positive_int(self.name, "vmem_limit_bytes", opts["vmem_limit_bytes"])
        self.generation = opts["generation"]
        if self.generation is not None:
            device_kind(self.name, self.generation)

    def module(self):
        raise NotImplementedError

    def availability(self) -> tuple[bool, str]:
        raise NotImplementedError

    def provenance(self) -> KernelProvenance:
        raise NotImplementedError

    def validate(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch | None = None) -> None:
        check_capabilities(self.name, self.capabilities, model, attn, batch)
        try:
            self.module().get_min_heads_per_blk(
                model.num_q_heads, 2 * model.num_kv_heads, jnp.dtype(model.dtype), jnp.dtype(model.kv_dtype)
            )
        except (ValueError, AssertionError) as e:
            raise ValueError(
                f"kernel={self.name}: model.num_kv_heads={model.num_kv_heads} unsupported with "
                f"model.kv_dtype={model.kv_dtype!r} ({e}); allowed: 2*num_kv_heads/packing in 1, 2, 4 "
                "or a multiple of 8"
            ) from None

    def block_sizes(self, model: ModelSpec, batch: RaggedBatch, *, generation: str | None = None) -> dict:
        """(num_kv_pages_per_block, num_queries_per_block) for this model and batch, and their origin."""
        mod = self.module()
        kind = device_kind(self.name, generation or self.generation)
        max_pages = max(batch.pages_per_seq)
        heads_q, heads_kv2 = mod.get_min_heads_per_blk(
            model.num_q_heads, 2 * model.num_kv_heads, jnp.dtype(model.dtype), jnp.dtype(model.kv_dtype)
        )
        tuned = mod.get_tuned_block_sizes
        with tpu_target.as_tpu(sys.modules[tuned.__module__], kind):
            kv_pages, queries = tuned(
                jnp.dtype(model.dtype), jnp.dtype(model.kv_dtype), heads_q, heads_kv2 // 2, model.head_dim,
                batch.page_size, batch.num_tokens, max_pages,
            )
        source = {"num_kv_pages_per_block": f"tuned:{kind}", "num_queries_per_block": f"tuned:{kind}"}
        if self.num_kv_pages_per_block is not None:  # the kernel needs it <= pages_per_seq
            kv_pages, source["num_kv_pages_per_block"] = min(self.num_kv_pages_per_block, max_pages), "config"
        if self.num_queries_per_block is not None:
            queries, source["num_queries_per_block"] = self.num_queries_per_block, "config"
        return {"num_kv_pages_per_block": int(kv_pages), "num_queries_per_block": int(queries),
                "source": source, "device_kind": kind}

    # --- traffic (rpa_bench.kernels.traffic): the kernel's schedule in bytes ----------------
    blockspec_operands = ("q", "output")  # pipelined by BlockSpec, not by explicit DMAs

    def traffic(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch, *,
                generation: str | None = None) -> Traffic:
        """Modelled HBM traffic of one call with the block sizes this build would use."""
        blocks = self.block_sizes(model, batch, generation=generation)
        heads_q, heads_kv2 = self.module().get_min_heads_per_blk(
            model.num_q_heads, 2 * model.num_kv_heads, jnp.dtype(model.dtype), jnp.dtype(model.kv_dtype))
        return old_api_traffic(model, batch, num_kv_pages_per_block=blocks["num_kv_pages_per_block"],
                               num_queries_per_block=blocks["num_queries_per_block"], heads_q=heads_q,
                               heads_kv2=heads_kv2)

    def traffic_blocks(self, model: ModelSpec, batch: RaggedBatch, generation: str | None = None) -> dict:
        """The block sizes the traffic model used, as stored (JSON-able)."""
        b = self.block_sizes(model, batch, generation=generation)
        return {k: b[k] for k in ("num_kv_pages_per_block", "num_queries_per_block")}

    def traffic_operands(self, model: ModelSpec, inputs: KernelInputs) -> dict[tuple[int, ...], str]:
        """HBM operand shapes of the pallas_call -> operand names (to name observed copies)."""
        pages, page = int(inputs.k_cache.shape[0]), int(inputs.k_cache.shape[1])
        return {tuple(int(x) for x in inputs.queries.shape): "q",
                (pages, page, 2 * model.num_kv_heads, model.head_dim): "kv_cache"}

    def build(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch, *, interpret: bool = False) -> PreparedCall:
        self.validate(model, attn, batch)
        mod = self.module()
        blocks = self.block_sizes(model, batch)
        static = dict(
            attention_kwargs(model, attn),
            num_kv_pages_per_block=blocks["num_kv_pages_per_block"],
            num_queries_per_block=blocks["num_queries_per_block"],
            vmem_limit_bytes=self.vmem_limit_bytes,
        )
        rpa = mod.ragged_paged_attention
        interleave = jax.jit(interleave_cache)
        write = jax.jit(write_new_kv, donate_argnums=0)
        split = jax.jit(split_pages)

        def layout(inputs: KernelInputs) -> tuple:
            return (inputs.queries, inputs.new_keys, inputs.new_values, interleave(inputs.k_cache, inputs.v_cache),
                    inputs.kv_lens, inputs.page_indices, inputs.cu_q_lens, inputs.num_seqs)

        def prepare(state) -> tuple:
            queries, new_keys, new_values, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs = (
                layout(state) if isinstance(state, KernelInputs) else state
            )
            kv_pages = write(kv_pages, new_keys, new_values, kv_lens, page_indices, cu_q_lens, num_seqs)
            return queries, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs

        def kernel(queries, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs):
            with call_context(interpret):
                out = settled(interpret, rpa(queries, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs, **static))
            return out, kv_pages

        def finish(raw) -> KernelOutput:
            out, kv_pages = raw
            k_cache, v_cache = split(kv_pages)
            return KernelOutput(output=out, k_cache=k_cache, v_cache=v_cache)

        meta = {
            "num_kv_pages_per_block": blocks["num_kv_pages_per_block"],
            "num_queries_per_block": blocks["num_queries_per_block"],
            "block_sizes_source": blocks["source"],
            "device_kind": blocks["device_kind"],
            "vmem_limit_bytes": self.vmem_limit_bytes,
            "kernel_includes_prep": False,
            "pallas_name_prefix": "ragged_paged_attention_kernel",
            "source": self.source,
        }
        # `prepare` donates the cache (in-place update), so callers pass fresh copies.
        return PreparedCall(prepare=prepare, kernel=kernel, finish=finish, donates=True, meta=meta, layout=layout)


class RpaV2Backend(UpstreamKernel, OldApiBackend):
    """tpu-inference RPA v2; ``source``: installed release, checkout path, or path@ref."""

    name = "rpa_v2"
    upstream = "v2"


DECLARATION = KernelDeclaration(
    name="rpa_v2", backend=RpaV2Backend, pallas=True, takes_source=True, upstream_module=loader.KERNEL_MODULES["v2"],
    summary="tpu-inference RPA v2 (the older API)")
