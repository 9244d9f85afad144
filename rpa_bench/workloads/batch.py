"""The ragged batch: what one RPA kernel call sees.

A batch is a list of sequences, each with ``q_len`` new query tokens and ``kv_len``
context tokens *including* the new ones (as the kernels take ``kv_lens``). Query token
``i`` of a sequence sits at position ``kv_len - q_len + i``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence

import numpy as np

DECODE, PREFILL, MIXED = "decode", "prefill", "mixed"
SEQ_CLASSES = (DECODE, PREFILL, MIXED)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclasses.dataclass(frozen=True)
class RaggedBatch:
    """One kernel call's sequences, ordered decode / fixed-chunk prefill / mixed.

    ``chunk_prefill_size``: when set, sequences whose ``q_len`` equals it form the
    fixed-chunk prefill class (v3's ``distribution[0]:distribution[1]``); otherwise
    every non-decode sequence is "mixed".
    """

    q_lens: tuple[int, ...]
    kv_lens: tuple[int, ...]
    page_size: int = 16
    chunk_prefill_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "q_lens", tuple(int(x) for x in self.q_lens))
        object.__setattr__(self, "kv_lens", tuple(int(x) for x in self.kv_lens))
        if len(self.q_lens) != len(self.kv_lens):
            raise ValueError(
                f"len(q_lens)={len(self.q_lens)} must equal len(kv_lens)={len(self.kv_lens)}"
            )
        if not self.q_lens:
            raise ValueError("a batch needs at least one sequence (q_lens is empty)")
        if self.page_size < 1:
            raise ValueError(f"page_size={self.page_size} must be >= 1")
        if self.chunk_prefill_size is not None and self.chunk_prefill_size < 2:
            raise ValueError(f"chunk_prefill_size={self.chunk_prefill_size} must be >= 2 or None")
        for i, (q, kv) in enumerate(zip(self.q_lens, self.kv_lens)):
            if q < 1:
                raise ValueError(f"q_lens[{i}]={q} must be >= 1")
            if kv < q:
                raise ValueError(f"kv_lens[{i}]={kv} must be >= q_lens[{i}]={q} (kv_lens include new tokens)")
        classes = [self.seq_class(i) for i in range(self.num_seqs)]
        order = [SEQ_CLASSES.index(c) for c in classes]
        if order != sorted(order):
            raise ValueError(
                "sequences must be ordered decode, then fixed-chunk prefill, then mixed "
                "(use RaggedBatch.ordered(...))"
            )

    @classmethod
    def ordered(
        cls,
        q_lens: Sequence[int],
        kv_lens: Sequence[int],
        page_size: int = 16,
        chunk_prefill_size: int | None = None,
    ) -> "RaggedBatch":
        """Build a batch from sequences in any order, stably sorted into kernel order."""
        q = [int(x) for x in q_lens]
        kv = [int(x) for x in kv_lens]

        def rank(i: int) -> int:
            if q[i] == 1:
                return 0
            if chunk_prefill_size is not None and q[i] == chunk_prefill_size:
                return 1
            return 2

        idx = sorted(range(len(q)), key=rank)
        return cls(tuple(q[i] for i in idx), tuple(kv[i] for i in idx), page_size, chunk_prefill_size)

    # --- shape -------------------------------------------------------------------------
    @property
    def num_seqs(self) -> int:
        return len(self.q_lens)

    @property
    def num_tokens(self) -> int:
        return sum(self.q_lens)

    @property
    def max_kv_len(self) -> int:
        return max(self.kv_lens)

    @property
    def pages_per_seq(self) -> tuple[int, ...]:
        return tuple(cdiv(kv, self.page_size) for kv in self.kv_lens)

    @property
    def num_pages(self) -> int:
        return sum(self.pages_per_seq)

    def seq_class(self, i: int) -> str:
        q = self.q_lens[i]
        if q == 1:
            return DECODE
        if self.chunk_prefill_size is not None and q == self.chunk_prefill_size:
            return PREFILL
        return MIXED

    @property
    def distribution(self) -> tuple[int, int, int]:
        """v3's ``distribution``: (decode_end, prefill_end, num_seqs)."""
        classes = [self.seq_class(i) for i in range(self.num_seqs)]
        d = classes.count(DECODE)
        p = classes.count(PREFILL)
        return (d, d + p, self.num_seqs)

    @property
    def phase(self) -> str:
        """decode: every sequence decodes one token; prefill: no decode at all; else mixed."""
        n_decode = sum(1 for q in self.q_lens if q == 1)
        if n_decode == self.num_seqs:
            return DECODE
        if n_decode == 0:
            return PREFILL
        return MIXED

    def cu_q_lens(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.q_lens)]).astype(np.int32)

    # --- identity ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def content_hash(self) -> str:
        """Stable hash of the batch shape (sha256 of its canonical JSON, 16 hex chars)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
