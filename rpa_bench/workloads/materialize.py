"""Materialisation of a RaggedBatch into canonical kernel inputs (arrays on device).

Canonical layout (every backend converts from this in its ``prepare`` step):
- the cache holds each sequence's *context* tokens (positions ``< kv_len - q_len``);
  the new tokens' K/V come separately in ``new_keys`` / ``new_values`` and are written
  into the cache by kernels that update it (v3), or by the backend's preparation (v2,
  JAX RPA, which read but never write the cache);
- unused pages, padding rows and not-yet-written slots are NaN-poisoned (floating KV),
  so a kernel that reads out of range or leaves output unwritten shows it. int8 has no
  NaN: its poison is the sentinel -128, a value the generated data never takes.

Arrays are padded to ``(max_num_batched_tokens, max_num_seqs)`` the way a serving engine
pads, so one compiled kernel serves every step; padding sequences have ``q_len = 0`` and
``kv_len = 0``. Pages are handed out in a shuffled order (deterministic from ``seed``),
so a sequence's pages are not contiguous, as in a real cache. The large arrays are drawn
with ``jax.random`` directly on the target device.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import ModelSpec

# int8 K/V are drawn as round(INT8_UNIT * N(0, 1)) clipped to [-127, 127]: a k/v scale of
# 1 / INT8_UNIT dequantises them to unit variance. -128 is reserved for poison.
INT8_UNIT = 32.0
INT8_POISON = -128
_METADATA_BYTES_PER_SEQ = 4 * 3  # kv_lens + cu_q_lens entries (i32), page table counted apart


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
    attention_sink: Any = None  # f32[h_q] sink logits (model.attention_sinks), else None

    @property
    def pages_per_seq(self) -> int:
        return int(self.page_indices.shape[1])

    @property
    def num_pages(self) -> int:
        return int(self.k_cache.shape[0])

    @property
    def page_size(self) -> int:
        return int(self.k_cache.shape[1])

    @property
    def num_tokens(self) -> int:
        """Valid query rows (the rest, up to ``max_num_batched_tokens``, are padding)."""
        return self.batch.num_tokens

    def arrays(self) -> dict[str, Any]:
        """The device arrays by field name (for copying, donation, byte counts)."""
        return {f: getattr(self, f) for f in _ARRAY_FIELDS}

    def copy(self) -> "KernelInputs":
        """Fresh device copies of every array (for kernels that donate their inputs)."""
        return dataclasses.replace(self, **{k: jnp.copy(v) for k, v in self.arrays().items()})


_ARRAY_FIELDS = (
    "queries", "new_keys", "new_values", "k_cache", "v_cache",
    "kv_lens", "page_indices", "cu_q_lens", "num_seqs", "distribution",
)


@dataclasses.dataclass(frozen=True)
class PaddedShape:
    """The static shape a batch is padded to (what one compiled kernel serves)."""

    max_num_batched_tokens: int
    max_num_seqs: int
    num_pages: int
    pages_per_seq: int


def padded_shape(
    batch: RaggedBatch,
    *,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    num_pages: int | None = None,
    pages_per_seq: int | None = None,
) -> PaddedShape:
    """Resolve defaults (exact sizes) and refuse sizes the batch does not fit in."""
    need = {
        "max_num_batched_tokens": batch.num_tokens,
        "max_num_seqs": batch.num_seqs,
        "num_pages": batch.num_pages,
        "pages_per_seq": max(batch.pages_per_seq),
    }
    given = {
        "max_num_batched_tokens": max_num_batched_tokens,
        "max_num_seqs": max_num_seqs,
        "num_pages": num_pages,
        "pages_per_seq": pages_per_seq,
    }
    out = {}
    for field, needed in need.items():
        value = needed if given[field] is None else int(given[field])
        if value < needed:
            raise ValueError(f"{field}={value} is too small for the batch: it needs >= {needed}")
        out[field] = value
    return PaddedShape(**out)


def estimate_bytes(
    batch: RaggedBatch,
    model: ModelSpec,
    *,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    num_pages: int,
    pages_per_seq: int | None = None,
) -> int:
    """Device bytes of the materialised inputs (queries, new K/V, both caches, metadata)."""
    pps = pages_per_seq if pages_per_seq is not None else max(batch.pages_per_seq)
    d, hq, hkv = model.head_dim, model.num_q_heads, model.num_kv_heads
    q_bytes = max_num_batched_tokens * hq * d * model.dtype_bytes
    new_kv_bytes = 2 * max_num_batched_tokens * hkv * d * model.kv_dtype_bytes
    cache_bytes = 2 * num_pages * batch.page_size * hkv * d * model.kv_dtype_bytes
    meta_bytes = max_num_seqs * (_METADATA_BYTES_PER_SEQ + 4 * pps) + 16
    return q_bytes + new_kv_bytes + cache_bytes + meta_bytes


def available_device_bytes(device: jax.Device) -> int | None:
    """Free memory on ``device``: the allocator's limit minus use on accelerators,
    ``MemAvailable`` of the host on CPU. None when it cannot be told."""
    if device.platform != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:  # noqa: BLE001 - some runtimes raise instead of returning None
            stats = {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return None
    return host_available_bytes()


def host_available_bytes() -> int | None:
    """``MemAvailable`` of this host (else the free physical pages); None when it cannot be told."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def check_fits(nbytes: int, device: jax.Device) -> None:
    """Refuse before allocating when ``nbytes`` exceeds what ``device`` has free."""
    free = available_device_bytes(device)
    if free is not None and nbytes > free:
        raise ValueError(
            f"materialised inputs need {nbytes / 2**30:.2f} GiB ({nbytes} bytes) but {device} has "
            f"{free / 2**30:.2f} GiB ({free} bytes) available; reduce the batch "
            "(kv_lens, num sequences) or num_pages"
        )


