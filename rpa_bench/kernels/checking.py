"""Checking a kernel backend against the reference on the same inputs.

A check is a record with a status, never an exception: ``ok`` (within tolerance),
``incorrect`` (outside it, or NaN in a valid row), ``failed`` (the backend raised; the
message is kept) or ``skipped`` (unavailable or unsupported; the reason is kept).
Only valid output rows are compared; for backends that return the updated KV cache, the
whole cache is compared too (slots the call must not touch stay as they were, poison
included), so a kernel that writes a wrong slot or page fails.

Tolerances (max absolute error; outputs are O(1): softmax-weighted averages of N(0, 1)
values). Measured on the check cases (CPU interpret mode, head_dim 128 and 256, seeds
0-2) against this reference:
- float32: every kernel within 1.5e-6; 1e-4 leaves room for other accumulation orders.
- bfloat16: RPA v2 / JAX RPA within 2.4e-4 (the output cast); RPA v3, which accumulates
  in bf16, up to 1.95e-2 (3.1e-2 at head_dim 96). 6e-2 keeps a 2-3x margin (upstream's
  own tests use 0.2 for 16-bit types).
- 8-bit KV with scales: v3 up to 1.6e-2 on fp8 here (~0.07-0.125 seen on larger
  shapes); 0.2 as upstream. A kernel that ignores k_scale=0.5 / v_scale=0.75 is off by
  more than that.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np
import jax.numpy as jnp

from rpa_bench.kernels.base import KernelBackend, KernelOutput
from rpa_bench.kernels.cases import CheckCase
from rpa_bench.kernels.compat_interpret import DEADLOCK_MARK
from rpa_bench.kernels.reference import reference_attention
from rpa_bench.kernels.registry import kernel_config_from_dict
from rpa_bench.status import CHECK_STATUSES, Status
from rpa_bench.workloads.materialize import KernelInputs
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

OK, INCORRECT, FAILED, SKIPPED = Status.OK, Status.INCORRECT, Status.FAILED, Status.SKIPPED
STATUSES = CHECK_STATUSES
TOLERANCES = {"float32": 1e-4, "bfloat16": 6e-2}  # by model.dtype (query/output)
QUANTIZED_KV_TOLERANCE = 0.2  # any 8-bit kv_dtype


def tolerance_for(model: ModelSpec) -> float:
    """Max absolute output error allowed for ``model``'s dtypes."""
    if model.kv_dtype not in TOLERANCES:
        return QUANTIZED_KV_TOLERANCE
    return max(TOLERANCES[model.dtype], TOLERANCES[model.kv_dtype])


@dataclasses.dataclass(frozen=True)
class CheckRecord:
    kernel: str
    case: str
    dtype: str  # "bfloat16", or "bfloat16/float8_e4m3fn" when the KV dtype differs
    status: str  # ok / incorrect / failed / skipped
    max_abs_err: float | None = None  # output and cache together; None when not run
    tolerance: float | None = None
    output_err: float | None = None
    cache_err: float | None = None  # None: the backend returns no updated cache
    message: str = ""  # exception (failed) or capability message (skipped)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status={self.status!r}; allowed: {', '.join(STATUSES)}")

    @property
    def passed(self) -> bool:
        """Not wrong: ok or skipped."""
        return self.status in (OK, SKIPPED)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@jax.jit
def _output_err(candidate, reference, num_tokens):
    """Max |candidate - reference| over valid rows; inf when a valid row holds NaN."""
    rows = jnp.arange(candidate.shape[0])[:, None, None] < num_tokens
    diff = jnp.abs(candidate.astype(jnp.float32) - reference.astype(jnp.float32))
    diff = jnp.where(jnp.isnan(diff), jnp.inf, diff)
    return jnp.max(jnp.where(rows, diff, 0.0))


@jax.jit
def _cache_err(candidate, reference, ignore=None):
    """Max |candidate - reference| over the whole cache; NaN must meet NaN (poison kept).
    ``ignore``: bool[pages, page_size] slots left out (a declared scratch tail)."""
    a, b = candidate.astype(jnp.float32), reference.astype(jnp.float32)
    both_nan = jnp.isnan(a) & jnp.isnan(b)
    diff = jnp.where(both_nan, 0.0, jnp.abs(a - b))
    diff = jnp.where(jnp.isnan(diff), jnp.inf, diff)
    if ignore is not None:
        diff = jnp.where(ignore[:, :, None, None], 0.0, diff)
    return jnp.max(diff)


