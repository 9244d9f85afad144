"""The simulated batch stream, stored compactly and rebuilt on demand.

Three tables hold every step's full batch exactly:

- ``segments``: runs of steps with one summary each: first step ``step0``, ``num_steps``,
  ``start_s`` / ``end_s``, and the first step's sequence counts (``num_q1``: q_len 1,
  ``num_chunk``: q_len = chunk_prefill_size), ``num_tokens``, ``sum_kv0``, ``max_kv0``,
  ``pairs0`` (causal query-key pairs) and ``num_waiting``. A run of more than one step is
  a decode-only stretch: each further step adds ``num_seqs`` to the kv and pair sums and
  1 to ``max_kv``;
- ``decodes``: one row per decode lifetime of a request: in steps ``start_step <= s <
  end_step`` it decodes with ``kv_len = offset + s + 1``;
- ``chunks``: one row per prefill/mixed sequence of a step (``q_len``, ``kv_len``).

A step's batch lists its decodes by admission order, then its chunks by admission order.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import NamedTuple

import numpy as np
import pandas as pd

from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.scheduler_spec import SchedulerSpec
from rpa_bench.workloads.steptime import StepCostModel


class Segment(NamedTuple):
    """One row of the ``segments`` table: a step, or a decode-only stretch.

    The layout of the rows the simulator (:mod:`.scheduler`) appends; they are appended as plain tuples
    in this order (building a NamedTuple per step costs ~10% of the simulation's time).
    """

    step0: int
    num_steps: int
    start_s: float
    end_s: float
    num_seqs: int
    num_tokens: int
    num_q1: int
    num_chunk: int
    sum_kv0: int
    max_kv0: int
    pairs0: int
    num_waiting: int


SEGMENT_COLUMNS = Segment._fields


DECODE_COLUMNS = ("rid", "adm", "start_step", "end_step", "offset")
CHUNK_COLUMNS = ("step", "rid", "adm", "q_len", "kv_len")
STEP_PHASES = ("decode", "prefill", "mixed")
STEP_COLUMNS = ("step", "start_s", "step_time_s", "num_seqs", "num_tokens", "num_decode", "num_prefill",
                "num_fixed_chunk", "num_mixed", "total_kv_len", "max_kv_len", "causal_pairs", "num_waiting", "phase")


def _frame(columns: tuple[str, ...], rows: list[tuple]) -> pd.DataFrame:
    """Rows of numbers -> typed columns (times ``*_s`` float64, the rest int64)."""
    flat = itertools.chain.from_iterable(rows)
    table = np.fromiter(flat, dtype=np.float64, count=len(rows) * len(columns)).reshape(len(rows), len(columns))
    return pd.DataFrame({c: table[:, i].copy() if c.endswith("_s") else table[:, i].astype(np.int64)
                         for i, c in enumerate(columns)})


@dataclasses.dataclass(eq=False)
class SimulationResult:
    requests: object  # RequestTable
    spec: SchedulerSpec
    cost: StepCostModel
    num_steps: int
    end_s: float
    segments: pd.DataFrame  # SEGMENT_COLUMNS
    decodes: pd.DataFrame  # rid, adm, start_step, end_step, offset
    chunks: pd.DataFrame  # step, rid, adm, q_len, kv_len
    finish_step: np.ndarray  # i64[num_requests]
    preemptions: int
    prefix_hit_tokens: int

    @classmethod
    def from_rows(cls, *, segments, decodes, chunks, finish_step,
                  **kw) -> "SimulationResult":
        return cls(
            segments=_frame(SEGMENT_COLUMNS, segments),
            decodes=_frame(DECODE_COLUMNS, decodes),
            chunks=_frame(CHUNK_COLUMNS, chunks),
            finish_step=np.asarray(finish_step, np.int64),
            **kw,
        )

    # --- per-step table -----------------------------------------------------------------
    def step_columns(self, names: tuple[str, ...] = STEP_COLUMNS) -> dict[str, np.ndarray]:
        """Per-step arrays of the named :data:`STEP_COLUMNS` (see :meth:`steps_frame`)."""
        unknown = sorted(set(names) - set(STEP_COLUMNS))
        if unknown:
            raise ValueError(f"step columns {unknown} unknown; allowed: {', '.join(STEP_COLUMNS)}")
        seg = self.segments
        n = seg["num_steps"].to_numpy()
        idx = np.repeat(np.arange(len(seg)), n)
        first = np.repeat(np.cumsum(n) - n, n)
        j = np.arange(len(idx)) - first  # step within its segment
        multi = n > 1
        cache: dict[str, np.ndarray] = {}

        def per_step(c: str) -> np.ndarray:
            if c not in cache:
                cache[c] = seg[c].to_numpy()[idx]
            return cache[c]

        def grown(c: str) -> np.ndarray:  # a stretch adds num_seqs per step to sums over kv_len
            if "growth" not in cache:
                cache["growth"] = np.where(multi, seg["num_seqs"].to_numpy(), 0)[idx] * j
            return per_step(c) + cache["growth"]

        out: dict[str, np.ndarray] = {}
        for name in names:
            if name == "step":
                out[name] = np.arange(len(idx), dtype=np.int64)
            elif name in ("step_time_s", "start_s"):
                if "step_time_s" not in out:
                    out["step_time_s"] = np.asarray(self.cost.step_time_s(
                        per_step("num_tokens"), grown("sum_kv0"), grown("pairs0")), dtype=np.float64)
                if name == "start_s":
                    cum = np.concatenate([[0.0], np.cumsum(out["step_time_s"])])
                    out[name] = per_step("start_s") + (cum[:-1] - cum[first])
            elif name in ("num_seqs", "num_tokens", "num_waiting"):
                out[name] = per_step(name)
            elif name == "num_decode":
                out[name] = per_step("num_q1")
            elif name == "num_prefill":
                out[name] = per_step("num_seqs") - per_step("num_q1")
            elif name == "num_fixed_chunk":
                out[name] = per_step("num_chunk")
            elif name == "num_mixed":
                out[name] = per_step("num_seqs") - per_step("num_q1") - per_step("num_chunk")
            elif name == "total_kv_len":
                out[name] = grown("sum_kv0")
            elif name == "causal_pairs":
                out[name] = grown("pairs0")
            elif name == "max_kv_len":
                out[name] = per_step("max_kv0") + np.where(multi[idx], j, 0)
            elif name == "phase":
                q1, seqs = per_step("num_q1"), per_step("num_seqs")
                code = np.where(q1 == seqs, 0, np.where(q1 == 0, 1, 2)).astype(np.int8)
                out[name] = pd.Categorical.from_codes(code, categories=list(STEP_PHASES))
        return {c: out[c] for c in names}

    def steps_frame(self) -> pd.DataFrame:
        """One row per step: start time, modelled step time and batch shape.

        ``num_decode``: sequences with q_len 1; ``num_prefill``: the others (prefill chunks
        of any size), split into v3's classes ``num_fixed_chunk`` (q_len equal to the
        scheduler's chunk_prefill_size) and ``num_mixed``. ``phase``: decode (every
        sequence decodes), prefill (none does) or mixed. ``total_kv_len``: sum of kv_len;
        ``causal_pairs``: query-key pairs under a causal mask. ``num_waiting``: queue
        length at the start of the step's segment. ``start_s`` is exact at segment starts
        and summed from step times inside a segment.
        """
        return pd.DataFrame(self.step_columns())

    # --- full batches -----------------------------------------------------------------------
    @functools.cached_property
    def _decodes_by_admission(self) -> tuple[np.ndarray, ...]:
        d = self.decodes.sort_values("adm", kind="stable")
        return tuple(d[c].to_numpy() for c in ("rid", "start_step", "end_step", "offset"))

    def sequences_at(self, step: int) -> list[tuple[int, int, int]]:
        """(request id, q_len, kv_len) of every sequence of ``step``, in batch order."""
        if not 0 <= step < self.num_steps:
            raise ValueError(f"step={step} out of range [0, {self.num_steps})")
        rid, start, end, off = self._decodes_by_admission
        mask = (start <= step) & (step < end)
        out = [(r, 1, o + step + 1) for r, o in zip(rid[mask].tolist(), off[mask].tolist())]
        c = self.chunks
        steps = c["step"].to_numpy()
        lo, hi = np.searchsorted(steps, step, "left"), np.searchsorted(steps, step, "right")
        out += [(int(r), int(q), int(kv)) for r, q, kv in
                zip(c["rid"].to_numpy()[lo:hi], c["q_len"].to_numpy()[lo:hi], c["kv_len"].to_numpy()[lo:hi])]
        return out

    def batch_at(self, step: int) -> RaggedBatch:
        seqs = self.sequences_at(step)
        return RaggedBatch.ordered([q for _, q, _ in seqs], [kv for _, _, kv in seqs],
                                   page_size=self.spec.page_size, chunk_prefill_size=self.spec.chunk_prefill_size)

    def kv_len_counts(self) -> np.ndarray:
        """counts[k] = number of (step, sequence) pairs with kv_len k, over the whole trace."""
        d, c = self.decodes, self.chunks
        lo = (d["offset"] + d["start_step"] + 1).to_numpy()
        hi = (d["offset"] + d["end_step"] + 1).to_numpy()  # exclusive
        top = int(max(hi.max(initial=0), c["kv_len"].max() + 1 if len(c) else 0)) + 1
        diff = np.bincount(lo, minlength=top + 1) - np.bincount(hi, minlength=top + 1)
        counts = np.cumsum(diff)[:top]
        counts += np.bincount(c["kv_len"].to_numpy(), minlength=top)[:top]
        return counts
