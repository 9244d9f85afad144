"""The interpret-mode fixes: TPU bitcast semantics, views through ref transforms, and a
tiny Pallas kernel that reshapes / bitcasts refs (vector access and DMA) and does a
rank-2 masked store, run in CPU interpret mode and checked against numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from rpa_bench.kernels import compat_interpret
from rpa_bench.kernels.compat_interpret import patched_interpreter, read_view, tpu_bitcast, tpu_interpret_mode, write_view


def _jax_bitcast(x: np.ndarray, dtype) -> np.ndarray:
    from jax._src.state import utils as state_utils

    return np.asarray(state_utils.bitcast(jnp.asarray(x), dtype))


@pytest.mark.parametrize(
    "src, dst, shape",
    [
        (jnp.bfloat16, jnp.uint32, (16, 128)),  # pack 2 rows per word
        (jnp.uint32, jnp.bfloat16, (8, 128)),  # unpack
        (jnp.float8_e4m3fn, jnp.uint32, (2, 8, 128)),  # pack 4, with a leading axis
        (jnp.uint32, jnp.int8, (4, 128)),
        (jnp.float32, jnp.int32, (3, 5)),  # same width: a plain view
    ],
)
def test_tpu_bitcast_matches_jax_state_bitcast(src, dst, shape):
    bits = np.random.default_rng(0).integers(0, 2**32, size=shape, dtype=np.uint32)
    x = bits.view(np.uint8).reshape(*shape[:-1], -1)[..., : shape[-1] * np.dtype(src).itemsize]
    x = np.ascontiguousarray(x).view(src).reshape(shape)
    ours = tpu_bitcast(x, dst)
    theirs = _jax_bitcast(x, dst)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours.view(np.uint8), theirs.view(np.uint8))


def test_bitcast_pack_puts_even_row_in_low_half():
    x = np.arange(4 * 2, dtype=np.uint16).reshape(4, 2).view(jnp.bfloat16)
    words = tpu_bitcast(x, np.uint32)
    assert words.shape == (2, 2)
    assert words[0, 0] == (0 | (2 << 16)) and words[1, 1] == (5 | (7 << 16))


def test_write_view_is_inverse_of_read_view_through_reshape_and_bitcast():
    from jax._src.state import indexing
    from jax._src.state.types import BitcastTransform, ReshapeTransform

    base = np.arange(2 * 16 * 128, dtype=np.float32).reshape(2, 16, 128).astype(jnp.bfloat16)
    chain = (
        jax.tree.map(int, indexing.NDIndexer.from_indices_shape((1,), base.shape)),
        ReshapeTransform((8, 256)),
        BitcastTransform(jnp.dtype(jnp.uint32)),
    )
    view = read_view(base, chain)
    assert view.shape == (4, 256) and view.dtype == np.uint32
    new = write_view(base, chain, view ^ np.uint32(0xFFFF))  # flip the even rows' bits
    np.testing.assert_array_equal(new[0].view(np.uint16), base[0].view(np.uint16))
    changed = new[1].reshape(8, 256).view(np.uint16) ^ base[1].reshape(8, 256).view(np.uint16)
    assert (changed[0::2] == 0xFFFF).all() and (changed[1::2] == 0).all()
    np.testing.assert_array_equal(read_view(new, chain), view ^ np.uint32(0xFFFF))


def _transform_kernel(x_hbm, words_ref, swapped_ref, masked_ref, back_hbm, buf, words_buf, sem):
    # DMA whose source is a reshaped ref: bf16 [2, 8, 128] -> [16, 128]
    copy = pltpu.make_async_copy(x_hbm.reshape(16, 128), buf, sem)
    copy.start()
    copy.wait()
    words = buf.bitcast(jnp.uint32)[...]  # vector load through a bitcast: [8, 128] u32
    words_ref[...] = words
    swapped = (words << 16) | (words >> 16)  # exchange rows 2i and 2i+1
    swapped_ref.reshape(16, 128).bitcast(jnp.uint32)[...] = swapped  # store through reshape + bitcast
    masked_ref[...] = jnp.zeros(masked_ref.shape, jnp.float32)
    rows = jax.lax.broadcasted_iota(jnp.int32, masked_ref.shape, 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, masked_ref.shape, 1)
    mask = (rows >= 2) & (rows < 5) & (cols < 64)
    pltpu.store(masked_ref, jnp.ones(masked_ref.shape, jnp.float32), mask=mask)  # rank-2 masked store
    words_buf[...] = words
    back = pltpu.make_async_copy(words_buf, back_hbm.bitcast(jnp.uint32), sem)  # DMA into a bitcast ref
    back.start()
    back.wait()


def _run_transform_kernel(x):
    vmem = pltpu.MemorySpace.VMEM
    return pl.pallas_call(
        _transform_kernel,
        in_specs=[pl.BlockSpec(memory_space=pltpu.MemorySpace.HBM)],
        out_specs=[
            pl.BlockSpec(memory_space=vmem),
            pl.BlockSpec(memory_space=vmem),
            pl.BlockSpec(memory_space=vmem),
            pl.BlockSpec(memory_space=pltpu.MemorySpace.HBM),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((8, 128), jnp.uint32),
            jax.ShapeDtypeStruct((2, 8, 128), jnp.bfloat16),
            jax.ShapeDtypeStruct((8, 128), jnp.float32),
            jax.ShapeDtypeStruct((16, 128), jnp.bfloat16),
        ],
        scratch_shapes=[pltpu.VMEM((16, 128), jnp.bfloat16), pltpu.VMEM((8, 128), jnp.uint32), pltpu.SemaphoreType.DMA],
    )(x)


def test_kernel_with_ref_reshape_bitcast_dma_and_masked_store_matches_numpy():
    x = np.random.default_rng(1).standard_normal((2, 8, 128)).astype(jnp.bfloat16)
    with tpu_interpret_mode() as active:
        assert active
        words, swapped, masked, back = jax.block_until_ready(_run_transform_kernel(jnp.asarray(x)))
    flat16 = x.reshape(16, 128).view(np.uint16).astype(np.uint32)
    np.testing.assert_array_equal(np.asarray(words), flat16[0::2] | (flat16[1::2] << 16))
    pairs = x.reshape(8, 2, 128)[:, ::-1].reshape(2, 8, 128)
    np.testing.assert_array_equal(np.asarray(swapped).view(np.uint16), pairs.view(np.uint16))
    expected = np.zeros((8, 128), np.float32)
    expected[2:5, :64] = 1.0
    np.testing.assert_array_equal(np.asarray(masked), expected)
    np.testing.assert_array_equal(np.asarray(back).view(np.uint16), x.reshape(16, 128).view(np.uint16))


def test_patch_is_restored_on_exit_and_reentrant():
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc
    from jax._src.pallas.mosaic.interpret import shared_memory

    before = (ipc.get, ipc.store, ipc.swap, shared_memory.SharedMemory.swap_buffer_content)
    with patched_interpreter():
        inner = ipc.get
        assert inner is not before[0]
        with patched_interpreter():
            assert ipc.get is inner
        assert ipc.get is inner  # still inside the outer context
    assert (ipc.get, ipc.store, ipc.swap, shared_memory.SharedMemory.swap_buffer_content) == before


def test_unverified_jax_version_warns_and_leaves_interpreter_alone(monkeypatch):
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc

    monkeypatch.setattr(compat_interpret, "VERIFIED_JAX_VERSIONS", ("0.0.0",))
    original = ipc.get
    with pytest.warns(RuntimeWarning, match=r"jax==.* is not a verified version"):
        with patched_interpreter() as active:
            assert active is False
            assert ipc.get is original
    assert compat_interpret.patch_supported()[0] is False


def _waits_for_a_copy_never_started(x_hbm, o_ref, buf, sem):
    pltpu.make_async_copy(x_hbm, buf, sem).wait()  # no .start(): nothing will ever signal `sem`
    o_ref[...] = buf[...]


def test_a_wait_nothing_can_end_fails_naming_the_semaphore_instead_of_hanging(monkeypatch):
    from rpa_bench.kernels.checking import _first_line

    monkeypatch.setitem(compat_interpret.DEADLOCK_S, "one_core", 2.0)
    with tpu_interpret_mode(), pytest.raises(Exception) as info:
        call = pl.pallas_call(
            _waits_for_a_copy_never_started,
            out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
            in_specs=[pl.BlockSpec(memory_space=pltpu.MemorySpace.HBM)],
            scratch_shapes=[pltpu.VMEM((8, 128), jnp.float32), pltpu.SemaphoreType.DMA],
        )
        jax.block_until_ready(call(jnp.ones((8, 128), jnp.float32)))
    line = _first_line(info.value)
    assert line.startswith("interpret-mode deadlock: the kernel waits on DMA semaphore"), line
    assert "for 4096, it holds 0 and no pending copy can signal it" in line
