"""The inputs tpu-inference's own kernel tests use, as check cases (``rpa-bench check check.cases=upstream``).

Ported as data, not code: each upstream test's sequence lengths ``(q_len, kv_len)``, heads,
head_dim, page size, dtypes, attention settings and explicit block sizes, credited to the test
they come from (tpu-inference, Apache-2.0). The random lengths of the upstream "complex",
"sliding_window" and "soft_cap" tests are drawn as they draw them (NumPy's
``default_rng(1234)``: ``q = integers(1, 100, n)``, ``kv = q + integers(0, 50, n)``). Values are
this suite's own (``materialize``); the reference is this suite's reference. Padding follows
the upstream harness: token rows to a multiple of 128 (at least 512), sequences to a multiple
of 8 (at least 8), 1000 pages.

Cases the upstream test skips for the kernel (its own known limitations, quoted) are kept
out, with the reason in ``SKIPPED_UPSTREAM``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rpa_bench.kernels.cases import CheckCase
from rpa_bench.workloads.batch import RaggedBatch, cdiv
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

HD64_TEST = "tests/kernels/ragged_paged_attention_kernel_v3_hd64_test.py"
BATCHED_TEST = "tests/kernels/batched_rpa_kernel_test.py"
PAGE = 16
NUM_PAGES = 1000
DTYPES = ("float32", "bfloat16")

# upstream's fixed batches
BASIC = ((192, 328), (128, 180), (64, 255))
DECODE_ONLY = tuple((1, kv) for kv in (18, 129, 597, 122, 64, 322, 463, 181, 1107, 123, 31, 18, 1229, 229, 87, 1328))
PREFILL_ONLY = ((5, 18), (15, 129), (120, 597), (100, 122), (21, 64), (32, 322), (251, 463), (40, 181),
                (64, 1107), (99, 123), (10, 31), (5, 18), (3, 1229), (120, 229), (9, 87), (2, 1328))
HD64_MIXED = ((5, 18), (1, 129), (120, 597), (1, 122), (1, 64), (32, 322), (251, 463), (1, 181), (1, 1107),
              (99, 123), (1, 31), (5, 18), (3, 1229), (117, 229), (1, 87), (1, 1328))
BATCHED_MIXED = ((1, 129), (1, 122), (1, 64), (1, 181), (1, 1107), (1, 31), (1, 87), (1, 1328),
                 (5, 18), (120, 597), (32, 322), (251, 463), (99, 123), (5, 18), (3, 1229), (117, 229))

SKIPPED_UPSTREAM = {
    "batched_rpa": [
        "complex (3, 3) heads: 'Batched RPA does not yet support the (3, 3) MHA head configuration'",
        "complex (5, 1) heads, bfloat16: 'does not yet support odd query-head groups with packed BF16 inputs'",
        "complex head_dim 128, (12, 2) bfloat16 and (5, 1) float32: 'scheduler metadata larger than TPU SMEM'",
        "complex 17 seqs, (32, 8), head_dim 256, float32: 'Known batched-RPA KV-cache writeback mismatch'",
    ],
}


@dataclasses.dataclass(frozen=True)
class UpstreamInput:
    test: str  # upstream test (and parameters) it comes from
    seq_lens: tuple[tuple[int, int], ...]
    heads: tuple[int, int]
    head_dim: int
    dtype: str
    attn: AttentionSpec = AttentionSpec()
    sinks: bool = False
    options: tuple[tuple[str, object], ...] = ()  # explicit kernel options of the upstream call
    source: str = ""


def drawn_lens(num_seqs: int) -> tuple[tuple[int, int], ...]:
    """Upstream's random ragged lengths (``default_rng(1234)``)."""
    rng = np.random.default_rng(1234)
    q = rng.integers(1, 100, num_seqs)
    kv = q + rng.integers(0, 50, num_seqs)
    return tuple(zip(q.tolist(), kv.tolist()))


