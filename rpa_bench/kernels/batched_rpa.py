"""tpu-inference's experimental batched RPA (``kernels/experimental/batched_rpa``) as a backend.

Production selects it with ``USE_BATCHED_RPA_KERNEL=1``: v3's call signature and cache layout
(K/V merged along the heads, ``HEAD_ALONG_SUBLANE``), two ``pallas_call``s (decode, then every
other sequence), each with its own ``BlockSizes(bq_sz, bq_c_sz, bkv_sz, batch_size, n_buffer)``
(options ``decode_block_sizes`` / ``prefill_block_sizes`` as 5-lists). Left null, the kernel
picks them itself (``get_tuned_params``: its tuned mapping, else its VMEM-sizing heuristic for
the generation); this backend asks the same function, for the target generation, so the row
records what ran and where it came from. Causal only; ``chunk_prefill_size`` is refused by the
kernel. The kernel reads ``pltpu.get_tpu_info()`` while it builds: off TPU it is answered for
the target generation. It copies its step schedule in 1024-element multiples, past the end of
the schedule buffer when that is shorter (harmless on a TPU with bounds checks off); interpret
mode moves the in-bounds part (:func:`rpa_bench.kernels.compat_interpret.overhanging_dmas`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from rpa_bench.kernels import loader, tpu_target
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
from rpa_bench.kernels.rpa_v3 import merge_cache, split_cache
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

MODULE = "kernels.experimental.batched_rpa.wrapper"
CASES = ("decode", "prefill")
FIELDS = ("bq_sz", "bq_c_sz", "bkv_sz", "batch_size", "n_buffer")
OPTIONS = {"decode_block_sizes": None, "prefill_block_sizes": None, "vmem_limit_bytes": None, "generation": None}
CAPABILITIES = Capabilities(
    dtypes=("float32", "bfloat16"),
    kv_dtypes=("float32", "bfloat16"),
    head_dims=None,  # padded to the lane width
    page_sizes=None,
    features=frozenset({"sliding_window", "soft_cap", "kv_scales", "kv_update"}),
    updates_kv_cache=True,
)


class BatchedTuning(Tuning):
    """``BlockSizes(bq_sz, bq_c_sz, bkv_sz, batch_size, n_buffer)`` per call (decode; every other
    sequence), passed as call arguments (production reads no environment variable for them).
    The space follows the kernel's own sizing: KV blocks in multiples of 128 lanes and of the page,
    doubling up to the longest kv; decode with one query per block and up to 8 sequences per
    step; prefill query blocks doubling from 128, computed whole or in halves, 1 or 2 sequences
    per step; 2 or 3 buffers."""

    knobs = {c: Knob(c, FIELDS, option=f"{c}_block_sizes", call=f"{c}_block_sizes", call_type="BlockSizes")
             for c in CASES}
    phase_case = {"decode": "decode", "prefill": "prefill", "mixed": "prefill", "verify": "prefill"}

    def grid(self, case, *, page_size, max_kv, max_q, generation=None):
        fetch = fetch_sizes(math.lcm(128, page_size), max_kv)
        if case == "decode":
            return [(1, 1, bkv, b, n) for bkv in fetch for b in (1, 2, 4, 8) for n in (2, 3)]
        return [(bq, bq_c, bkv, b, n) for bq in query_blocks(128, max_q) for bq_c in (bq, bq // 2)
                for bkv in fetch for b in (1, 2) for n in (2, 3)]

    def default(self, backend, model, attn, batch, case, generation):
        return tuple(backend.block_sizes(model, attn, batch, generation=generation)[case])


class BatchedRpaBackend(UpstreamKernel):
    """Batched RPA; ``source``: installed release, checkout path, or path@ref."""

    name = "batched_rpa"
    upstream, missing = MODULE, "batched RPA"
    capabilities = CAPABILITIES
    tuning = BatchedTuning()

    def __init__(self, *, source: str | None = None, options: Mapping[str, Any] | None = None) -> None:
        opts = take_options(self.name, options, OPTIONS)
        self.options, self.source = opts, source
        self.sizes = {c: sized_tuple(self.name, f"{c}_block_sizes", opts[f"{c}_block_sizes"], FIELDS) for c in CASES}
        self.vmem_limit_bytes = positive_int(self.name, "vmem_limit_bytes", opts["vmem_limit_bytes"])
        self.generation = opts["generation"]
        if self.generation is not None:
            device_kind(self.name, self.generation)

    def validate(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch | None = None) -> None:
        check_capabilities(self.name, self.capabilities, model, attn, batch)

    def block_sizes(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch, *,
                    generation: str | None = None) -> dict:
        """Per case the 5 sizes, where they came from, and the generation (the kernel's own choice
        where not configured: ``get_tuned_params`` for that generation)."""
        kind = device_kind(self.name, generation or self.generation)
        mod = self.module()
        cfgs, tuned = mod.configs, mod.get_tuned_params.__globals__
        out: dict = {"source": {}, "device_kind": kind}
        with tpu_target.abstract_tpu(kind):
            vmem = self.vmem_limit_bytes or int(tpu_target.vmem_capacity_bytes(kind))
            model_cfgs = cfgs.ModelConfigs(
                num_q_heads=model.num_q_heads, num_kv_heads=model.num_kv_heads, head_dim=model.head_dim,
                mask_value=float(jnp.finfo(jnp.dtype(model.dtype)).min), sm_scale=float(attn.scale(model.head_dim)),
                soft_cap=attn.soft_cap, sliding_window=attn.sliding_window)
            serve = cfgs.ServingConfigs(
                num_seqs=batch.num_seqs, page_size=batch.page_size, total_q_tokens=batch.num_tokens,
                num_page_indices=batch.num_seqs * max(batch.pages_per_seq), dtype_q=jnp.dtype(model.dtype),
                dtype_kv=jnp.dtype(model.kv_dtype), dtype_out=jnp.dtype(model.dtype),
                kv_layout=cfgs.KVLayout.HEAD_ALONG_SUBLANE)
            for case in CASES:
                if self.sizes[case] is not None:
                    out[case], out["source"][case] = self.sizes[case], "config"
                    continue
                key = tuned["TuningKey"].from_config(model_cfgs, serve, case=case)
                b = mod.get_tuned_params(model_cfgs, serve, vmem_limit_bytes=vmem, case=case)
                out[case] = tuple(int(getattr(b, f)) for f in FIELDS)
                origin = "tuned" if key in tuned["tuned_params_mapping"] else "heuristic"
                out["source"][case] = f"{origin}:{kind}"
        return out

    def traffic_operands(self, model: ModelSpec, inputs) -> dict[tuple[int, ...], str]:
        """HBM operand shapes -> names, for observing its DMAs (no traffic model: observed only)."""
        v3 = loader.kernel_module("v3", self.source)
        pages, page = int(inputs.k_cache.shape[0]), int(inputs.k_cache.shape[1])
        cache = tuple(int(x) for x in v3.get_kv_cache_shape(pages, page, model.num_kv_heads, model.head_dim,
                                                            jnp.dtype(model.kv_dtype)))
        return {tuple(int(x) for x in inputs.queries.shape): "q", cache: "kv_cache"}

    def build(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch, *, interpret: bool = False) -> PreparedCall:
        self.validate(model, attn, batch)
        mod, v3 = self.module(), loader.kernel_module("v3", self.source)
        blocks = self.block_sizes(model, attn, batch)
        kind = blocks["device_kind"]
        sizes = {c: mod.configs.BlockSizes(*blocks[c]) for c in CASES}
        static = dict(
            attention_kwargs(model, attn),
            decode_block_sizes=sizes["decode"], prefill_block_sizes=sizes["prefill"],
            vmem_limit_bytes=self.vmem_limit_bytes, kv_layout=mod.configs.KVLayout.HEAD_ALONG_SUBLANE,
        )
        h_kv, d = model.num_kv_heads, model.head_dim
        meta = {
            "block_sizes": {c: list(blocks[c]) for c in CASES},
            "block_sizes_source": blocks["source"],
            "device_kind": kind,
            "vmem_limit_bytes": self.vmem_limit_bytes,
            "kernel_includes_prep": True,
            "pallas_name_prefix": "rpa",
            "source": self.source,
        }
        return v3_signature_call(
            mod.ragged_paged_attention, static, meta=meta, interpret=interpret, target=kind, overhanging_dmas=True,
            merge=lambda k_cache, v_cache: merge_cache(v3, k_cache, v_cache),
            split=lambda kv_cache: split_cache(kv_cache, num_kv_heads=h_kv, head_dim=d))


DECLARATION = KernelDeclaration(
    name="batched_rpa", backend=BatchedRpaBackend, pallas=True, takes_source=True, upstream_module=MODULE,
    summary="tpu-inference's experimental batched RPA (USE_BATCHED_RPA_KERNEL=1)")
