"""RPA v3 (tpu-inference ``kernels/ragged_paged_attention/v3/kernel.py``) as a backend.

Inputs are built the way a serving engine builds them:
- the KV cache lives in v3's merged layout ``[pages, page_size, ceil(2*h_kv/packing),
  packing, align(d, 128)]`` (K and V interleaved per head, even = K, odd = V), made
  with the kernel module's own ``merge_kv`` (``layout``, not timed);
- the page table is flattened; ``kv_lens`` include the new tokens; ``distribution``
  splits decode / fixed-chunk prefill / mixed sequences;
- explicit ``(bq_sz, bkv_sz, bq_csz, bkv_csz)`` per case and ``vmem_limit_bytes``.

The kernel writes the new tokens' K/V into the cache itself and donates its inputs.
``kernel`` is the whole jitted ``ragged_paged_attention`` (its Q reshape and K/V merge of
the new tokens included, the paper's "Incl. Prep"); its Pallas calls are named
``RPA{d,p,m}-p_<page>-bq_..-bkv_..``, which is how a profile separates "Excl. Prep".

Default block sizes are the kernel's own heuristic (``get_default_block_sizes``) for the
target generation (option ``generation``; else the attached TPU; else TPU7x), rounded so
compute blocks divide fetch blocks; ``vmem_limit_bytes`` defaults to that generation's
VMEM, as the kernel does on TPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from rpa_bench.kernels import loader, tpu_target
from rpa_bench.kernels.backend_util import (
    BlockSizes,
    UpstreamKernel,
    attention_kwargs,
    block_sizes,
    device_kind,
    largest_divisor_at_most,
    positive_int,
    take_options,
    v3_signature_call,
)
from rpa_bench.kernels.rpa_v3_traffic import align, packing, v3_traffic
from rpa_bench.kernels.tuning import Knob, Tuning, fetch_sizes, query_blocks
from rpa_bench.kernels.traffic import Traffic
from rpa_bench.kernels.declaration import KernelDeclaration
from rpa_bench.kernels.base import Capabilities, PreparedCall, check_capabilities
from rpa_bench.workloads.batch import RaggedBatch, cdiv
from rpa_bench.workloads.materialize import KernelInputs
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

CASES = ("decode", "prefill", "mixed")
OPTIONS = {
    "d_block_sizes": None,
    "p_block_sizes": None,
    "m_block_sizes": None,
    "vmem_limit_bytes": None,
    "generation": None,
    # The kernel pads head_dim up to a multiple of 128 in the cache and the queries, so it
    # moves more bytes than the model's head_dim accounts for; off unless asked for.
    "pad_head_dim": False,
}

CAPABILITIES = Capabilities(
    dtypes=("float32", "bfloat16"),
    # static_validate_inputs: "Integer kv quantization is currently not supported".
    kv_dtypes=("float32", "bfloat16", "float8_e4m3fn", "float8_e5m2"),
    head_dims=None,  # the kernel pads head_dim to a multiple of 128 (cache and queries)
    page_sizes=None,  # any page size divisible by the KV packing (checked in validate)
    features=frozenset({"non_causal", "sliding_window", "soft_cap", "kv_scales", "kv_update", "chunked_prefill"}),
    updates_kv_cache=True,
)


@dataclasses.dataclass(frozen=True)
class V3Plan:
    """Resolved tuning of one build."""

    d_block_sizes: BlockSizes
    p_block_sizes: BlockSizes | None
    m_block_sizes: BlockSizes
    vmem_limit_bytes: int
    device_kind: str  # generation whose heuristic / VMEM the defaults come from
    block_sizes_source: dict[str, str]  # per case: "config" or "heuristic:<kind>"


def kv_packing(dtype: str) -> int:
    return 32 // (np.dtype(jnp.dtype(dtype)).itemsize * 8)


def _valid_blocks(raw: Mapping[str, int], page_size: int) -> BlockSizes:
    """Round a heuristic's sizes so they satisfy the kernel's block constraints."""
    bq = max(1, int(raw["bq_sz"]))
    bq_c = largest_divisor_at_most(bq, max(1, int(raw["bq_csz"])))
    bkv = cdiv(max(int(raw["bkv_sz"]), page_size), page_size) * page_size
    bkv_c = largest_divisor_at_most(bkv, max(int(raw["bkv_csz"]), page_size), multiple_of=page_size)
    return (bq, bkv, bq_c, bkv_c)


def check_blocks(kernel: str, field: str, sizes: BlockSizes, page_size: int) -> None:
    bq, bkv, bq_c, bkv_c = sizes
    if bq % bq_c:
        raise ValueError(f"kernel={kernel}: {field}={list(sizes)}: bq_csz={bq_c} must divide bq_sz={bq}")
    if bkv % bkv_c:
        raise ValueError(f"kernel={kernel}: {field}={list(sizes)}: bkv_csz={bkv_c} must divide bkv_sz={bkv}")
    for name, value in (("bkv_sz", bkv), ("bkv_csz", bkv_c)):
        if value % page_size:
            raise ValueError(f"kernel={kernel}: {field}={list(sizes)}: {name}={value} must be a multiple of {page_size=}")


MIN_BQ = 8  # the smallest query block the tuner tries for prefill / mixed


class V3Tuning(Tuning):
    """``(bq_sz, bkv_sz, bq_csz, bkv_csz)`` per case, in tokens; production reads them from
    ``RPA_V3_{DECODE,PREFILL,MIXED}_BLOCK_SIZES``.

    The space follows the kernel's rules: ``bq % bq_c == 0``, ``bkv % bkv_c == 0``, ``bkv`` and
    ``bkv_c`` multiples of the page size; decode has ``bq = bq_c = 1``; fetch sizes doubling
    from one page up to the longest kv (that one included), compute sizes dividing them;
    prefill / mixed add query blocks doubling from 8 up to the longest query, computed whole
    or in halves."""

    knobs = {c: Knob(c, ("bq_sz", "bkv_sz", "bq_csz", "bkv_csz"), option=f"{c[0]}_block_sizes",
                     env=f"RPA_V3_{c.upper()}_BLOCK_SIZES", call=f"{c[0]}_block_sizes") for c in CASES}
    phase_case = {"decode": "decode", "prefill": "prefill", "mixed": "mixed", "verify": "mixed"}
    estimate_checked = True  # 0.8x to 1.096x of the compiler's VMEM use, docs/tuning.md

    def grid(self, case, *, page_size, max_kv, max_q, generation=None):
        fetch = fetch_sizes(page_size, max_kv)
        out = []
        for bkv in fetch:
            for bkv_c in fetch:
                if bkv_c > bkv or bkv % bkv_c:
                    continue
                if case == "decode":
                    out.append((1, bkv, 1, bkv_c))
                    continue
                for bq in query_blocks(MIN_BQ, max_q):
                    for bq_c in (bq, bq // 2):
                        if bq_c >= 1 and bq % bq_c == 0 and (bq, bkv, bq_c, bkv_c) not in out:
                            out.append((bq, bkv, bq_c, bkv_c))
        for t in out:
            check_blocks("rpa_v3", f"{case[0]}_block_sizes", t, page_size)
        return out

    def default(self, backend, model, attn, batch, case, generation):
        plan = backend.plan(model, batch, generation=generation)
        sizes = {"decode": plan.d_block_sizes, "prefill": plan.p_block_sizes, "mixed": plan.m_block_sizes}
        return tuple(int(v) for v in sizes[case])

    def vmem_estimate(self, backend, model, case, values, *, page_size, generation):
        return backend.vmem_estimate_bytes(model, {"block_sizes": {case: values}})

    def kernel_prefix(self, case):
        return f"RPA{case[0]}"  # the kernel's Pallas calls: RPA{d,p,m}-p_<page>-bq_..-bkv_..


class RpaV3Backend(UpstreamKernel):
    """tpu-inference RPA v3; ``source``: installed release, checkout path, or path@ref."""

    name = "rpa_v3"
    upstream = "v3"
    capabilities = CAPABILITIES
    tuning = V3Tuning()
    # Refuse block sizes whose kernel-side VMEM estimate exceeds the limit before compiling;
    # the offline TPU compile turns it off so the real compiler gives its verdict.
    check_vmem_estimate = True

    def __init__(self, *, source: str | None = None, options: Mapping[str, Any] | None = None) -> None:
        opts = take_options(self.name, options, OPTIONS)
        self.options = opts
        self.source = source
        self.block_sizes = {c: block_sizes(self.name, f"{c[0]}_block_sizes", opts[f"{c[0]}_block_sizes"]) for c in CASES}
        self.vmem_limit_bytes = positive_int(self.name, "vmem_limit_bytes", opts["vmem_limit_bytes"])
        self.generation = opts["generation"]
        if self.generation is not None:
            device_kind(self.name, self.generation)

    # --- interface ---------------------------------------------------------------------
    def vmem_estimate_bytes(self, model: ModelSpec, meta: Mapping[str, Any]) -> int | None:
        """The kernel's own ``get_vmem_estimate_bytes`` for the largest case of a build's block sizes."""
        fn = getattr(self.module(), "get_vmem_estimate_bytes", None)
        if fn is None:
            return None
        sizes = [v for v in (meta.get("block_sizes") or {}).values() if v is not None]
        if not sizes:
            return None
        return max(int(fn(model.num_kv_heads, model.num_q_heads // model.num_kv_heads, model.head_dim, bq, bkv,
                          jnp.dtype(model.dtype), jnp.dtype(model.kv_dtype))) for bq, bkv, _, _ in sizes)

    def validate(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch | None = None) -> None:
        check_capabilities(self.name, self.capabilities, model, attn, batch)
        d = model.head_dim
        if d % 128 and not self.options["pad_head_dim"]:
            raise ValueError(
                f"kernel={self.name}: model.head_dim={d} unsupported; allowed: multiples of 128 "
                f"(the kernel would pad it to {cdiv(d, 128) * 128}, moving more bytes than the roofline counts; "
                "tpu-inference serves head_dim 64 with a separate kernel). "
                "Set kernel.options.pad_head_dim=true to run it padded anyway"
            )
        if batch is None:
            return
        packing = kv_packing(model.kv_dtype)
        if batch.page_size % packing:
            raise ValueError(
                f"kernel={self.name}: page_size={batch.page_size} unsupported for "
                f"model.kv_dtype={model.kv_dtype!r}; allowed: multiples of {packing} (the KV packing)"
            )
        self.plan(model, batch)

    def plan(self, model: ModelSpec, batch: RaggedBatch, *, generation: str | None = None) -> V3Plan:
        """Block sizes per case and the VMEM limit for this model and batch (validated)."""
        kind = device_kind(self.name, generation or self.generation)
        mod = self.module()
        sizes: dict[str, BlockSizes | None] = {}
        source: dict[str, str] = {}
        for case in CASES:
            field = f"{case[0]}_block_sizes"
            if case == "prefill" and batch.chunk_prefill_size is None:
                sizes[case] = None
                continue
            given = self.block_sizes[case]
            if given is not None:
                sizes[case], source[case] = given, "config"
            else:
                sizes[case], source[case] = self._heuristic(mod, model, batch, case, kind)
            check_blocks(self.name, field, sizes[case], batch.page_size)
        vmem = self.vmem_limit_bytes or tpu_target.vmem_capacity_bytes(kind)
        for case, blocks in sizes.items():
            if blocks is None:
                continue
            need = int(mod.get_vmem_estimate_bytes(
                model.num_kv_heads, model.num_queries_per_kv, model.head_dim, blocks[0], blocks[1],
                jnp.dtype(model.dtype), jnp.dtype(model.kv_dtype),
            ))
            if need > vmem and self.check_vmem_estimate:
                raise ValueError(
                    f"kernel={self.name}: {case[0]}_block_sizes={list(blocks)} need about {need} bytes of "
                    f"VMEM > vmem_limit_bytes={vmem}; use smaller bq_sz/bkv_sz or a larger vmem_limit_bytes"
                )
        return V3Plan(sizes["decode"], sizes["prefill"], sizes["mixed"], vmem, kind, source)

    def _heuristic(self, mod, model: ModelSpec, batch: RaggedBatch, case: str, kind: str) -> tuple[BlockSizes, str]:
        args = (jnp.dtype(model.dtype), jnp.dtype(model.kv_dtype), model.num_q_heads, model.num_kv_heads,
                model.head_dim, batch.page_size, batch.num_tokens, batch.num_seqs, max(batch.pages_per_seq))
        try:
            with tpu_target.as_tpu(mod, kind):
                raw = mod.get_default_block_sizes(*args, case=mod.RpaCase[case.upper()])
        except NotImplementedError as e:  # the heuristic covers only some generations
            raise ValueError(
                f"kernel={self.name}: the kernel has no default block sizes for generation={kind!r} ({e}); "
                f"set {case[0]}_block_sizes"
            ) from None
        return _valid_blocks(raw, batch.page_size), f"heuristic:{kind}"

    # --- traffic (rpa_bench.kernels.traffic): the kernel's schedule in bytes ----------------
    def traffic(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch, *,
                generation: str | None = None) -> Traffic:
        """Modelled HBM traffic of one call with the block sizes this build would use."""
        plan = self.plan(model, batch, generation=generation)
        sizes = {"decode": plan.d_block_sizes, "prefill": plan.p_block_sizes, "mixed": plan.m_block_sizes}
        return v3_traffic(model, batch, block_sizes=sizes, causal=attn.causal, sliding_window=attn.sliding_window)

    def traffic_blocks(self, model: ModelSpec, batch: RaggedBatch, generation: str | None = None) -> dict:
        """The block sizes the traffic model used, per case, as stored (JSON-able)."""
        plan = self.plan(model, batch, generation=generation)
        return {k: (None if v is None else list(v)) for k, v in (("decode", plan.d_block_sizes),
                                                                  ("prefill", plan.p_block_sizes),
                                                                  ("mixed", plan.m_block_sizes))}

    def traffic_operands(self, model: ModelSpec, inputs: KernelInputs) -> dict[tuple[int, ...], str]:
        """HBM operand shapes of the pallas_calls -> operand names (to name observed DMAs)."""
        q_pack, kv_pack = packing(model.dtype), packing(model.kv_dtype)
        d = align(model.head_dim, 128)
        h_kv = model.num_kv_heads
        per_kv = align(model.num_q_heads // h_kv, q_pack)
        kv_x2 = align(2 * h_kv, kv_pack)
        tokens = int(inputs.queries.shape[0])
        pages, page = int(inputs.k_cache.shape[0]), int(inputs.k_cache.shape[1])
        return {(h_kv, tokens, per_kv // q_pack, q_pack, d): "q",
                (tokens, kv_x2 // kv_pack, kv_pack, d): "new_kv",
                (pages, page, kv_x2 // kv_pack, kv_pack, d): "kv_cache"}

    def static_kwargs(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch, plan: V3Plan) -> dict:
        return dict(
            attention_kwargs(model, attn),
            use_causal_mask=attn.causal,
            chunk_prefill_size=batch.chunk_prefill_size,
            d_block_sizes=plan.d_block_sizes,
            p_block_sizes=plan.p_block_sizes,
            m_block_sizes=plan.m_block_sizes,
            vmem_limit_bytes=plan.vmem_limit_bytes,
        )

    def build(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch, *, interpret: bool = False) -> PreparedCall:
        self.validate(model, attn, batch)
        mod = self.module()
        plan = self.plan(model, batch)
        static = self.static_kwargs(model, attn, batch, plan)
        h_kv, d = model.num_kv_heads, model.head_dim

        meta = {
            "block_sizes": {"decode": plan.d_block_sizes, "prefill": plan.p_block_sizes, "mixed": plan.m_block_sizes},
            "block_sizes_source": plan.block_sizes_source,
            "vmem_limit_bytes": plan.vmem_limit_bytes,
            "device_kind": plan.device_kind,
            "kernel_includes_prep": True,
            "pallas_name_prefix": "RPA",
            "padded_head_dim": cdiv(d, 128) * 128,
            "source": self.source,
        }
        return v3_signature_call(mod.ragged_paged_attention, static, meta=meta, interpret=interpret,
                                 merge=lambda k_cache, v_cache: merge_cache(mod, k_cache, v_cache),
                                 split=lambda kv_cache: split_cache(kv_cache, num_kv_heads=h_kv, head_dim=d))


def merge_cache(
    mod,
    k_cache,  # [num_pages, page_size, h_kv, d]
    v_cache,  # [num_pages, page_size, h_kv, d]
):
    """Canonical K and V caches -> v3's merged cache, with the kernel module's ``merge_kv``."""
    num_pages, page_size, h_kv, d = k_cache.shape
    merged = mod.merge_kv(k_cache.reshape(-1, h_kv, d), v_cache.reshape(-1, h_kv, d))
    merged = merged.reshape(num_pages, page_size, *merged.shape[1:])
    expected = tuple(mod.get_kv_cache_shape(num_pages, page_size, h_kv, d, k_cache.dtype))
    assert merged.shape == expected, (merged.shape, expected)
    return merged


def split_cache(
    kv_cache,  # [num_pages, page_size, ceil(2*h_kv/packing), packing, align(d, 128)]
    *,
    num_kv_heads: int,
    head_dim: int,
):
    """v3's merged cache -> canonical (k_cache, v_cache), each [num_pages, page_size, h_kv, d]."""
    num_pages, page_size = kv_cache.shape[:2]
    flat = kv_cache.reshape(num_pages, page_size, -1, kv_cache.shape[-1])[:, :, : 2 * num_kv_heads, :head_dim]
    return flat[:, :, 0::2], flat[:, :, 1::2]


DECLARATION = KernelDeclaration(
    name="rpa_v3", backend=RpaV3Backend, pallas=True, takes_source=True, upstream_module=loader.KERNEL_MODULES["v3"],
    summary="tpu-inference RPA v3 (the paper's kernel)")
