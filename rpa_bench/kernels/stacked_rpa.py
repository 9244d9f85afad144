"""tpu-inference's experimental stacked RPA (``kernels/experimental/stacked_rpa``) as a backend.

v3's call signature with its own cache layout: ``[pages, 2 h_kv, align(d, sublanes x
packing), page_size]``, K and V interleaved on the head axis (even K, odd V) and the sequence
along the lanes, so ``page_size`` must be a multiple of 128. Two ``pallas_call`` families
(decode; prefill / mixed), each picking its block sizes by its own policy for the generation
(separate policies with a sliding window); options ``decode_block_sizes``
``[bq_sz, bkv_sz, batch_size, n_buffer]`` and ``prefill_block_sizes`` ``[bq_sz, bq_c_sz,
bkv_sz, batch_size, n_buffer]`` override them (``n_buffer`` must be 2). The sizes recorded
are the ones the kernel resolves (its ``_resolve_attn_static``, asked for the target
generation). Causal only; no sinks; ``chunk_prefill_size`` is refused by the kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from rpa_bench.kernels import tpu_target
from rpa_bench.kernels.backend_util import (
    UpstreamKernel,
    attention_kwargs,
    device_kind,
    positive_int,
    sized_tuple,
    take_options,
    v3_signature_call,
)
from rpa_bench.kernels.base import Capabilities, PreparedCall, check_capabilities
from rpa_bench.kernels.declaration import KernelDeclaration
from rpa_bench.kernels.tuning import Knob, Tuning, fetch_sizes, query_blocks
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

MODULE = "kernels.experimental.stacked_rpa.wrapper"
FIELDS = {"decode": ("bq_sz", "bkv_sz", "batch_size", "n_buffer"),
          "prefill": ("bq_sz", "bq_c_sz", "bkv_sz", "batch_size", "n_buffer")}
OPTIONS = {"decode_block_sizes": None, "prefill_block_sizes": None, "vmem_limit_bytes": None, "generation": None}
PAGE_MULTIPLE = 128
CAPABILITIES = Capabilities(
    dtypes=("float32", "bfloat16"),
    kv_dtypes=("float32", "bfloat16"),
    head_dims=None,
    page_sizes=None,  # multiples of 128 (checked in validate)
    features=frozenset({"sliding_window", "soft_cap", "kv_scales", "kv_update"}),
    updates_kv_cache=True,
    page_size_multiple=PAGE_MULTIPLE,
    # its cache update stores whole lane-aligned runs: past a sequence's last token, inside its
    # own last page (seen in `rpa-bench check`; other sequences' pages are never touched)
    writes_own_page_tail=True,
)


def _sizes(kernel: str, case: str, value: Any) -> tuple[int, ...] | None:
    items = sized_tuple(kernel, f"{case}_block_sizes", value, FIELDS[case])
    if items is not None and items[-1] != 2:
        raise ValueError(f"kernel={kernel}: {case}_block_sizes n_buffer={items[-1]}; allowed: 2 (double buffering)")
    return items


class StackedTuning(Tuning):
    """Decode ``BlockSizes(bq_sz, bkv_sz, batch_size, n_buffer)`` and prefill / mixed
    ``BlockSizes(bq_sz, bq_c_sz, bkv_sz, batch_size, n_buffer)``, passed as call arguments.
    The space follows the kernel's policies: KV blocks in page multiples (the page a multiple of
    128) doubling up to the longest kv; decode one query per block, 1 to 8 sequences per step;
    prefill query blocks doubling from 8, computed whole or in halves, 1 or 2 per step; always
    2 buffers (the kernel refuses others)."""

    knobs = {"decode": Knob("decode", FIELDS["decode"], option="decode_block_sizes", call="decode_block_sizes",
                            call_type="decode_blocks.BlockSizes"),
             "prefill": Knob("prefill", FIELDS["prefill"], option="prefill_block_sizes", call="prefill_block_sizes",
                             call_type="prefill_blocks.BlockSizes")}
    phase_case = {"decode": "decode", "prefill": "prefill", "mixed": "prefill", "verify": "prefill"}

    def grid(self, case, *, page_size, max_kv, max_q, generation=None):
        fetch = fetch_sizes(page_size, max_kv)
        if case == "decode":
            return [(1, bkv, b, 2) for bkv in fetch for b in (1, 2, 4, 8)]
        return [(bq, bq_c, bkv, b, 2) for bq in query_blocks(8, max_q) for bq_c in (bq, bq // 2)
                for bkv in fetch for b in (1, 2)]

    def default(self, backend, model, attn, batch, case, generation):
        return tuple(backend.block_sizes(model, attn, batch, generation=generation)[case])


class StackedRpaBackend(UpstreamKernel):
    """Stacked RPA; ``source``: installed release, checkout path, or path@ref."""

    name = "stacked_rpa"
    upstream, missing = MODULE, "stacked RPA"
    tuning = StackedTuning()
    capabilities = CAPABILITIES

    def __init__(self, *, source: str | None = None, options: Mapping[str, Any] | None = None) -> None:
        opts = take_options(self.name, options, OPTIONS)
        self.options, self.source = opts, source
        self.sizes = {c: _sizes(self.name, c, opts[f"{c}_block_sizes"]) for c in FIELDS}
        self.vmem_limit_bytes = positive_int(self.name, "vmem_limit_bytes", opts["vmem_limit_bytes"])
        self.generation = opts["generation"]
        if self.generation is not None:
            device_kind(self.name, self.generation)

    def validate(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch | None = None) -> None:
        check_capabilities(self.name, self.capabilities, model, attn, batch)

    def _overrides(self, mod) -> dict:
        dec = mod.decode_blocks.BlockSizes(*self.sizes["decode"]) if self.sizes["decode"] else None
        pre = mod.prefill_blocks.BlockSizes(*self.sizes["prefill"]) if self.sizes["prefill"] else None
        return {"decode_block_sizes": dec, "prefill_block_sizes": pre}

    def block_sizes(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch, *,
                    generation: str | None = None) -> dict:
        """The sizes the kernel resolves for this batch on the target generation, and their origin."""
        kind = device_kind(self.name, generation or self.generation)
        mod = self.module()
        pages = max(batch.pages_per_seq)

        def sds(shape, dtype):
            return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))

        with tpu_target.abstract_tpu(kind):
            cache = mod.get_kv_cache_shape(batch.num_pages, batch.page_size, model.num_kv_heads, model.head_dim,
                                           jnp.dtype(model.kv_dtype))
            _, _, dec, pre, *_ = mod._resolve_attn_static(  # the kernel's own resolution, not a copy of it
                sds((batch.num_tokens, model.num_q_heads, model.head_dim), model.dtype),
                sds((batch.num_tokens, model.num_kv_heads, model.head_dim), model.kv_dtype),
                sds(tuple(cache), model.kv_dtype),
                sds((batch.num_seqs,), "int32"), sds((batch.num_seqs * pages,), "int32"),
                sm_scale=float(attn.scale(model.head_dim)), sliding_window=attn.sliding_window,
                soft_cap=attn.soft_cap, mask_value=None, q_scale=None, k_scale=attn.k_scale, v_scale=attn.v_scale,
                vmem_limit_bytes=self.vmem_limit_bytes, out_dtype=None, **self._overrides(mod))
        policy = "sliding-window policy" if attn.sliding_window is not None else "policy"
        return {"decode": tuple(int(getattr(dec, f)) for f in FIELDS["decode"]),
                "prefill": tuple(int(getattr(pre, f)) for f in FIELDS["prefill"]),
                "source": {c: "config" if self.sizes[c] else f"{policy}:{kind}" for c in FIELDS},
                "device_kind": kind}

    def traffic_operands(self, model: ModelSpec, inputs) -> dict[tuple[int, ...], str]:
        """HBM operand shapes -> names, for observing its DMAs (no traffic model: observed only)."""
        pages, page = int(inputs.k_cache.shape[0]), int(inputs.k_cache.shape[1])
        with tpu_target.abstract_tpu(device_kind(self.name, self.generation)):
            cache = self.module().get_kv_cache_shape(pages, page, model.num_kv_heads, model.head_dim,
                                                     jnp.dtype(model.kv_dtype))
        return {tuple(int(x) for x in inputs.queries.shape): "q", tuple(int(x) for x in cache): "kv_cache"}

    def build(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch, *, interpret: bool = False) -> PreparedCall:
        self.validate(model, attn, batch)
        mod = self.module()
        blocks = self.block_sizes(model, attn, batch)
        kind = blocks["device_kind"]
        static = dict(attention_kwargs(model, attn), vmem_limit_bytes=self.vmem_limit_bytes, **self._overrides(mod))
        h_kv, d = model.num_kv_heads, model.head_dim

        def merge(k_cache, v_cache):  # [P, page, h_kv, d] x2 -> [P, 2 h_kv, d_aligned, page]
            pages, page = k_cache.shape[:2]
            kv = jnp.stack([k_cache, v_cache], axis=3).reshape(pages, page, 2 * h_kv, d)
            with tpu_target.abstract_tpu(kind):
                target = mod.get_kv_cache_shape(pages, page, h_kv, d, k_cache.dtype)
            kv = jnp.pad(kv, ((0, 0), (0, 0), (0, 0), (0, target[2] - d)))
            return kv.transpose(0, 2, 3, 1)

        def split(kv_cache):
            kv = kv_cache.transpose(0, 3, 1, 2)[..., :d]  # [P, page, 2 h_kv, d]
            return kv[:, :, 0::2], kv[:, :, 1::2]

        meta = {
            "block_sizes": {c: list(blocks[c]) for c in FIELDS},
            "block_sizes_source": blocks["source"],
            "device_kind": kind,
            "vmem_limit_bytes": self.vmem_limit_bytes,
            "kernel_includes_prep": True,
            "pallas_name_prefix": "rpa",
            "source": self.source,
        }
        return v3_signature_call(mod.ragged_paged_attention, static, merge=merge, split=split, meta=meta,
                                 interpret=interpret, target=kind, overhanging_dmas=True)


DECLARATION = KernelDeclaration(
    name="stacked_rpa", backend=StackedRpaBackend, pallas=True, takes_source=True, upstream_module=MODULE,
    summary="tpu-inference's experimental stacked RPA (sequence along lanes; page size multiple of 128)")
