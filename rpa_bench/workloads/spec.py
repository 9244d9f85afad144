"""Batch-spec strings: a ragged batch written in one short token, both ways.

Grammar (lowercase, no spaces)::

    spec    := group ( "_" group )*
    group   := [count] "q" q_len [ "s" kv_len ]
    count   := number                  # sequences in the group; default 1
    q_len   := number                  # new query tokens per sequence (>= 1)
    kv_len  := number                  # context per sequence *including* the q_len new
                                       # tokens (>= q_len); default: kv_len = q_len
    number  := digits [ "k" ]          # "k" multiplies by 1024

Examples: ``128q1s32k`` = 128 decodes (q_len 1) with kv_len 32768; ``q8k`` = one 8K
prefill (q_len = kv_len = 8192); ``2q2k_32q1s1k`` = two 2K-token prefills plus 32 decodes
with kv_len 1024. Groups may come in any order; the batch is stably sorted into kernel
order (decode, fixed-chunk prefill, mixed). :func:`format_batch_spec` writes the
canonical form: runs of equal (q_len, kv_len) in batch order, count and ``s`` omitted
when they are the default, numbers divisible by 1024 written with ``k``.
"""

from __future__ import annotations

import re

from rpa_bench.workloads.batch import RaggedBatch

_GROUP = re.compile(r"^(?P<count>\d+k?)?q(?P<q>\d+k?)(?:s(?P<kv>\d+k?))?$")
GRAMMAR = "[count]q<q_len>[s<kv_len>] joined by '_', numbers as digits with optional 'k' (x1024)"


def _number(text: str) -> int:
    return int(text[:-1]) * 1024 if text.endswith("k") else int(text)


def _format_number(value: int) -> str:
    return f"{value // 1024}k" if value >= 1024 and value % 1024 == 0 else str(value)


def parse_batch_spec(spec: str, *, page_size: int = 16, chunk_prefill_size: int | None = None) -> RaggedBatch:
    """Parse a batch-spec string (grammar in the module docstring) into a RaggedBatch."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"batch spec {spec!r} is empty; grammar: {GRAMMAR}")
    q_lens: list[int] = []
    kv_lens: list[int] = []
    for group in spec.split("_"):
        m = _GROUP.match(group)
        if m is None:
            raise ValueError(f"batch spec {spec!r}: group {group!r} does not match {GRAMMAR}")
        count = _number(m["count"]) if m["count"] else 1
        q = _number(m["q"])
        kv = _number(m["kv"]) if m["kv"] else q
        if count < 1:
            raise ValueError(f"batch spec {spec!r}: group {group!r} has count={count}; must be >= 1")
        if q < 1:
            raise ValueError(f"batch spec {spec!r}: group {group!r} has q_len={q}; must be >= 1")
        if kv < q:
            raise ValueError(
                f"batch spec {spec!r}: group {group!r} has kv_len={kv} < q_len={q} "
                "(kv_len includes the new tokens)"
            )
        q_lens += [q] * count
        kv_lens += [kv] * count
    return RaggedBatch.ordered(q_lens, kv_lens, page_size=page_size, chunk_prefill_size=chunk_prefill_size)


def format_batch_spec(batch: RaggedBatch) -> str:
    """Canonical batch-spec string of ``batch``; ``parse_batch_spec`` of it gives it back."""
    groups: list[tuple[int, int, int]] = []  # (count, q_len, kv_len)
    for q, kv in zip(batch.q_lens, batch.kv_lens):
        if groups and groups[-1][1:] == (q, kv):
            groups[-1] = (groups[-1][0] + 1, q, kv)
        else:
            groups.append((1, q, kv))
    parts = []
    for count, q, kv in groups:
        text = (str(count) if count > 1 else "") + "q" + _format_number(q)
        if kv != q:
            text += "s" + _format_number(kv)
        parts.append(text)
    return "_".join(parts)