def poison_value(dtype: Any):
    """NaN where the dtype has one, else the int8 sentinel -128."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.array(jnp.nan, dtype)
    if dtype == jnp.int8:
        return jnp.array(INT8_POISON, dtype)
    raise ValueError(f"kv dtype={dtype.name!r} unsupported for poisoning; allowed: floating dtypes, int8")


def random_values(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """Values the dtype represents: N(0, 1) for floats, round(INT8_UNIT * N(0, 1)) for int8."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.int8:
        x = jnp.round(jax.random.normal(key, shape, jnp.float32) * INT8_UNIT)
        return jnp.clip(x, -127, 127).astype(jnp.int8)
    if dtype.itemsize >= 2:
        return jax.random.normal(key, shape, dtype)
    return jax.random.normal(key, shape, jnp.bfloat16).astype(dtype)  # 8-bit floats


def _page_table(batch: RaggedBatch, shape: PaddedShape, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffled page assignment: (page_indices [S_pad, pps], page_owner [P], page_ordinal [P]).

    ``page_owner[p]`` is the sequence owning page p (-1: unused); ``page_ordinal[p]`` is
    the page's index within that sequence. Unused table entries point at an unused
    (poisoned) page when one exists, else page 0.
    """
    perm = np.random.default_rng(seed).permutation(shape.num_pages).astype(np.int32)
    spare = int(perm[batch.num_pages]) if shape.num_pages > batch.num_pages else 0
    table = np.full((shape.max_num_seqs, shape.pages_per_seq), spare, np.int32)
    owner = np.full(shape.num_pages, -1, np.int32)
    ordinal = np.zeros(shape.num_pages, np.int32)
    start = 0
    for s, n in enumerate(batch.pages_per_seq):
        pages = perm[start : start + n]
        table[s, :n] = pages
        owner[pages] = s
        ordinal[pages] = np.arange(n, dtype=np.int32)
        start += n
    return table, owner, ordinal


def _generate(key, num_tokens, poison, ctx_lens, page_owner, page_ordinal, *, t_pad, h_q, h_kv, d,
              num_pages, page_size, dtype, kv_dtype):
    kq, kk, kv, kck, kcv = jax.random.split(key, 5)
    rows_ok = (jnp.arange(t_pad) < num_tokens)[:, None, None]  # [T_pad, 1, 1]
    queries = random_values(kq, (t_pad, h_q, d), dtype)
    new_k = random_values(kk, (t_pad, h_kv, d), kv_dtype)
    new_v = random_values(kv, (t_pad, h_kv, d), kv_dtype)
    k_cache = random_values(kck, (num_pages, page_size, h_kv, d), kv_dtype)
    v_cache = random_values(kcv, (num_pages, page_size, h_kv, d), kv_dtype)
    owner = jnp.maximum(page_owner, 0)  # [P]
    pos = page_ordinal[:, None] * page_size + jnp.arange(page_size)[None, :]  # [P, page_size]
    ctx_ok = (page_owner[:, None] >= 0) & (pos < ctx_lens[owner][:, None])
    ctx_ok = (ctx_ok | ~poison)[:, :, None, None]
    rows_ok = rows_ok | ~poison
    queries = jnp.where(rows_ok, queries, poison_value(dtype))
    new_k = jnp.where(rows_ok, new_k, poison_value(kv_dtype))
    new_v = jnp.where(rows_ok, new_v, poison_value(kv_dtype))
    k_cache = jnp.where(ctx_ok, k_cache, poison_value(kv_dtype))
    v_cache = jnp.where(ctx_ok, v_cache, poison_value(kv_dtype))
    return queries, new_k, new_v, k_cache, v_cache


_generate_jit = jax.jit(
    _generate,
    static_argnames=("t_pad", "h_q", "h_kv", "d", "num_pages", "page_size", "dtype", "kv_dtype"),
)


_SQRT3 = np.float32(3.0**0.5)


def _host_values(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Values drawn on the host (numpy's PCG64), in the target dtype: uniform on [-sqrt(3),
    sqrt(3)] (mean 0 and variance 1, as :func:`random_values`' N(0, 1); three times faster to
    draw on a CPU, where drawing the caches was most of a point's set-up)."""
    dtype = jnp.dtype(dtype)
    x = rng.random(shape, dtype=np.float32)
    x *= 2 * _SQRT3
    x -= _SQRT3
    if dtype == jnp.int8:
        return np.clip(np.round(x * INT8_UNIT), -127, 127).astype(np.int8)
    return x.astype(dtype)  # ml_dtypes: bfloat16 and the 8-bit floats round from float32


def _generate_host(seed, num_tokens, poison, ctx_lens, page_owner, page_ordinal, *, t_pad, h_q, h_kv, d,
                   num_pages, page_size, dtype, kv_dtype):
    """:func:`_generate` on the host: same shapes, masks and poison, without a compile per
    shape (on a CPU device the host is the device, and compiling the generator for every new
    point shape cost seconds per point)."""
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), 0x5250_4142]).spawn(5)]
    shapes = [((t_pad, h_q, d), dtype), ((t_pad, h_kv, d), kv_dtype), ((t_pad, h_kv, d), kv_dtype),
              ((num_pages, page_size, h_kv, d), kv_dtype), ((num_pages, page_size, h_kv, d), kv_dtype)]
    # numpy draws and converts with the GIL released: the five arrays (two of them the caches) in parallel
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(5, os.cpu_count() or 1)) as pool:
        queries, new_k, new_v, k_cache, v_cache = pool.map(lambda job: _host_values(job[0], *job[1]),
                                                           zip(streams, shapes))
    if poison:
        rows_bad = np.arange(t_pad) >= num_tokens
        owner = np.maximum(page_owner, 0)
        pos = page_ordinal[:, None] * page_size + np.arange(page_size)[None, :]
        ctx_bad = ~((page_owner[:, None] >= 0) & (pos < ctx_lens[owner][:, None]))
        for arr, bad in ((queries, rows_bad), (new_k, rows_bad), (new_v, rows_bad), (k_cache, ctx_bad),
                         (v_cache, ctx_bad)):
            arr[bad] = np.asarray(poison_value(arr.dtype))
    return queries, new_k, new_v, k_cache, v_cache


