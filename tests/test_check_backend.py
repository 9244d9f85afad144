"""check_backend / compare_outputs: a correct kernel passes, every kind of broken one does not."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from rpa_bench.kernels.base import KernelOutput
from rpa_bench.kernels.cases import check_cases
from rpa_bench.kernels.checking import check_backend, check_on_inputs, compare_outputs
from rpa_bench.kernels.reference import REFERENCE_CAPABILITIES, ReferenceBackend, reference_attention
from rpa_bench.workloads.model import ModelSpec

MODEL = ModelSpec("tiny", 4, 2, 16)
CASES = {(c.name, c.dtype_label): c for c in check_cases(MODEL)}
MIXED = CASES[("mixed", "float32")]


class Tampered(ReferenceBackend):
    """The reference with one deliberate fault, for proving that the check catches it."""

    def __init__(self, fault: str):
        super().__init__()
        self.fault = fault
        self.name = f"broken_{fault}"

    def availability(self):
        return (False, "not installed here") if self.fault == "unavailable" else (True, "")

    def build(self, model, attn, batch, *, interpret=False):
        if self.fault == "raises":
            raise RuntimeError("kaboom\nsecond line")
        if self.fault == "ignores_scales":
            attn = dataclasses.replace(attn, k_scale=None, v_scale=None)
        call = super().build(model, attn, batch, interpret=interpret)
        if self.fault == "skips_kv_update":
            prepare = call.prepare

            def call_prepare(inputs):
                q, _, _, *meta = prepare(inputs)
                return (q, inputs.k_cache, inputs.v_cache, *meta)

            return dataclasses.replace(call, prepare=call_prepare)
        finish = call.finish

        def call_finish(raw) -> KernelOutput:
            out = finish(raw)
            if self.fault == "perturbs_output":
                return dataclasses.replace(out, output=out.output + 0.01)
            if self.fault == "clobbers_cache_page":
                return dataclasses.replace(out, k_cache=out.k_cache.at[0].set(0))
            if self.fault == "leaves_row_unwritten":
                return dataclasses.replace(out, output=out.output.at[0].set(jnp.nan))
            return out

        return dataclasses.replace(call, finish=call_finish)


def test_reference_passes_every_case_kind():
    record = check_backend(ReferenceBackend(), MIXED, interpret=False)
    assert record.status == "ok" and record.max_abs_err == 0.0 and record.cache_err == 0.0


@pytest.mark.parametrize(
    "fault,case",
    [
        ("perturbs_output", ("mixed", "float32")),
        ("clobbers_cache_page", ("mixed", "float32")),
        ("leaves_row_unwritten", ("mixed", "float32")),
        ("skips_kv_update", ("decode", "float32")),
        ("ignores_scales", ("quantized_kv", "bfloat16/float8_e4m3fn")),
    ],
)
def test_broken_kernel_is_incorrect(fault, case):
    record = check_backend(Tampered(fault), CASES[case], interpret=False)
    assert record.status == "incorrect", record
    assert not record.passed and record.max_abs_err > record.tolerance


def test_raising_kernel_is_failed_with_its_message():
    record = check_backend(Tampered("raises"), MIXED, interpret=False)
    assert record.status == "failed" and record.message == "RuntimeError: kaboom"


def test_unavailable_kernel_is_skipped_with_reason():
    record = check_backend(Tampered("unavailable"), MIXED, interpret=False)
    assert record.status == "skipped" and record.message == "not installed here" and record.passed


def test_unsupported_feature_is_skipped_with_capability_message():
    backend = ReferenceBackend()
    backend.capabilities = dataclasses.replace(
        REFERENCE_CAPABILITIES, features=REFERENCE_CAPABILITIES.features - {"soft_cap"}
    )
    record = check_backend(backend, CASES[("soft_cap", "bfloat16")], interpret=False)
    assert record.status == "skipped" and "soft_cap" in record.message


def test_compare_ignores_padding_rows_but_not_valid_ones():
    inputs = MIXED.materialize()
    ref = reference_attention(inputs, MIXED.attn)
    n = inputs.num_tokens
    garbage_padding = KernelOutput(output=ref.output.at[n:].set(jnp.nan))
    assert compare_outputs(garbage_padding, ref, inputs, tolerance=0.0) == (0.0, True)
    off = KernelOutput(output=ref.output.at[n - 1, 0, 0].add(0.5))
    err, ok = compare_outputs(off, ref, inputs, tolerance=0.1)
    assert not ok and err == pytest.approx(0.5, rel=1e-6)


def test_compare_requires_poison_to_stay_in_untouched_slots():
    inputs = MIXED.materialize()
    ref = reference_attention(inputs, MIXED.attn)
    k = np.asarray(ref.k_cache).copy()
    assert np.isnan(k).any()
    k[np.isnan(k)] = 0.0  # a kernel that wrote somewhere it must not
    err, ok = compare_outputs(KernelOutput(ref.output, jnp.asarray(k), ref.v_cache), ref, inputs, tolerance=1.0)
    assert not ok and err == float("inf")


def test_check_on_inputs_reuses_a_given_reference():
    inputs = MIXED.materialize()
    ref = reference_attention(inputs, MIXED.attn)
    wrong_ref = dataclasses.replace(ref, output=ref.output + 1.0)
    record = check_on_inputs(ReferenceBackend(), inputs, MIXED.attn, interpret=False, reference=wrong_ref)
    assert record.status == "incorrect"


def test_record_refuses_unknown_status():
    from rpa_bench.kernels.checking import CheckRecord

    with pytest.raises(ValueError, match="status"):
        CheckRecord("k", "c", "float32", "fine")
