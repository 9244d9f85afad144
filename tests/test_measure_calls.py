"""The timed variants of a backend call: named modules, compile apart, donation, outputs."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpa_bench.kernels.base import KernelOutput, PreparedCall
from rpa_bench.measure.calls import build_timed_calls, split_arrays


@dataclasses.dataclass
class Inputs:
    label: str
    x: jax.Array  # f32[8]
    y: jax.Array  # f32[8]


def _prepared(donates: bool) -> PreparedCall:
    def prepare(inp):  # "preprocessing": a merge, as the K/V merge into the cache layout
        return (jnp.stack([inp.x, inp.y]),)

    def kernel(xy):
        return xy.sum(0) * 2.0

    return PreparedCall(prepare=prepare, kernel=kernel, finish=lambda raw: KernelOutput(output=raw), donates=donates)


def test_split_arrays_rebuilds_a_plain_dataclass_with_its_static_fields():
    inp = Inputs("a", jnp.ones(8), jnp.zeros(8))
    leaves, rebuild = split_arrays(inp)
    assert len(leaves) == 2
    again = rebuild([jnp.full(8, 3.0), jnp.full(8, 4.0)])
    assert again.label == "a" and float(again.y[0]) == 4.0


def test_both_variants_compile_apart_with_their_own_module_names():
    inp = Inputs("a", jnp.arange(8.0), jnp.ones(8))
    calls = build_timed_calls(_prepared(False), inp)
    assert set(calls) == {"excl_prep", "incl_prep"}
    assert calls["excl_prep"].module_name == "jit_rpa_bench_excl_prep"
    assert calls["incl_prep"].module_name == "jit_rpa_bench_incl_prep"
    assert all(c.compile_time_s > 0 for c in calls.values())
    for c in calls.values():
        np.testing.assert_allclose(np.asarray(c(*c.fresh_args())), (np.arange(8.0) + 1) * 2)


def test_donating_backend_gets_fresh_copies_and_its_inputs_survive():
    inp = Inputs("a", jnp.arange(8.0), jnp.ones(8))
    calls = build_timed_calls(_prepared(True), inp)
    excl = calls["excl_prep"]
    for _ in range(3):  # the original args must stay usable across calls
        jax.block_until_ready(excl(*excl.fresh_args()))
    assert not any(a.is_deleted() for a in excl.args)
    assert excl.fresh_args()[0] is not excl.args[0]


def test_prepare_must_return_a_tuple():
    bad = dataclasses.replace(_prepared(False), prepare=lambda inp: inp.x)
    with pytest.raises(TypeError, match="tuple"):
        build_timed_calls(bad, Inputs("a", jnp.ones(8), jnp.ones(8)))


def test_incl_prep_faster_than_excl_prep_beyond_noise_is_flagged():
    from rpa_bench.pipeline.point import _check_incl_not_below_excl

    rows = [{"variant": "excl_prep", "status": "ok", "latency_us": 230.0, "latency_ci_low_us": 220.0, "warnings": []},
            {"variant": "incl_prep", "status": "ok", "latency_us": 120.0, "latency_ci_high_us": 125.0, "warnings": []}]
    rows = _check_incl_not_below_excl(rows)
    assert all(any("beyond noise although it does more work" in w for w in r["warnings"]) for r in rows)
    calm = [{"variant": "excl_prep", "status": "ok", "latency_us": 100.0, "latency_ci_low_us": 95.0, "warnings": []},
            {"variant": "incl_prep", "status": "ok", "latency_us": 98.0, "latency_ci_high_us": 104.0, "warnings": []}]
    _check_incl_not_below_excl(calm)
    assert all(r["warnings"] == [] for r in calm)
