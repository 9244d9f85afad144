"""Named small ragged cases every kernel is checked on (``rpa-bench check``).

Each case keeps the configured model's ``head_dim`` and query/KV head ratio (head_dim
decides what a kernel supports) but few heads, at most 4 sequences and kv lengths under
100, so Pallas kernels in CPU interpret mode stay fast. Every case is padded the way a
serving engine pads: all cases share one padded shape (token rows, sequences, pages,
page-table width) with room to spare, as one compiled kernel serves every step of an
engine, so NaN-poisoned padding shows when a kernel reads or writes out of range (and
compiles are shared between cases).
"""

from __future__ import annotations

import dataclasses

from rpa_bench.workloads.batch import RaggedBatch, cdiv
from rpa_bench.workloads.materialize import KernelInputs, materialize
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

CHECK_DTYPES = ("float32", "bfloat16")
QUANTIZED_KV_DTYPES = ("float8_e4m3fn", "float8_e5m2", "int8")
DEFAULT_QUANTIZED_KV = "float8_e4m3fn"
CHECK_PAGE_SIZE = 16
_MAX_HEADS = 4
# scales that are not 1, so a kernel that ignores them fails the check
QUANT_SCALES = {"float8_e4m3fn": (0.5, 0.75), "float8_e5m2": (0.5, 0.75), "int8": (1 / 32, 1 / 24)}

# (q_lens, kv_lens, chunk_prefill_size): kernel order (decode, fixed chunks, mixed)
_BATCHES = {
    "decode": ((1, 1, 1, 1), (5, 16, 47, 90), None),
    "prefill": ((24, 40), (24, 73), None),
    "mixed": ((1, 1, 9, 30), (35, 64, 9, 81), None),
    "chunked_prefill": ((1, 16, 16, 7), (50, 16, 60, 39), 16),
}


@dataclasses.dataclass(frozen=True)
class CheckCase:
    """One small batch with its model and attention knobs, padded as a serving engine pads."""

    name: str
    batch: RaggedBatch
    model: ModelSpec
    attn: AttentionSpec
    max_num_batched_tokens: int
    max_num_seqs: int
    num_pages: int
    pages_per_seq: int | None = None  # page-table width; None: the batch's own need
    seed: int = 0
    kernel_options: tuple[tuple[str, object], ...] = ()  # options the case calls the kernel with (upstream's)

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < self.batch.num_tokens:
            raise ValueError(
                f"max_num_batched_tokens={self.max_num_batched_tokens} must be >= {self.batch.num_tokens}"
            )

    @property
    def dtype_label(self) -> str:
        """``bfloat16``, or ``bfloat16/float8_e4m3fn`` when the KV dtype differs."""
        m = self.model
        return m.dtype if m.kv_dtype == m.dtype else f"{m.dtype}/{m.kv_dtype}"

    def materialize(self, *, device=None) -> KernelInputs:
        return materialize(
            self.batch, self.model, max_num_batched_tokens=self.max_num_batched_tokens,
            max_num_seqs=self.max_num_seqs, num_pages=self.num_pages, pages_per_seq=self.pages_per_seq,
            seed=self.seed, device=device,
        )


