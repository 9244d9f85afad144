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

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from rpa_bench.kernels import loader, tpu_target
from rpa_bench.kernels.backend_util import call_context, device_kind, positive_int, settled, take_options
from rpa_bench.kernels.base import Capabilities, KernelOutput, KernelProvenance, PreparedCall, check_capabilities
from rpa_bench.kernels.declaration import KernelDeclaration
from rpa_bench.kernels.rpa_v3 import merge_cache, split_cache
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.materialize import KernelInputs
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


def _sizes(kernel: str, field: str, value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else []
    if len(items) != 5 or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in items):
        raise ValueError(f"kernel={kernel}: {field}={value!r} must be [{', '.join(FIELDS)}] "
                         "(5 positive integers) or null")
    return tuple(items)


class BatchedRpaBackend:
    """Batched RPA; ``source``: installed release, checkout path, or path@ref."""

    name = "batched_rpa"
    capabilities = CAPABILITIES

    def __init__(self, *, source: str | None = None, options: Mapping[str, Any] | None = None) -> None:
        opts = take_options(self.name, options, OPTIONS)
        self.options, self.source = opts, source
        self.sizes = {c: _sizes(self.name, f"{c}_block_sizes", opts[f"{c}_block_sizes"]) for c in CASES}
        self.vmem_limit_bytes = positive_int(self.name, "vmem_limit_bytes", opts["vmem_limit_bytes"])
        self.generation = opts["generation"]
        if self.generation is not None:
            device_kind(self.name, self.generation)

    def module(self):
        return loader.kernel_module(MODULE, self.source)

    def availability(self) -> tuple[bool, str]:
        ok, why = loader.availability(self.source)
        if not ok:
            return ok, why
        try:
            self.module()
        except (ImportError, AttributeError) as e:
            return False, f"this tpu-inference has no batched RPA ({e})"
        return True, why

    def provenance(self) -> KernelProvenance:
        return loader.load_source(self.source).provenance(MODULE, self.name)

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

    def build(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch, *, interpret: bool = False) -> PreparedCall:
        self.validate(model, attn, batch)
        mod, v3 = self.module(), loader.kernel_module("v3", self.source)
        blocks = self.block_sizes(model, attn, batch)
        kind = blocks["device_kind"]
        sizes = {c: mod.configs.BlockSizes(*blocks[c]) for c in CASES}
        static = dict(
            sm_scale=float(attn.scale(model.head_dim)),
            sliding_window=attn.sliding_window,
            soft_cap=None if attn.soft_cap is None else float(attn.soft_cap),
            k_scale=None if attn.k_scale is None else float(attn.k_scale),
            v_scale=None if attn.v_scale is None else float(attn.v_scale),
            decode_block_sizes=sizes["decode"], prefill_block_sizes=sizes["prefill"],
            vmem_limit_bytes=self.vmem_limit_bytes, kv_layout=mod.configs.KVLayout.HEAD_ALONG_SUBLANE,
        )
        rpa = mod.ragged_paged_attention
        h_kv, d = model.num_kv_heads, model.head_dim
        merge = jax.jit(lambda k_cache, v_cache: merge_cache(v3, k_cache, v_cache))
        split = jax.jit(lambda kv_cache: split_cache(kv_cache, num_kv_heads=h_kv, head_dim=d))

        def layout(inputs: KernelInputs) -> tuple:
            return (inputs.queries, inputs.new_keys, inputs.new_values, merge(inputs.k_cache, inputs.v_cache),
                    inputs.kv_lens, inputs.page_indices.reshape(-1), inputs.cu_q_lens, inputs.distribution)

        def prepare(state) -> tuple:
            return layout(state) if isinstance(state, KernelInputs) else tuple(state)

        def kernel(queries, keys, values, kv_cache, kv_lens, page_indices, cu_q_lens, distribution):
            with call_context(interpret, target=kind, overhanging_dmas=True):
                return settled(interpret, rpa(queries, keys, values, kv_cache, kv_lens, page_indices, cu_q_lens,
                                              distribution, **static))

        def finish(raw) -> KernelOutput:
            out, kv_cache = raw
            k_cache, v_cache = split(kv_cache)
            return KernelOutput(output=out, k_cache=k_cache, v_cache=v_cache)

        meta = {
            "block_sizes": {c: list(blocks[c]) for c in CASES},
            "block_sizes_source": blocks["source"],
            "device_kind": kind,
            "vmem_limit_bytes": self.vmem_limit_bytes,
            "kernel_includes_prep": True,
            "pallas_name_prefix": "rpa",
            "source": self.source,
        }
        return PreparedCall(prepare=prepare, kernel=kernel, finish=finish, donates=True, meta=meta, layout=layout)


DECLARATION = KernelDeclaration(
    name="batched_rpa", backend=BatchedRpaBackend, pallas=True, takes_source=True, upstream_module=MODULE,
    summary="tpu-inference's experimental batched RPA (USE_BATCHED_RPA_KERNEL=1)")
