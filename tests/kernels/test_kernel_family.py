"""The kernel family: declarations drive the registry; the experimental kernels' options,
block-size plans and refusals; their correctness in interpret mode (slow: ~1 min a call)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from rpa_bench.kernels import registry
from rpa_bench.kernels.reference import reference_attention
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.materialize import materialize
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

CONF = Path(__file__).resolve().parents[2] / "conf" / "kernel"
F32 = ModelSpec(name="t", num_q_heads=8, num_kv_heads=2, head_dim=128, dtype="float32", kv_dtype="float32")


def test_every_declared_kernel_has_a_config_and_every_config_a_declaration():
    confs = {p.stem: yaml.safe_load(p.read_text())["name"] for p in CONF.glob("*.yaml")}
    assert all(stem == name for stem, name in confs.items())
    assert set(confs) == set(registry.BACKENDS)
    for decl in registry.declarations():
        assert decl.backend.name == decl.name
        assert (decl.name in registry.PALLAS_BACKENDS) == decl.pallas
        assert (decl.name in registry.SOURCE_BACKENDS) == decl.takes_source


def test_the_family_is_registered():
    assert {"rpa_v3", "rpa_v2", "jax_rpa", "reference", "rpa_v3_hd64", "batched_rpa", "stacked_rpa"} <= \
        set(registry.BACKENDS)


@pytest.mark.parametrize("name, option, value, message", [
    ("batched_rpa", "decode_block_sizes", [1, 1, 512], r"decode_block_sizes=\[1, 1, 512\] must be \[bq_sz, bq_c_sz"),
    ("stacked_rpa", "prefill_block_sizes", [8, 8, 256, 2, 3], r"n_buffer=3; allowed: 2"),
    ("rpa_v3_hd64", "num_queries_per_block", 0, r"num_queries_per_block=0 must be a positive integer"),
])
def test_bad_options_name_the_field_and_the_allowed_values(name, option, value, message):
    with pytest.raises(ValueError, match=message):
        registry.get_backend(name, options={option: value})


def test_stacked_rpa_refuses_a_page_size_off_its_lane_width():
    batch = RaggedBatch.ordered([1], [40], page_size=16)
    with pytest.raises(ValueError, match=r"kernel=stacked_rpa: page_size=16 unsupported; allowed: multiples of 128"):
        registry.get_backend("stacked_rpa").validate(F32, AttentionSpec(), batch)


def test_causal_only_kernels_refuse_non_causal_attention():
    hd64 = ModelSpec(name="h", num_q_heads=8, num_kv_heads=1, head_dim=64)
    for name, model in (("batched_rpa", F32), ("stacked_rpa", F32), ("rpa_v3_hd64", hd64)):
        with pytest.raises(ValueError, match=r"attention feature\(s\) \['non_causal'\] unsupported"):
            registry.get_backend(name).validate(model, AttentionSpec(causal=False))


@pytest.mark.parametrize("name", ["batched_rpa", "stacked_rpa"])
def test_block_sizes_are_the_kernels_own_for_the_target_generation(name):
    batch = RaggedBatch.ordered([1, 1, 20], [40, 170, 50], page_size=128)
    backend = registry.get_backend(name)
    plans = {g: backend.block_sizes(F32, AttentionSpec(), batch, generation=g) for g in ("tpu7x", "v5e")}
    for g, plan in plans.items():
        assert set(plan["source"]) == {"decode", "prefill"}
        assert all(src.endswith(plan["device_kind"]) and src.split(":")[0] != "config"
                   for src in plan["source"].values())
    configured = registry.get_backend(name, options={"prefill_block_sizes": list(plans["tpu7x"]["prefill"])})
    assert configured.block_sizes(F32, AttentionSpec(), batch)["source"]["prefill"] == "config"


@pytest.mark.slow  # interpret mode: about a minute per call
@pytest.mark.parametrize("name, page", [("batched_rpa", 16), ("stacked_rpa", 128)])
def test_experimental_kernels_match_the_reference_in_interpret_mode(name, page):
    batch = RaggedBatch.ordered([1, 1, 20], [40, 170, 50], page_size=page)
    inputs = materialize(batch, F32, poison=False, seed=1)
    ref = np.asarray(reference_attention(inputs, AttentionSpec()).output)[: batch.num_tokens]
    prepared = registry.get_backend(name).build(F32, AttentionSpec(), batch, interpret=True)
    out = prepared.finish(prepared.kernel(*prepared.prepare(prepared.layout(inputs)))).output
    np.testing.assert_allclose(np.asarray(out)[: batch.num_tokens], ref, atol=2e-5, rtol=1e-4)
