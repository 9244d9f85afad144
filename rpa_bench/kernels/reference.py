"""Pure-jnp ragged paged attention: the reference every backend is checked against.

It runs anywhere XLA does, so it is also the XLA baseline on GPU and CPU. Semantics:
- GQA: query head ``h`` reads KV head ``h // (h_q // h_kv)``;
- query ``i`` of a sequence with ``q_len`` q and ``kv_len`` k sits at position
  ``k - q + i``; causal: it sees keys at positions ``<= `` its own; non-causal: every key
  ``< kv_len`` of its sequence; a sliding window ``w`` keeps keys in ``(p - w, p]``
  (the lower bound applies with or without the causal mask);
- logits = ``q.k * sm_scale * k_scale``, then ``soft_cap * tanh(logits / soft_cap)``;
  output = ``softmax(logits) @ v * v_scale``; all in float32, output in ``model.dtype``;
- the KV update (v3's semantics): the new tokens' K/V are written into the cache at
  positions ``kv_len - q_len .. kv_len - 1`` through the page table; attention reads the
  updated cache.

Memory stays bounded for long contexts: queries are cut into sequence-aligned tiles of
``bq`` rows, tiles are processed in groups (``lax.map``), and each group walks the KV in
page-aligned blocks with an online softmax (``lax.fori_loop``), so neither a
``[T, max_kv]`` logits matrix nor a per-sequence copy of the whole cache is ever built.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from rpa_bench.kernels.declaration import KernelDeclaration
from rpa_bench.kernels.base import Capabilities, KernelOutput, KernelProvenance, PreparedCall, check_capabilities
from rpa_bench.kernels.tuning import PHASES, Knob, Tuning
from rpa_bench.workloads.batch import RaggedBatch, cdiv
from rpa_bench.workloads.materialize import KernelInputs
from rpa_bench.workloads.model import AttentionSpec, ModelSpec, SUPPORTED_DTYPES, SUPPORTED_KV_DTYPES

DEFAULT_BLOCK_BYTES = 256 * 2**20  # working-set bound of one (tile group x KV block) step
_MAX_BQ = 128
# Tile groups per call (at least): each group walks only the KV blocks its own rows can
# see, so short sequences and early causal rows do not pay for the longest one.
_MIN_GROUPS = 8
_HIGHEST = lax.Precision.HIGHEST


# --- KV-cache update ----------------------------------------------------------------------
def kv_write_slots(
    kv_lens,  # i32[S_pad]
    page_indices,  # i32[S_pad, pages_per_seq]
    cu_q_lens,  # i32[S_pad + 1]
    num_seqs,  # i32[1]
    *,
    num_rows: int,
    page_size: int,
    num_pages: int,
):
    """Where each query row's new K/V lands: (page i32[T], slot i32[T], valid bool[T]).

    Padding rows get ``page = num_pages`` (out of range), so a ``mode="drop"`` scatter
    skips them.
    """
    s_pad = kv_lens.shape[0]
    t = jnp.arange(num_rows, dtype=jnp.int32)
    seq = jnp.searchsorted(cu_q_lens[1:], t, side="right").astype(jnp.int32)
    valid = (seq < num_seqs[0]) & (t < cu_q_lens[num_seqs[0]])
    seq = jnp.minimum(seq, s_pad - 1)
    q_len = cu_q_lens[seq + 1] - cu_q_lens[seq]
    pos = kv_lens[seq] - q_len + (t - cu_q_lens[seq])
    pos = jnp.clip(pos, 0, page_indices.shape[1] * page_size - 1)
    page = jnp.where(valid, page_indices[seq, pos // page_size], num_pages)
    return page, pos % page_size, valid


@jax.jit
def update_kv_cache(
    k_cache,  # [num_pages, page_size, h_kv, d]
    v_cache,  # [num_pages, page_size, h_kv, d]
    new_keys,  # [T_pad, h_kv, d]
    new_values,  # [T_pad, h_kv, d]
    kv_lens,  # i32[S_pad]
    page_indices,  # i32[S_pad, pages_per_seq]
    cu_q_lens,  # i32[S_pad + 1]
    num_seqs,  # i32[1]
):
    """Write the new tokens' K/V into the cache (v3's fused update, done in XLA)."""
    num_pages, page_size = k_cache.shape[:2]
    page, slot, _ = kv_write_slots(
        kv_lens, page_indices, cu_q_lens, num_seqs,
        num_rows=new_keys.shape[0], page_size=page_size, num_pages=num_pages,
    )
    k_cache = k_cache.at[page, slot].set(new_keys.astype(k_cache.dtype), mode="drop")
    v_cache = v_cache.at[page, slot].set(new_values.astype(v_cache.dtype), mode="drop")
    return k_cache, v_cache


# --- attention ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Plan:
    bq: int  # query rows per sequence-aligned tile
    num_tiles: int  # upper bound on sum_s cdiv(q_len_s, bq)
    tiles_per_group: int
    kv_block_pages: int


def _plan(t_pad: int, s_pad: int, h_q: int, h_kv: int, d: int, page_size: int,
          pages_per_seq: int, block_bytes: int) -> _Plan:
    avg_q = cdiv(t_pad, s_pad)
    bq = min(_MAX_BQ, 1 << (avg_q - 1).bit_length())
    num_tiles = max(1, (t_pad + s_pad * (bq - 1)) // bq)
    per_tile_token = 4 * (3 * bq * h_q + 3 * h_kv * d)  # f32 logits/probs/mask + K, V
    group = cdiv(num_tiles, _MIN_GROUPS)
    kv_pages = min(pages_per_seq, max(1, block_bytes // (group * per_tile_token * page_size)))
    if group * per_tile_token * page_size * kv_pages > block_bytes:
        group = max(1, block_bytes // (per_tile_token * page_size))
    return _Plan(bq=bq, num_tiles=num_tiles, tiles_per_group=min(group, num_tiles), kv_block_pages=kv_pages)


def _tiles(cu_q_lens, kv_lens, num_seqs, *, bq: int, num_tiles: int):
    """Sequence-aligned query tiles: seq i32[NT], first row-in-seq i32[NT], ok bool[NT]."""
    s_pad = kv_lens.shape[0]
    seq_ok = jnp.arange(s_pad) < num_seqs[0]
    q_lens = jnp.where(seq_ok, cu_q_lens[1:] - cu_q_lens[:-1], 0)
    n = (q_lens + bq - 1) // bq
    end = jnp.cumsum(n)
    i = jnp.arange(num_tiles, dtype=jnp.int32)
    seq = jnp.searchsorted(end, i, side="right").astype(jnp.int32)
    ok = seq < s_pad
    seq = jnp.minimum(seq, s_pad - 1)
    first = (i - (end[seq] - n[seq])) * bq
    return seq, first, ok, q_lens, end - n


def _attend_group(q, seq_kv_len, q_pos, row_ok, table, k_cache, v_cache, sinks, *, kv_block_pages,
                  scale, v_scale, causal, sliding_window, soft_cap):
    """Online-softmax attention of one tile group over its sequences' KV blocks.

    q: f32[G, bq, h_kv, g, d]; seq_kv_len: i32[G]; q_pos: i32[G, bq]; row_ok: bool[G, bq];
    table: i32[G, pages_per_seq_padded]. Returns f32[G, bq, h_kv, g, d].
    """
    g_tiles, bq, h_kv, g, d = q.shape
    page_size = k_cache.shape[1]
    kb = kv_block_pages * page_size
    m0 = jnp.full((g_tiles, h_kv, g, bq), -jnp.inf, jnp.float32)
    carry0 = (m0, jnp.zeros_like(m0), jnp.zeros((g_tiles, h_kv, g, bq, d), jnp.float32))

    def body(j, carry):
        m, l, acc = carry
        pages = lax.dynamic_slice_in_dim(table, j * kv_block_pages, kv_block_pages, axis=1)
        k = k_cache[pages].reshape(g_tiles, kb, h_kv, d).astype(jnp.float32)
        v = v_cache[pages].reshape(g_tiles, kb, h_kv, d).astype(jnp.float32)
        k_pos = j * kb + jnp.arange(kb, dtype=jnp.int32)  # [kb]
        key_ok = k_pos[None, :] < seq_kv_len[:, None]  # [G, kb]
        v = jnp.where(key_ok[:, :, None, None], v, 0.0)  # poisoned slots must not reach p @ v
        s = jnp.einsum("tqhgd,tkhd->thgqk", q, k, precision=_HIGHEST) * scale
        if soft_cap is not None:
            s = soft_cap * jnp.tanh(s / soft_cap)
        mask = key_ok[:, None, :] & row_ok[:, :, None]  # [G, bq, kb]
        if causal:
            mask &= k_pos[None, None, :] <= q_pos[:, :, None]
        if sliding_window is not None:
            mask &= k_pos[None, None, :] > q_pos[:, :, None] - sliding_window
        s = jnp.where(mask[:, None, None], s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(axis=-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p = jnp.exp(s - m_safe[..., None])
        alpha = jnp.exp(m - m_safe)
        l = alpha * l + p.sum(axis=-1)
        pv = jnp.einsum("thgqk,tkhd->thgqd", p, v, precision=_HIGHEST)
        return m_new, l, alpha[..., None] * acc + pv

    # only the KV blocks some valid row of the group can see
    big = jnp.iinfo(jnp.int32).max
    kv_end = jnp.broadcast_to(seq_kv_len[:, None], q_pos.shape)  # [G, bq]
    if causal:
        kv_end = jnp.minimum(q_pos + 1, kv_end)
    kv_end = jnp.max(jnp.where(row_ok, kv_end, 0))
    kv_begin = jnp.zeros_like(q_pos)
    if sliding_window is not None:
        kv_begin = jnp.maximum(q_pos - sliding_window + 1, 0)
    kv_begin = jnp.min(jnp.where(row_ok, kv_begin, big))
    m, l, acc = lax.fori_loop(kv_begin // kb, (kv_end + kb - 1) // kb, body, carry0)
    if sinks is not None:  # the sink logit joins each head's denominator: exp(sink - m), m the running max
        sink = sinks.reshape(1, h_kv, g, 1).astype(jnp.float32)
        m_safe = jnp.where(jnp.isfinite(m), m, sink)
        l = l + jnp.exp(sink - m_safe)
    out = jnp.where(l[..., None] > 0, acc / jnp.where(l > 0, l, 1.0)[..., None], 0.0)
    if v_scale is not None:
        out = out * v_scale
    return out.transpose(0, 3, 1, 2, 4)  # [G, bq, h_kv, g, d]


@functools.partial(
    jax.jit,
    static_argnames=("scale", "v_scale", "causal", "sliding_window", "soft_cap", "out_dtype", "block_bytes"),
)
def ragged_paged_attention(
    queries,  # [T_pad, h_q, d]
    k_cache,  # [num_pages, page_size, h_kv, d]
    v_cache,  # [num_pages, page_size, h_kv, d]
    kv_lens,  # i32[S_pad]
    page_indices,  # i32[S_pad, pages_per_seq]
    cu_q_lens,  # i32[S_pad + 1]
    num_seqs,  # i32[1]
    sinks=None,  # f32[h_q] attention-sink logits, or None
    *,
    scale: float,
    v_scale: float | None = None,
    causal: bool = True,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    out_dtype: Any = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
):
    """Attention of every query row over its sequence's (already updated) paged cache.

    ``scale`` already includes ``k_scale``. Returns ``[T_pad, h_q, d]`` in ``out_dtype``
    (default: the queries' dtype); padding rows are zero.
    """
    t_pad, h_q, d = queries.shape
    _, page_size, h_kv, _ = k_cache.shape
    s_pad, pps = page_indices.shape
    plan = _plan(t_pad, s_pad, h_q, h_kv, d, page_size, pps, block_bytes)
    bq, nt, gsz, kbp = plan.bq, plan.num_tiles, plan.tiles_per_group, plan.kv_block_pages
    g = h_q // h_kv

    tile_seq, tile_first, tile_ok, q_lens, tile_start = _tiles(
        cu_q_lens, kv_lens, num_seqs, bq=bq, num_tiles=nt
    )
    n_groups = cdiv(nt, gsz)
    pad = n_groups * gsz - nt
    tile_seq = jnp.pad(tile_seq, (0, pad))
    tile_first = jnp.pad(tile_first, (0, pad))
    tile_ok = jnp.pad(tile_ok, (0, pad))

    local = tile_first[:, None] + jnp.arange(bq, dtype=jnp.int32)[None, :]  # [NT, bq]
    row_ok = tile_ok[:, None] & (local < q_lens[tile_seq][:, None])
    rows = jnp.clip(cu_q_lens[tile_seq][:, None] + local, 0, t_pad - 1)
    q_pos = (kv_lens[tile_seq] - q_lens[tile_seq])[:, None] + local
    seq_kv_len = jnp.where(tile_ok, kv_lens[tile_seq], 0)
    q = queries[rows].astype(jnp.float32)
    q = jnp.where(row_ok[:, :, None, None], q, 0.0).reshape(-1, bq, h_kv, g, d)
    table = jnp.pad(page_indices, ((0, 0), (0, cdiv(pps, kbp) * kbp - pps)))[tile_seq]

    def per_group(xs):
        return _attend_group(
            *xs, k_cache, v_cache, sinks, kv_block_pages=kbp, scale=scale, v_scale=v_scale,
            causal=causal, sliding_window=sliding_window, soft_cap=soft_cap,
        )

    def grouped(x):
        return x.reshape(n_groups, gsz, *x.shape[1:])

    tiles_out = lax.map(per_group, tuple(grouped(x) for x in (q, seq_kv_len, q_pos, row_ok, table)))
    tiles_out = tiles_out.reshape(-1, h_q, d)  # [n_groups * G * bq, h_q, d]

    # back to ragged rows: token t of sequence s is row (t - cu[s]) % bq of tile
    # tile_start[s] + (t - cu[s]) // bq
    t = jnp.arange(t_pad, dtype=jnp.int32)
    seq = jnp.minimum(jnp.searchsorted(cu_q_lens[1:], t, side="right"), s_pad - 1)
    t_ok = (t < cu_q_lens[num_seqs[0]]) & (seq < num_seqs[0])
    rel = t - cu_q_lens[seq]
    flat = (tile_start[seq] + rel // bq) * bq + rel % bq
    out = jnp.where(t_ok[:, None, None], tiles_out[jnp.where(t_ok, flat, 0)], 0.0)
    return out.astype(out_dtype or queries.dtype)


def attention_kwargs(model: ModelSpec, attn: AttentionSpec, *, block_bytes: int = DEFAULT_BLOCK_BYTES) -> dict:
    """Static knobs of :func:`ragged_paged_attention` for a model and attention spec."""
    scale = attn.scale(model.head_dim) * (attn.k_scale if attn.k_scale is not None else 1.0)
    return dict(
        scale=float(scale), v_scale=attn.v_scale, causal=attn.causal,
        sliding_window=attn.sliding_window, soft_cap=attn.soft_cap,
        out_dtype=jnp.dtype(model.dtype), block_bytes=block_bytes,
    )


def reference_attention(inputs: KernelInputs, attn: AttentionSpec, *,
                        block_bytes: int = DEFAULT_BLOCK_BYTES) -> KernelOutput:
    """Update the cache with the new K/V, then attend: the canonical result for ``inputs``."""
    k_cache, v_cache = update_kv_cache(
        inputs.k_cache, inputs.v_cache, inputs.new_keys, inputs.new_values,
        inputs.kv_lens, inputs.page_indices, inputs.cu_q_lens, inputs.num_seqs,
    )
    out = ragged_paged_attention(
        inputs.queries, k_cache, v_cache, inputs.kv_lens, inputs.page_indices,
        inputs.cu_q_lens, inputs.num_seqs, inputs.attention_sink,
        **attention_kwargs(inputs.model, attn, block_bytes=block_bytes),
    )
    return KernelOutput(output=out, k_cache=k_cache, v_cache=v_cache)


# --- backend ------------------------------------------------------------------------------
REFERENCE_CAPABILITIES = Capabilities(
    dtypes=SUPPORTED_DTYPES,
    kv_dtypes=SUPPORTED_KV_DTYPES,
    head_dims=None,
    page_sizes=None,
    features=frozenset({"non_causal", "sliding_window", "soft_cap", "kv_scales", "kv_update", "chunked_prefill",
                        "attention_sinks"}),
    updates_kv_cache=True,
)


class ReferenceTuning(Tuning):
    """One knob for every case: ``block_bytes``, the working set of one step (a power of two
    from 256 KiB to 128 MiB): tuned for real wherever XLA runs (CPU, GPU)."""

    knobs = {"all": Knob("all", ("block_bytes",), option="block_bytes", call="block_bytes")}
    phase_case = dict.fromkeys(PHASES, "all")

    def grid(self, case, *, page_size, max_kv, max_q, generation=None):
        return [(2**k,) for k in range(18, 28)]

    def default(self, backend, model, attn, batch, case, generation):
        return (int(backend.block_bytes),)


class ReferenceBackend:
    """The pure-jnp reference as a kernel backend.

    ``prepare`` = the KV update (new K/V written into the cache), ``kernel`` = attention
    over the updated cache. Option ``block_bytes`` bounds one step's working set.
    Option ``extra_work`` (default 0) makes a deliberately slower kernel for A/B checks of
    the comparison machinery: it also attends for that fraction of the batch's sequences
    again (1.0: the whole batch twice) and keeps the result by a runtime data dependency
    that never changes the output, so the time grows by about that fraction.
    """

    name = "reference"
    capabilities = REFERENCE_CAPABILITIES
    tuning = ReferenceTuning()

    def __init__(self, *, options: Mapping[str, Any] | None = None) -> None:
        options = dict(options or {})
        block_bytes = int(options.pop("block_bytes", DEFAULT_BLOCK_BYTES))
        if block_bytes < 1:
            raise ValueError(f"options.block_bytes={block_bytes} must be >= 1")
        extra = options.pop("extra_work", 0.0)
        if isinstance(extra, bool) or not isinstance(extra, (int, float)) or not 0.0 <= extra <= 8.0:
            raise ValueError(f"options.extra_work={extra!r} must be a number in [0, 8]")
        if options:
            raise ValueError(f"kernel.options {sorted(options)} unknown for reference; allowed: block_bytes, extra_work")
        self.block_bytes = block_bytes
        self.extra_work = float(extra)

    def availability(self) -> tuple[bool, str]:
        return True, "pure jax.numpy; runs on every JAX backend"

    def validate(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch | None = None) -> None:
        check_capabilities(self.name, self.capabilities, model, attn, batch)

    def build(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch, *,
              interpret: bool = False) -> PreparedCall:
        del interpret  # plain XLA: nothing to interpret
        self.validate(model, attn, batch)
        kwargs = attention_kwargs(model, attn, block_bytes=self.block_bytes)

        def prepare(inputs: KernelInputs) -> tuple:
            k_cache, v_cache = update_kv_cache(
                inputs.k_cache, inputs.v_cache, inputs.new_keys, inputs.new_values,
                inputs.kv_lens, inputs.page_indices, inputs.cu_q_lens, inputs.num_seqs,
            )
            return (inputs.queries, k_cache, v_cache, inputs.kv_lens, inputs.page_indices,
                    inputs.cu_q_lens, inputs.num_seqs, inputs.attention_sink)

        extra = self.extra_work

        def kernel(queries, k_cache, v_cache, kv_lens, page_indices, cu_q_lens, num_seqs, sinks=None):
            out = ragged_paged_attention(queries, k_cache, v_cache, kv_lens, page_indices,
                                         cu_q_lens, num_seqs, sinks, **kwargs)
            passes, part = int(extra), extra - int(extra)
            for i in range(passes + (1 if part > 0 else 0)):  # deliberate extra work (A/B checks only)
                frac = 1.0 if i < passes else part
                n = jnp.maximum(1, jnp.floor(num_seqs * frac)).astype(num_seqs.dtype)
                # a runtime-zero offset per pass: identical passes would be merged by XLA (CSE)
                q_i = queries + jnp.where(num_seqs[0] < 0, i + 1, 0).astype(queries.dtype)
                again = ragged_paged_attention(q_i, k_cache, v_cache, kv_lens, page_indices, cu_q_lens, n,
                                               sinks, **kwargs)
                out = jnp.where(num_seqs[0] < 0, again, out)  # never true at run time; not foldable
            return out, k_cache, v_cache

        def finish(raw) -> KernelOutput:
            out, k_cache, v_cache = raw
            return KernelOutput(output=out, k_cache=k_cache, v_cache=v_cache)

        return PreparedCall(prepare=prepare, kernel=kernel, finish=finish, donates=False,
                            meta={"block_bytes": self.block_bytes, "extra_work": self.extra_work})

    def provenance(self) -> KernelProvenance:
        from importlib.metadata import PackageNotFoundError, version

        try:
            pkg_version = version("rpa_bench")
        except PackageNotFoundError:
            pkg_version = "unknown"
        return KernelProvenance(kernel=self.name, package="rpa_bench", version=pkg_version, jax=jax.__version__)


DECLARATION = KernelDeclaration(
    name="reference", backend=ReferenceBackend, pallas=False, takes_source=False,
    summary="the suite's pure-JAX reference (XLA; times on any device)")
