"""The Pallas RPA backends behind the kernel interface, run in CPU interpret mode on tiny
ragged batches (decode + fixed-chunk prefill + mixed) against a float32 numpy computation:
layouts, v3's in-kernel cache update, v2/JAX RPA's cache write in prepare, and refusals."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from rpa_bench.kernels.registry import get_backend
from rpa_bench.kernels.rpa_v2 import interleave_cache, split_pages
from rpa_bench.kernels.rpa_v3 import merge_cache, split_cache
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.materialize import materialize
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

# decode, a fixed 8-token prefill chunk, a mixed prefill; padded to 16 rows / 4 sequences
BATCH = RaggedBatch.ordered([5, 1, 8], [40, 30, 20], page_size=16, chunk_prefill_size=8)
PAD = dict(max_num_batched_tokens=16, max_num_seqs=4, num_pages=BATCH.num_pages + 3)


def tiny_model(dtype: str = "float32", kv_dtype: str | None = None, **over) -> ModelSpec:
    fields = dict(name="tiny", num_q_heads=4, num_kv_heads=2, head_dim=128, dtype=dtype, kv_dtype=kv_dtype or dtype)
    return ModelSpec(**{**fields, **over})


def numpy_rpa(inputs, attn: AttentionSpec):
    """float32 numpy: write the new K/V into the caches, then attend. (out, k_cache, v_cache)."""
    batch, model = inputs.batch, inputs.model
    f32 = lambda x: np.asarray(jnp.asarray(x, jnp.float32))  # noqa: E731
    q, new_k, new_v = f32(inputs.queries), f32(inputs.new_keys), f32(inputs.new_values)
    k_cache, v_cache = f32(inputs.k_cache).copy(), f32(inputs.v_cache).copy()
    table, page_size, group = np.asarray(inputs.page_indices), batch.page_size, model.num_queries_per_kv
    out = np.zeros_like(q)
    cu = batch.cu_q_lens()
    for s, (q_len, kv_len) in enumerate(zip(batch.q_lens, batch.kv_lens)):
        rows = slice(cu[s], cu[s + 1])
        pos = np.arange(kv_len)
        page, slot = table[s, pos // page_size], pos % page_size
        new = slice(kv_len - q_len, kv_len)
        k_cache[page[new], slot[new]] = new_k[rows]
        v_cache[page[new], slot[new]] = new_v[rows]
        k = np.repeat(k_cache[page, slot], group, axis=1) * (attn.k_scale or 1.0)
        v = np.repeat(v_cache[page, slot], group, axis=1)
        logits = np.einsum("qhd,khd->hqk", q[rows], k) * attn.scale(model.head_dim)
        if attn.soft_cap is not None:
            logits = attn.soft_cap * np.tanh(logits / attn.soft_cap)
        q_pos = (kv_len - q_len + np.arange(q_len))[:, None]
        keep = np.ones((q_len, kv_len), bool)
        if attn.causal:
            keep &= pos[None, :] <= q_pos
        if attn.sliding_window is not None:
            keep &= pos[None, :] > q_pos - attn.sliding_window
        logits = np.where(keep[None], logits, -np.inf)
        p = np.exp(logits - logits.max(axis=-1, keepdims=True))
        out[rows] = np.einsum("hqk,khd->qhd", p / p.sum(axis=-1, keepdims=True), v) * (attn.v_scale or 1.0)
    return out, k_cache, v_cache


def run_backend(name: str, inputs, attn: AttentionSpec, **options):
    backend = get_backend(name, options=options or None)
    call = backend.build(inputs.model, attn, inputs.batch, interpret=True)
    fresh = inputs.copy() if call.donates else inputs
    return call.finish(call.kernel(*call.prepare(call.state(fresh)))), call


def max_err(got, want, n: int) -> float:
    return float(np.max(np.abs(np.asarray(jnp.asarray(got, jnp.float32))[:n] - want[:n])))


def assert_caches_exact(result, want_k, want_v):
    for got, want in ((result.k_cache, want_k), (result.v_cache, want_v)):
        np.testing.assert_array_equal(np.asarray(jnp.asarray(got, jnp.float32)), want)  # NaN poison included


# --- numerics in interpret mode -------------------------------------------------------
def test_rpa_v3_matches_numpy_and_updates_the_cache_exactly():
    inputs = materialize(BATCH, tiny_model(), seed=3, **PAD)
    result, call = run_backend("rpa_v3", inputs, AttentionSpec())
    assert call.donates and call.meta["block_sizes"]["prefill"] is not None  # all three kernels ran
    out, k_cache, v_cache = numpy_rpa(inputs, AttentionSpec())
    assert max_err(result.output, out, BATCH.num_tokens) < 1e-5
    assert_caches_exact(result, k_cache, v_cache)


@pytest.mark.parametrize("name", ["rpa_v2", "jax_rpa"])
def test_older_api_kernels_match_numpy_with_the_cache_written_in_prepare(name):
    model = tiny_model()
    inputs = materialize(BATCH, model, seed=4, **PAD)
    out, k_cache, v_cache = numpy_rpa(inputs, AttentionSpec())
    backend = get_backend(name)
    call = backend.build(model, AttentionSpec(), BATCH, interpret=True)
    state = call.state(inputs.copy())
    before = np.asarray(state[3])  # kv_pages as laid out, before this step's tokens
    args = call.prepare(state)
    written = np.asarray(args[1])
    np.testing.assert_array_equal(written[:, :, 0::2], k_cache)  # prepare == the whole cache update
    np.testing.assert_array_equal(written[:, :, 1::2], v_cache)
    assert np.isnan(before).sum() > np.isnan(written).sum()  # new slots were poisoned before
    result = call.finish(call.kernel(*args))
    assert max_err(result.output, out, BATCH.num_tokens) < 1e-5
    assert_caches_exact(result, k_cache, v_cache)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rpa_v3", "rpa_v2", "jax_rpa"])
@pytest.mark.parametrize(
    "dtype, kv_dtype, attn, tol",
    [
        ("float32", "float32", AttentionSpec(sliding_window=12, soft_cap=20.0), 1e-5),
        ("bfloat16", "bfloat16", AttentionSpec(), 0.05),
        ("bfloat16", "float8_e4m3fn", AttentionSpec(k_scale=0.5, v_scale=2.0), 0.1),
    ],
    ids=["f32-window-softcap", "bf16", "fp8-kv-scales"],
)
def test_backends_match_numpy_across_dtypes_and_features(name, dtype, kv_dtype, attn, tol):
    inputs = materialize(BATCH, tiny_model(dtype, kv_dtype), seed=5, **PAD)
    result, _ = run_backend(name, inputs, attn)
    out, k_cache, v_cache = numpy_rpa(inputs, attn)
    assert max_err(result.output, out, BATCH.num_tokens) < tol
    assert_caches_exact(result, k_cache, v_cache)


@pytest.mark.slow
def test_rpa_v3_non_causal_prefill_matches_numpy():
    batch = RaggedBatch.ordered([24], [24], page_size=16)
    inputs = materialize(batch, tiny_model(), seed=6)
    attn = AttentionSpec(causal=False)
    result, _ = run_backend("rpa_v3", inputs, attn, m_block_sizes=[8, 16, 8, 16])
    assert max_err(result.output, numpy_rpa(inputs, attn)[0], batch.num_tokens) < 1e-5


# --- layouts (no kernel run) ----------------------------------------------------------
@pytest.mark.parametrize(
    "kv_dtype, h_kv, d", [("float32", 2, 128), ("bfloat16", 3, 96), ("float8_e4m3fn", 1, 256)]
)
def test_v3_merged_cache_interleaves_heads_and_round_trips(kv_dtype, h_kv, d):
    from rpa_bench.kernels import loader

    mod = loader.kernel_module("v3")
    rng = np.random.default_rng(0)
    k = jnp.asarray(rng.standard_normal((3, 16, h_kv, d)), kv_dtype)
    v = jnp.asarray(rng.standard_normal((3, 16, h_kv, d)), kv_dtype)
    merged = merge_cache(mod, k, v)
    packing = 4 // jnp.dtype(kv_dtype).itemsize
    assert merged.shape == (3, 16, -(-2 * h_kv // packing), packing, -(-d // 128) * 128)
    heads = np.asarray(merged.reshape(3, 16, -1, merged.shape[-1]))
    np.testing.assert_array_equal(heads[:, :, 2 * (h_kv - 1), :d], np.asarray(k)[:, :, h_kv - 1])  # even = K
    np.testing.assert_array_equal(heads[:, :, 1, :d], np.asarray(v)[:, :, 0])  # odd = V
    k2, v2 = split_cache(merged, num_kv_heads=h_kv, head_dim=d)
    np.testing.assert_array_equal(np.asarray(k2), np.asarray(k))
    np.testing.assert_array_equal(np.asarray(v2), np.asarray(v))


def test_v2_kv_pages_interleave_heads_and_round_trip():
    rng = np.random.default_rng(1)
    k, v = (jnp.asarray(rng.standard_normal((2, 8, 3, 128)), jnp.bfloat16) for _ in range(2))
    pages = interleave_cache(k, v)
    assert pages.shape == (2, 8, 6, 128)
    np.testing.assert_array_equal(np.asarray(pages[:, :, 4]), np.asarray(k[:, :, 2]))
    np.testing.assert_array_equal(np.asarray(pages[:, :, 5]), np.asarray(v[:, :, 2]))
    k2, v2 = split_pages(pages)
    assert (np.asarray(k2) == np.asarray(k)).all() and (np.asarray(v2) == np.asarray(v)).all()


# --- refusals, defaults, provenance ---------------------------------------------------
@pytest.mark.parametrize(
    "name, model, attn, batch, message",
    [
        ("rpa_v3", tiny_model("bfloat16", "int8"), AttentionSpec(), BATCH,
         "kernel=rpa_v3: model.kv_dtype='int8' unsupported; allowed: float32, bfloat16, float8_e4m3fn, float8_e5m2"),
        ("rpa_v3", tiny_model("bfloat16", "float8_e5m2"), AttentionSpec(), RaggedBatch((1,), (9,), page_size=6),
         "kernel=rpa_v3: page_size=6 unsupported for model.kv_dtype='float8_e5m2'; allowed: multiples of 4"),
        ("rpa_v2", tiny_model(head_dim=96), AttentionSpec(), BATCH,
         "kernel=rpa_v2: model.head_dim=96 unsupported; allowed: multiples of 128"),
        ("rpa_v3", tiny_model(head_dim=96), AttentionSpec(), BATCH,
         "kernel=rpa_v3: model.head_dim=96 unsupported; allowed: multiples of 128"),
        ("jax_rpa", tiny_model(), AttentionSpec(causal=False), BATCH,
         "kernel=jax_rpa: attention feature(s) ['non_causal'] unsupported"),
        ("rpa_v2", tiny_model("bfloat16", num_q_heads=6, num_kv_heads=3), AttentionSpec(), BATCH,
         "kernel=rpa_v2: model.num_kv_heads=3 unsupported with model.kv_dtype='bfloat16'"),
    ],
    ids=["v3-int8-kv", "v3-fp8-page-size", "v2-head-dim-96", "v3-head-dim-96", "jax-non-causal", "v2-untiled-kv-heads"],
)
def test_unsupported_configurations_are_refused_before_compiling(name, model, attn, batch, message):
    backend = get_backend(name)
    with pytest.raises(ValueError) as err:
        backend.validate(model, attn, batch)
    assert message in str(err.value)
    with pytest.raises(ValueError):
        backend.build(model, attn, batch, interpret=True)


def test_rpa_v3_padded_head_dim_only_when_asked_for():
    model = tiny_model(head_dim=96)
    with pytest.raises(ValueError, match="kernel.options.pad_head_dim=true"):
        get_backend("rpa_v3").validate(model, AttentionSpec(), BATCH)
    get_backend("rpa_v3", options={"pad_head_dim": True}).validate(model, AttentionSpec(), BATCH)


def test_rpa_v3_refuses_blocks_that_overflow_the_vmem_limit():
    backend = get_backend("rpa_v3", options={"m_block_sizes": [256, 512, 256, 512], "vmem_limit_bytes": 1 << 20})
    with pytest.raises(ValueError, match=r"m_block_sizes=\[256, 512, 256, 512\] need about \d+ bytes of VMEM > "
                                         r"vmem_limit_bytes=1048576"):
        backend.validate(tiny_model(), AttentionSpec(), BATCH)


def test_rpa_v3_default_blocks_come_from_the_kernel_heuristic_and_satisfy_its_constraints():
    batch = RaggedBatch.ordered([1, 20], [48, 40], page_size=16)  # 3-page sequences: 48 // 2 is not a page multiple
    plan = get_backend("rpa_v3").plan(tiny_model(), batch)
    assert plan.device_kind == "TPU7x" and plan.vmem_limit_bytes == 64 * 2**20
    assert plan.block_sizes_source == {"decode": "heuristic:TPU7x", "mixed": "heuristic:TPU7x"}
    for bq, bkv, bq_c, bkv_c in (plan.d_block_sizes, plan.m_block_sizes):
        assert bq % bq_c == 0 and bkv % bkv_c == 0 and bkv % 16 == 0 and bkv_c % 16 == 0
    given = get_backend("rpa_v3", options={"m_block_sizes": [8, 32, 4, 16], "generation": "TPU v6 lite"})
    plan = given.plan(tiny_model(), batch)
    assert plan.m_block_sizes == (8, 32, 4, 16) and plan.block_sizes_source["mixed"] == "config"
    assert plan.vmem_limit_bytes == 128 * 2**20  # v6e's VMEM


def test_older_api_blocks_fit_the_batch():
    blocks = get_backend("jax_rpa", options={"num_kv_pages_per_block": 64}).block_sizes(tiny_model(), BATCH)
    assert blocks["num_kv_pages_per_block"] == max(BATCH.pages_per_seq)  # the kernel needs <= pages_per_seq
    assert blocks["num_queries_per_block"] == min(32, BATCH.num_tokens)  # JAX's default off its tuned table


@pytest.mark.parametrize("name, version_key", [("rpa_v3", "v3"), ("rpa_v2", "v2"), ("jax_rpa", None)])
def test_provenance_names_the_code_that_runs(name, version_key):
    prov = get_backend(name).provenance()
    assert prov.kernel == name and len(prov.kernel_sha256) == 64
    if version_key:
        assert prov.package == "tpu-inference" and prov.kernel_file.endswith(f"{version_key}/kernel.py")
    else:
        assert prov.package == "jax"