def check_model(model: ModelSpec, *, dtype: str | None = None, kv_dtype: str | None = None) -> ModelSpec:
    """``model`` shrunk for checking: same head_dim and q/KV head ratio, at most 4 query
    heads where the ratio allows (4:2 for ratio 2, 4:1 for ratio 4, 8:1 for ratio 8)."""
    ratio = model.num_queries_per_kv
    num_kv = max(1, _MAX_HEADS // ratio) if ratio <= _MAX_HEADS else 1
    num_kv = min(num_kv, model.num_kv_heads, 2)
    return ModelSpec(
        name=f"{model.name}-check",
        num_q_heads=ratio * num_kv,
        num_kv_heads=num_kv,
        head_dim=model.head_dim,
        dtype=dtype or model.dtype,
        kv_dtype=kv_dtype or dtype or model.kv_dtype,
        attention_sinks=model.attention_sinks,  # every case then checks the sinks too
    )


def padded_sizes(page_size: int) -> dict[str, int]:
    """The one padded shape every check case uses (room beyond the largest case)."""
    batches = [RaggedBatch.ordered(q, kv, page_size=page_size) for q, kv, _ in _BATCHES.values()]
    return dict(
        max_num_batched_tokens=cdiv(max(b.num_tokens for b in batches), 8) * 8 + 8,
        max_num_seqs=max(b.num_seqs for b in batches) + 1,
        num_pages=max(b.num_pages for b in batches) + 2,
        pages_per_seq=max(max(b.pages_per_seq) for b in batches) + 1,
    )


def _case(name: str, batch_name: str, model: ModelSpec, attn: AttentionSpec, page_size: int, seed: int) -> CheckCase:
    q_lens, kv_lens, chunk = _BATCHES[batch_name]
    batch = RaggedBatch.ordered(q_lens, kv_lens, page_size=page_size, chunk_prefill_size=chunk)
    return CheckCase(name=name, batch=batch, model=model, attn=attn, seed=seed, **padded_sizes(page_size))


def check_cases(
    model: ModelSpec,
    *,
    page_size: int = CHECK_PAGE_SIZE,
    dtypes: tuple[str, ...] = CHECK_DTYPES,
    quantized_kv: str | None = None,
    attention: AttentionSpec | None = None,
    seed: int = 0,
) -> tuple[CheckCase, ...]:
    """The check cases for ``model``'s head_dim and head ratio.

    Per dtype in ``dtypes``: decode, prefill, mixed, chunked_prefill, sliding_window,
    soft_cap, non_causal. Then one mixed case with 8-bit KV (``quantized_kv``; default:
    the model's kv_dtype when it is 8-bit, else float8_e4m3fn) and non-unit k/v scales.
    ``attention`` (when it uses any feature) adds a ``configured`` mixed case per dtype.
    """
    for d in dtypes:
        if d not in CHECK_DTYPES:
            raise ValueError(f"dtypes={d!r}; allowed: {', '.join(CHECK_DTYPES)}")
    if quantized_kv is None:
        quantized_kv = model.kv_dtype if model.kv_dtype in QUANTIZED_KV_DTYPES else DEFAULT_QUANTIZED_KV
    if quantized_kv not in QUANTIZED_KV_DTYPES:
        raise ValueError(f"quantized_kv={quantized_kv!r}; allowed: {', '.join(QUANTIZED_KV_DTYPES)}")
    plain = AttentionSpec()
    variants = [
        ("decode", "decode", plain),
        ("prefill", "prefill", plain),
        ("mixed", "mixed", plain),
        ("chunked_prefill", "chunked_prefill", plain),
        ("sliding_window", "mixed", AttentionSpec(sliding_window=24)),
        ("soft_cap", "mixed", AttentionSpec(soft_cap=2.0)),
        ("non_causal", "prefill", AttentionSpec(causal=False)),
    ]
    if attention is not None and attention.features:
        variants.append(("configured", "mixed", attention))
    cases = [
        _case(name, batch_name, check_model(model, dtype=d, kv_dtype=d), attn, page_size, seed)
        for d in dtypes
        for name, batch_name, attn in variants
    ]
    # two KV heads where the model has them: 8-bit KV packs 4 K/V heads per 32-bit word,
    # and some kernels cannot tile a single KV head's K+V pair
    k_scale, v_scale = QUANT_SCALES[quantized_kv]
    small = check_model(model, dtype="bfloat16", kv_dtype=quantized_kv)
    num_kv = min(2, model.num_kv_heads)
    quant_model = dataclasses.replace(small, num_q_heads=num_kv * model.num_queries_per_kv, num_kv_heads=num_kv)
    cases.append(
        _case("quantized_kv", "mixed", quant_model, AttentionSpec(k_scale=k_scale, v_scale=v_scale), page_size, seed)
    )
    return tuple(cases)