def _hd64() -> list[UpstreamInput]:
    # the upstream harness passes num_kv_pages_per_block=8, num_queries_per_block=64 to every call
    blocks = (("num_kv_pages_per_block", 8), ("num_queries_per_block", 64))
    out = []
    for d in DTYPES:
        for name, lens in (("basic", BASIC), ("decode_only", DECODE_ONLY), ("prefill_only", PREFILL_ONLY),
                           ("mixed", HD64_MIXED)):
            out.append(UpstreamInput(f"{name}[{d}]", lens, (32, 8), 64, d, options=blocks))
        for n in (1, 17):
            for heads in ((32, 8), (12, 2), (5, 1), (3, 3)):
                out.append(UpstreamInput(f"complex[{n} seqs, {heads[0]}:{heads[1]}, {d}]", drawn_lens(n), heads,
                                         64, d, options=blocks))
    for w in (None, 5, 128):
        out.append(UpstreamInput(f"sliding_window[{w}]", drawn_lens(5), (4, 4), 64, "float32",
                                 AttentionSpec(sliding_window=w), options=blocks))
    for w in (5, 128):
        for heads in ((4, 4), (8, 4), (64, 8)):
            out.append(UpstreamInput(f"sliding_window_with_attention_sink[{w}, {heads[0]}:{heads[1]}]",
                                     drawn_lens(5), heads, 64, "float32", AttentionSpec(sliding_window=w),
                                     sinks=True, options=blocks))
    for cap in (None, 50.0):
        out.append(UpstreamInput(f"logit_soft_capping[{cap}]", drawn_lens(2), (16, 2), 64, "float32",
                                 AttentionSpec(soft_cap=cap), options=blocks))
    return [dataclasses.replace(c, source=HD64_TEST) for c in out]


def _batched() -> list[UpstreamInput]:
    out = []
    for d in DTYPES:
        for bq, bkv, bq_c in ((64, 256, 32), (60, 48, 30)):  # explicit BlockSizes(batch_size=2, n_buffer=3)
            sizes = [bq, bq_c, bkv, 2, 3]
            out.append(UpstreamInput(f"basic[{d}, bq={bq} bkv={bkv} bq_c={bq_c}]", BASIC, (32, 8), 128, d,
                                     options=(("decode_block_sizes", sizes), ("prefill_block_sizes", sizes))))
        out.append(UpstreamInput(f"decode_only[{d}]", DECODE_ONLY, (32, 8), 128, d))
        out.append(UpstreamInput(f"prefill_via_mixed_bucket[{d}]", PREFILL_ONLY, (32, 8), 128, d))
        out.append(UpstreamInput(f"mixed[{d}]", BATCHED_MIXED, (32, 8), 128, d))
        for n in (1, 17):
            for heads in ((32, 8), (12, 2), (5, 1)):
                for hd in (128, 256):
                    if d == "bfloat16" and heads == (5, 1):
                        continue
                    if hd == 128 and ((heads == (12, 2) and d == "bfloat16") or (heads == (5, 1) and d == "float32")):
                        continue
                    if n == 17 and heads == (32, 8) and hd == 256 and d == "float32":
                        continue
                    opts = ()
                    if heads == (32, 8) and hd == 128 and d == "float32":
                        sizes = [64, 32, 256, 2, 3]
                        opts = (("decode_block_sizes", sizes), ("prefill_block_sizes", sizes))
                    out.append(UpstreamInput(f"complex[{n} seqs, {heads[0]}:{heads[1]}, d{hd}, {d}]", drawn_lens(n),
                                             heads, hd, d, options=opts))
    for w in (None, 5, 128):
        out.append(UpstreamInput(f"sliding_window[{w}]", drawn_lens(5), (32, 8), 128, "float32",
                                 AttentionSpec(sliding_window=w)))
    for cap in (None, 50.0):
        out.append(UpstreamInput(f"logit_soft_capping[{cap}]", drawn_lens(2), (16, 2), 128, "float32",
                                 AttentionSpec(soft_cap=cap)))
    return [dataclasses.replace(c, source=BATCHED_TEST) for c in out]


UPSTREAM = {"rpa_v3_hd64": _hd64, "batched_rpa": _batched}


def upstream_inputs(kernel: str) -> list[UpstreamInput]:
    """The upstream test inputs of ``kernel`` (empty where upstream has no test of it)."""
    return UPSTREAM[kernel]() if kernel in UPSTREAM else []


def as_check_case(u: UpstreamInput, *, seed: int = 0) -> CheckCase:
    q, kv = zip(*u.seq_lens)
    batch = RaggedBatch.ordered(list(q), list(kv), page_size=PAGE)
    model = ModelSpec(name=f"upstream-{u.heads[0]}x{u.heads[1]}-d{u.head_dim}", num_q_heads=u.heads[0],
                      num_kv_heads=u.heads[1], head_dim=u.head_dim, dtype=u.dtype, kv_dtype=u.dtype,
                      attention_sinks=u.sinks)
    tokens = max(cdiv(batch.num_tokens, 128) * 128, 512)
    seqs = max(cdiv(batch.num_seqs, 8) * 8, 8)
    return CheckCase(name=f"upstream:{u.test}", batch=batch, model=model, attn=u.attn, max_num_batched_tokens=tokens,
                     max_num_seqs=seqs, num_pages=NUM_PAGES, seed=seed, kernel_options=u.options)