def materialize(
    batch: RaggedBatch,
    model: ModelSpec,
    *,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    num_pages: int | None = None,
    pages_per_seq: int | None = None,
    seed: int = 0,
    poison: bool = True,
    device: jax.Device | None = None,
) -> KernelInputs:
    """Turn ``batch`` into canonical kernel inputs on ``device`` (default: the first device).

    Sizes default to the batch's exact needs; larger values pad (padding sequences have
    q_len 0 and kv_len 0; extra pages stay unused and poisoned). ``pages_per_seq`` is the
    page-table width (a serving engine's max_model_len / page_size). Refuses with a
    ValueError when the arrays would not fit in the device's free memory.
    """
    device = device or jax.devices()[0]
    shape = padded_shape(
        batch, max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
        num_pages=num_pages, pages_per_seq=pages_per_seq,
    )
    check_fits(
        estimate_bytes(batch, model, max_num_batched_tokens=shape.max_num_batched_tokens,
                       max_num_seqs=shape.max_num_seqs, num_pages=shape.num_pages,
                       pages_per_seq=shape.pages_per_seq),
        device,
    )
    table, owner, ordinal = _page_table(batch, shape, seed)
    pad_s = shape.max_num_seqs - batch.num_seqs
    kv_lens = np.asarray(batch.kv_lens + (0,) * pad_s, np.int32)
    cu = batch.cu_q_lens()
    cu_q_lens = np.concatenate([cu, np.full(pad_s, cu[-1], np.int32)]).astype(np.int32)
    ctx_lens = np.asarray([kv - q for q, kv in zip(batch.q_lens, batch.kv_lens)] + [0] * pad_s, np.int32)

    def put(x):
        return jax.device_put(x, device)

    sizes = dict(t_pad=shape.max_num_batched_tokens, h_q=model.num_q_heads, h_kv=model.num_kv_heads,
                 d=model.head_dim, num_pages=shape.num_pages, page_size=batch.page_size,
                 dtype=jnp.dtype(model.dtype), kv_dtype=jnp.dtype(model.kv_dtype))
    if device.platform == "cpu":  # the host is the device: draw there, no compile per shape
        host = _generate_host(seed, batch.num_tokens, poison, ctx_lens, owner, ordinal, **sizes)
        queries, new_k, new_v, k_cache, v_cache = (put(x) for x in host)
    else:  # accelerators: draw on the device (inputs can be many GiB)
        queries, new_k, new_v, k_cache, v_cache = _generate_jit(
            put(jax.random.key(seed)), put(np.int32(batch.num_tokens)), put(np.bool_(poison)),
            put(ctx_lens), put(owner), put(ordinal), **sizes)
    return KernelInputs(
        batch=batch,
        model=model,
        max_num_batched_tokens=shape.max_num_batched_tokens,
        max_num_seqs=shape.max_num_seqs,
        queries=queries,
        new_keys=new_k,
        new_values=new_v,
        k_cache=k_cache,
        v_cache=v_cache,
        kv_lens=put(kv_lens),
        page_indices=put(table),
        cu_q_lens=put(cu_q_lens),
        num_seqs=put(np.asarray([batch.num_seqs], np.int32)),
        distribution=put(np.asarray(batch.distribution, np.int32)),
        seed=seed,
        attention_sink=put(sink_logits(model, seed)) if model.attention_sinks else None,
    )


def sink_logits(model: ModelSpec, seed: int) -> np.ndarray:
    """f32[h_q] sink logits for a seed: normal around 0 with spread 2, so a sink can take from
    a few percent to most of a head's softmax mass (learned sinks in gpt-oss span that)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x51CC]))
    return (2.0 * rng.standard_normal(model.num_q_heads)).astype(np.float32)
