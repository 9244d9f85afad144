"""Materialising ragged batches: padding, shuffled pages, poison, determinism, memory check."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from rpa_bench.workloads import materialize as mat
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.materialize import estimate_bytes, materialize
from rpa_bench.workloads.model import ModelSpec

BATCH = RaggedBatch.ordered([1, 6, 1, 9], [13, 6, 30, 20], page_size=4, chunk_prefill_size=6)
T_PAD, S_PAD, PAGES = 24, 6, 30


def tiny(kv_dtype="bfloat16", dtype="bfloat16"):
    return ModelSpec("tiny", 4, 2, 8, dtype=dtype, kv_dtype=kv_dtype)


def build(kv_dtype="bfloat16", seed=0, **kw):
    sizes = dict(max_num_batched_tokens=T_PAD, max_num_seqs=S_PAD, num_pages=PAGES) | kw
    return materialize(BATCH, tiny(kv_dtype), seed=seed, **sizes)


def f32(x):
    return np.asarray(x.astype(np.float32) if x.dtype != np.int8 else x, np.float32)


def test_padded_shapes_and_metadata():
    x = build()
    assert x.queries.shape == (T_PAD, 4, 8)
    assert x.new_keys.shape == x.new_values.shape == (T_PAD, 2, 8)
    assert x.k_cache.shape == x.v_cache.shape == (PAGES, 4, 2, 8)
    assert x.page_indices.shape == (S_PAD, 8)  # ceil(30 / 4)
    np.testing.assert_array_equal(x.kv_lens, [13, 30, 6, 20, 0, 0])
    np.testing.assert_array_equal(x.cu_q_lens, [0, 1, 2, 8, 17, 17, 17])
    np.testing.assert_array_equal(x.distribution, [2, 3, 4])
    np.testing.assert_array_equal(x.num_seqs, [4])
    assert x.num_tokens == 17 and x.page_size == 4


def test_exact_sizes_by_default():
    shape = mat.padded_shape(BATCH)
    assert shape.max_num_batched_tokens == BATCH.num_tokens
    assert shape.max_num_seqs == BATCH.num_seqs
    assert shape.num_pages == BATCH.num_pages
    assert shape.pages_per_seq == max(BATCH.pages_per_seq)


def test_pages_are_shuffled_distinct_and_in_range():
    x = build(seed=5)
    table = np.asarray(x.page_indices)
    used = np.concatenate([table[s, :n] for s, n in enumerate(BATCH.pages_per_seq)])
    assert len(set(used.tolist())) == len(used) == BATCH.num_pages
    assert used.min() >= 0 and used.max() < PAGES
    assert not all(np.all(np.diff(table[s, :n]) == 1) for s, n in enumerate(BATCH.pages_per_seq) if n > 1)


def test_same_seed_same_arrays_other_seed_differs():
    a, b, c = build(seed=1), build(seed=1), build(seed=2)
    for name in ("queries", "k_cache", "page_indices"):
        np.testing.assert_array_equal(f32(getattr(a, name)), f32(getattr(b, name)))
    assert not np.array_equal(np.asarray(a.page_indices), np.asarray(c.page_indices))
    assert not np.array_equal(f32(a.queries)[:17], f32(c.queries)[:17])


def context_mask(x) -> np.ndarray:
    """bool[num_pages, page_size]: slots holding context (positions < kv_len - q_len)."""
    mask = np.zeros(x.k_cache.shape[:2], bool)
    table = np.asarray(x.page_indices)
    for s, (q, kv) in enumerate(zip(BATCH.q_lens, BATCH.kv_lens)):
        for pos in range(kv - q):
            mask[table[s, pos // 4], pos % 4] = True
    return mask


@pytest.mark.parametrize("kv_dtype", ["float32", "bfloat16", "float8_e4m3fn"])
def test_floating_kv_poisoned_with_nan_outside_context(kv_dtype):
    x = build(kv_dtype)
    ctx = context_mask(x)
    for cache in (f32(x.k_cache), f32(x.v_cache)):
        assert np.isfinite(cache[ctx]).all()
        assert np.isnan(cache[~ctx]).all()  # unused pages and not-yet-written slots
    for rows in (f32(x.new_keys), f32(x.queries)):
        assert np.isfinite(rows[:17]).all() and np.isnan(rows[17:]).all()


def test_int8_kv_in_range_with_sentinel_poison():
    x = build("int8")
    ctx = context_mask(x)
    cache = np.asarray(x.k_cache)
    assert cache.dtype == np.int8
    assert (cache[ctx] >= -127).all() and (cache[~ctx] == mat.INT8_POISON).all()
    assert np.abs(cache[ctx]).std() > 10  # spread over the int8 range, not all zeros
    assert (np.asarray(x.new_keys)[17:] == mat.INT8_POISON).all()


def test_poison_off_leaves_everything_finite():
    x = build("float8_e4m3fn", poison=False)
    assert np.isfinite(f32(x.k_cache)).all() and np.isfinite(f32(x.queries)).all()


def test_padding_sequences_point_at_an_unused_page():
    x = build()
    table = np.asarray(x.page_indices)
    spare = table[4, 0]
    assert (table[4:] == spare).all()
    assert not context_mask(x)[spare].any()


@pytest.mark.parametrize(
    "field,value",
    [("max_num_batched_tokens", 16), ("max_num_seqs", 3), ("num_pages", 10), ("pages_per_seq", 7)],
)
def test_sizes_too_small_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"{field}={value}"):
        build(**{field: value})


def test_estimate_bytes_paper_decode_needs_about_17_gb():
    batch = RaggedBatch.ordered([1] * 128, [32768] * 128, page_size=256)
    model = ModelSpec("llama3_8b", 32, 8, 128)
    n = estimate_bytes(batch, model, max_num_batched_tokens=128, max_num_seqs=128, num_pages=batch.num_pages)
    kv_cache = 2 * 128 * 32768 * 8 * 128 * 2
    assert kv_cache == 17_179_869_184
    assert kv_cache < n < kv_cache * 1.01


def test_refuses_before_allocating_when_memory_is_short(monkeypatch):
    monkeypatch.setattr(mat, "available_device_bytes", lambda device: 1000)

    def boom(*a, **k):
        raise AssertionError("allocated despite the refusal")

    monkeypatch.setattr(mat, "_generate_jit", boom)
    with pytest.raises(ValueError, match=r"need .* GiB \(\d+ bytes\) but .*\(1000 bytes\)"):
        build()


def test_available_memory_on_cpu_is_the_hosts_available_memory():
    free = mat.available_device_bytes(jax.devices("cpu")[0])
    meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in open("/proc/meminfo")}
    # the host's MemAvailable at about the same moment (other processes move it a little)
    assert free == pytest.approx(meminfo["MemAvailable"], rel=0.05)
    assert 0 < free <= meminfo["MemTotal"]


def test_arrays_on_requested_device():
    device = jax.devices()[-1]
    x = build(device=device)
    for arr in x.arrays().values():
        assert arr.devices() == {device}


def test_copy_gives_fresh_equal_arrays():
    x = build()
    y = x.copy()
    assert y.k_cache is not x.k_cache
    np.testing.assert_array_equal(f32(y.k_cache), f32(x.k_cache))
