"""Lower a backend's kernel call for a TPU generation on any machine (no TPU needed).

The call is traced from abstract inputs (``jax.ShapeDtypeStruct``: no device memory, so
paper-sized shapes are fine) and lowered with ``lowering_platforms=("tpu",)`` inside an
abstract mesh of one TensorCore of the generation; the tpu-inference kernels' own
``get_tpu_version()`` answers for that generation meanwhile, so generation-specific code
paths are the ones lowered. The StableHLO shows each Pallas kernel as a Mosaic
``tpu_custom_call``. Compiling for a real TPU generation without a TPU: :mod:`.compiling`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rpa_bench.kernels import tpu_target
from rpa_bench.kernels.base import KernelBackend
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.materialize import KernelInputs, padded_shape
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

_CUSTOM_CALL = re.compile(r"custom_call\s*@tpu_custom_call\b")
_KERNEL_NAME = re.compile(r'kernel_name\s*=\s*"([^"]+)"')
_ARRAY_FIELDS = ("queries", "new_keys", "new_values", "k_cache", "v_cache",
                 "kv_lens", "page_indices", "cu_q_lens", "num_seqs", "distribution")


@dataclasses.dataclass(frozen=True)
class LoweringResult:
    kernel: str
    generation: str  # device kind, e.g. "TPU7x"
    ok: bool
    custom_calls: int  # Mosaic tpu_custom_call ops in the StableHLO
    kernel_names: tuple[str, ...]  # their kernel_name attributes, in order
    error: str | None = None
    lower_s: float = 0.0  # time to trace and lower (not kernel performance)
    stablehlo: str | None = dataclasses.field(default=None, repr=False)  # kept on request

    @property
    def status(self) -> str:
        return "ok" if self.ok else "failed"

    def to_row(self) -> dict:
        return {"kernel": self.kernel, "generation": self.generation, "status": self.status,
                "custom_calls": self.custom_calls, "kernel_names": ", ".join(self.kernel_names),
                "error": self.error or ""}


def abstract_inputs(
    batch: RaggedBatch,
    model: ModelSpec,
    *,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    num_pages: int | None = None,
    pages_per_seq: int | None = None,
) -> KernelInputs:
    """Canonical inputs as shapes only (sizes resolved as ``materialize`` resolves them)."""
    shape = padded_shape(batch, max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                         num_pages=num_pages, pages_per_seq=pages_per_seq)
    t_pad, s_pad = shape.max_num_batched_tokens, shape.max_num_seqs
    pages, pps = shape.num_pages, shape.pages_per_seq
    h_q, h_kv, d = model.num_q_heads, model.num_kv_heads, model.head_dim
    dt, kv_dt, i32 = jnp.dtype(model.dtype), jnp.dtype(model.kv_dtype), jnp.int32

    def sds(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype)

    return KernelInputs(
        batch=batch, model=model, max_num_batched_tokens=t_pad, max_num_seqs=s_pad,
        queries=sds((t_pad, h_q, d), dt),
        new_keys=sds((t_pad, h_kv, d), kv_dt),
        new_values=sds((t_pad, h_kv, d), kv_dt),
        k_cache=sds((pages, batch.page_size, h_kv, d), kv_dt),
        v_cache=sds((pages, batch.page_size, h_kv, d), kv_dt),
        kv_lens=sds((s_pad,), i32),
        page_indices=sds((s_pad, pps), i32),
        cu_q_lens=sds((s_pad + 1,), i32),
        num_seqs=sds((1,), i32),
        distribution=sds((3,), i32),
    )


def abstract_kernel_args(call: Any, batch: RaggedBatch, model: ModelSpec, **padding: Any) -> Any:
    """The kernel stage's arguments (``prepare(layout(inputs))``) as shapes only."""
    inputs = abstract_inputs(batch, model, **padding)

    def kernel_args(*arrays):
        concrete = dataclasses.replace(inputs, **dict(zip(_ARRAY_FIELDS, arrays)))
        return call.prepare(call.state(concrete))

    return jax.eval_shape(kernel_args, *(getattr(inputs, f) for f in _ARRAY_FIELDS))


def _for_generation(backend: KernelBackend, generation: str) -> KernelBackend:
    """The same backend with its defaults (block sizes, VMEM) chosen for ``generation``."""
    if not hasattr(backend, "generation"):
        return backend
    out = copy.copy(backend)
    out.generation = generation
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def lower_for_tpu(
    backend: KernelBackend,
    model: ModelSpec,
    attn: AttentionSpec,
    batch: RaggedBatch,
    generation: str,
    *,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    num_pages: int | None = None,
    pages_per_seq: int | None = None,
    keep_text: bool = False,
) -> LoweringResult:
    """Lower ``backend``'s kernel call (``kernel(*prepare(layout(inputs)))``'s kernel part)
    for one TensorCore of ``generation``. Never raises for kernel errors: they are the
    result's ``error``."""
    start = time.perf_counter()
    try:
        tpu_target.generation(generation)
        target = _for_generation(backend, generation)
        call = target.build(model, attn, batch, interpret=False)
        args = abstract_kernel_args(call, batch, model, max_num_batched_tokens=max_num_batched_tokens,
                                    max_num_seqs=max_num_seqs, num_pages=num_pages, pages_per_seq=pages_per_seq)
        module = target.module() if hasattr(target, "module") else None
        with tpu_target.abstract_tpu(generation), tpu_target.as_tpu(module, generation), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
            lowered = jax.jit(call.kernel).trace(*args).lower(lowering_platforms=("tpu",))
        text = lowered.as_text()
    except Exception as e:  # noqa: BLE001 - a failed lowering is a result, not a crash
        return LoweringResult(backend.name, generation, False, 0, (), _first_line(e), time.perf_counter() - start)
    names = tuple(_KERNEL_NAME.findall(text))
    return LoweringResult(backend.name, generation, True, len(_CUSTOM_CALL.findall(text)), names, None,
                          time.perf_counter() - start, text if keep_text else None)


def lowering_batch(page_size: int = 16, *, chunk_prefill_size: int | None = None) -> RaggedBatch:
    """A small batch with every sequence class: decodes, a mixed prefill, and (with
    ``chunk_prefill_size``) fixed-size prefill chunks, so v3 emits each of its kernels."""
    q_lens = [1, 1, 1, 37]
    kv_lens = [3 * page_size + 5, 7 * page_size, page_size // 2 + 1, 2 * page_size + 37]
    if chunk_prefill_size is not None:
        q_lens += [chunk_prefill_size, chunk_prefill_size]
        kv_lens += [chunk_prefill_size, 4 * page_size + chunk_prefill_size]
    return RaggedBatch.ordered(q_lens, list(np.maximum(kv_lens, q_lens)), page_size=page_size,
                               chunk_prefill_size=chunk_prefill_size)