def own_page_tails(inputs: KernelInputs):
    """bool[pages, page_size]: the slots past each sequence's kv_len inside the pages it owns
    (a sequence's last page beyond its tokens: unused until its next step writes them)."""
    pages, page = inputs.num_pages, inputs.page_size
    table, kv_lens = np.asarray(inputs.page_indices), np.asarray(inputs.kv_lens)
    tail = np.zeros((pages, page), bool)
    for s in range(int(np.asarray(inputs.num_seqs)[0])):
        kv = int(kv_lens[s])
        for j in range(-(-kv // page)):
            start = max(kv - j * page, 0)
            tail[int(table[s, j]), start:] = True
    return tail


def compare_details(candidate: KernelOutput, reference: KernelOutput,
                    inputs: KernelInputs, *, scratch_tail: bool = False) -> tuple[float, float | None]:
    """(output error over valid rows, cache error or None when the candidate has no cache).
    ``scratch_tail``: the kernel declares it may write past a sequence's tokens inside the
    pages that sequence owns (``Capabilities.writes_own_page_tail``); those slots are not
    compared (every other slot, other sequences' and unused pages, still must stay as it was)."""
    if candidate.output.shape != reference.output.shape:
        raise ValueError(f"output shape {candidate.output.shape} != reference {reference.output.shape}")
    out_err = float(_output_err(candidate.output, reference.output, inputs.num_tokens))
    if candidate.k_cache is None:
        return out_err, None
    cache_err = 0.0
    ignore = jnp.asarray(own_page_tails(inputs)) if scratch_tail else None
    for cand, ref in ((candidate.k_cache, reference.k_cache), (candidate.v_cache, reference.v_cache)):
        if cand.shape != ref.shape:
            raise ValueError(f"cache shape {cand.shape} != reference {ref.shape}")
        cache_err = max(cache_err, float(_cache_err(cand, ref, ignore)))
    return out_err, cache_err


def compare_outputs(candidate: KernelOutput, reference: KernelOutput, inputs: KernelInputs, *,
                    tolerance: float, scratch_tail: bool = False) -> tuple[float, bool]:
    """(max abs error over valid output rows and the updated cache, within ``tolerance``).

    The cache a kernel writes holds the given K/V verbatim, so it is held to the same
    tolerance as the output (in practice it matches exactly).
    """
    out_err, cache_err = compare_details(candidate, reference, inputs, scratch_tail=scratch_tail)
    err = max(out_err, cache_err or 0.0)
    return err, bool(err <= tolerance)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    # the interpreter wraps a failure of its own in a traceback: its own line says what happened
    said = next((line.strip() for line in text if DEADLOCK_MARK in line), None)
    if said is not None:
        return said[said.index(DEADLOCK_MARK):]
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def run_backend(backend: KernelBackend, model: ModelSpec, attn: AttentionSpec, inputs: KernelInputs, *,
                interpret: bool) -> KernelOutput:
    """Build and call ``backend`` once on ``inputs`` (a fresh copy when the kernel donates)."""
    call = backend.build(model, attn, inputs.batch, interpret=interpret)
    own = inputs.copy() if call.donates else inputs
    out = call.finish(call.kernel(*call.prepare(call.state(own))))
    return jax.block_until_ready(out)


def check_on_inputs(backend: KernelBackend, inputs: KernelInputs, attn: AttentionSpec, *, interpret: bool,
                    case: str = "", tolerance: float | None = None,
                    reference: KernelOutput | None = None) -> CheckRecord:
    """Check ``backend`` against the reference on ``inputs`` (what the run pipeline times)."""
    model = inputs.model
    label = model.dtype if model.kv_dtype == model.dtype else f"{model.dtype}/{model.kv_dtype}"
    tol = tolerance_for(model) if tolerance is None else tolerance
    record = functools.partial(CheckRecord, kernel=backend.name, case=case, dtype=label, tolerance=tol)
    available, reason = backend.availability()
    if not available:
        return record(status=SKIPPED, message=reason)
    try:
        backend.validate(model, attn, inputs.batch)
    except ValueError as e:
        return record(status=SKIPPED, message=str(e))
    try:
        ref = reference if reference is not None else jax.block_until_ready(reference_attention(inputs, attn))
        cand = run_backend(backend, model, attn, inputs, interpret=interpret)
        out_err, cache_err = compare_details(
            cand, ref, inputs, scratch_tail=getattr(backend.capabilities, "writes_own_page_tail", False))
    except Exception as e:  # noqa: BLE001 - a failing kernel is a record, not a crash
        return record(status=FAILED, message=_first_line(e))
    err = max(out_err, cache_err or 0.0)
    ok = err <= tol and math.isfinite(err)
    return record(status=OK if ok else INCORRECT, max_abs_err=err, output_err=out_err, cache_err=cache_err)


def check_in_worker(kernel: dict, case: CheckCase, interpret: bool) -> CheckRecord:
    """One case in a worker process (:class:`rpa_bench.kernels.isolated.IsolatedCalls`): the
    kernel entry ``kernel`` (``KernelConfig.to_dict()``) built there, the inputs and the
    reference made there, the check's record sent back."""
    backend = kernel_config_from_dict(kernel).backend()
    inputs = case.materialize()
    reference = jax.block_until_ready(reference_attention(inputs, case.attn))
    return check_on_inputs(backend, inputs, case.attn, interpret=interpret, case=case.name, reference=reference)


def check_backend(backend: KernelBackend, case: CheckCase, *, interpret: bool) -> CheckRecord:
    """Check ``backend`` on one named case (validated before anything is materialised)."""
    label = case.dtype_label
    tol = tolerance_for(case.model)
    available, reason = backend.availability()
    if not available:
        return CheckRecord(backend.name, case.name, label, SKIPPED, tolerance=tol, message=reason)
    try:
        backend.validate(case.model, case.attn, case.batch)
    except ValueError as e:
        return CheckRecord(backend.name, case.name, label, SKIPPED, tolerance=tol, message=str(e))
    return check_on_inputs(backend, case.materialize(), case.attn, interpret=interpret, case=case.name, tolerance=tol)


def records_frame(records: list[CheckRecord]):
    """Records as a pandas DataFrame (one row per kernel x case)."""
    import pandas as pd

    return pd.DataFrame([r.to_dict() for r in records])


def summary_ok(records: list[CheckRecord]) -> bool:
    """True when no record is incorrect or failed."""
    return all(r.passed for r in records)


__all__ = [
    "CheckRecord", "check_backend", "check_on_inputs", "compare_outputs", "compare_details",
    "tolerance_for", "run_backend", "records_frame", "summary_ok", "TOLERANCES",
    "QUANTIZED_KV_TOLERANCE", "STATUSES",
]
