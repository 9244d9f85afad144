"""Sharded programs cross-lower for TPU slices from an abstract mesh (no TPU, no devices)."""

from __future__ import annotations

import pytest

from rpa_bench.kernels.lowering import lowering_batch
from rpa_bench.kernels.registry import get_backend
from rpa_bench.parallel.lowering import lower_sharded_for_tpu
from rpa_bench.parallel.mesh import MeshSpec
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

LLAMA = ModelSpec("llama3_8b", 32, 8, 128)


def _backend(name):
    backend = get_backend(name)
    available, reason = backend.availability()
    if not available:
        pytest.skip(reason)
    return backend


@pytest.mark.parametrize("kernel,min_calls,mesh", [
    ("rpa_v3", 2, MeshSpec(2, 1)),  # both TensorCores of one chip
    pytest.param("rpa_v3", 2, MeshSpec(2, 2), marks=pytest.mark.slow),
    ("jax_rpa", 1, MeshSpec(2, 2)),
    ("rpa_v2", 1, MeshSpec(2, 2)),
    ("reference", 0, MeshSpec(4, 2)),
], ids=lambda x: x.label if isinstance(x, MeshSpec) else str(x))
def test_every_kernel_lowers_sharded_for_a_tpu7x_chip_and_beyond(kernel, min_calls, mesh):
    res = lower_sharded_for_tpu(_backend(kernel), LLAMA, AttentionSpec(), lowering_batch(16), "TPU7x", mesh,
                                keep_text=True)
    assert res.ok, res.error
    assert res.kernel == f"{kernel}@{mesh.label}"
    assert res.custom_calls >= min_calls
    assert f"mhlo.num_partitions = {mesh.num_devices}" in res.stablehlo
    if kernel == "rpa_v3":  # v3's decode and mixed kernels, named by their block sizes
        assert any(n.startswith("RPAd-") for n in res.kernel_names)


def test_a_model_split_that_does_not_divide_the_heads_is_a_failed_result():
    res = lower_sharded_for_tpu(_backend("reference"), LLAMA, AttentionSpec(), lowering_batch(16), "TPU7x",
                                MeshSpec(1, 3))
    assert not res.ok and "mesh.model=3 must divide model.num_kv_heads=8" in res.error


def test_unknown_generation_is_a_failed_result():
    res = lower_sharded_for_tpu(_backend("reference"), LLAMA, AttentionSpec(), lowering_batch(16), "TPU v99",
                                MeshSpec(2, 1))
    assert not res.ok and "generation='TPU v99' unknown; allowed: TPU v5 lite" in res.error and "TPU7x" in res.error
