"""The simulated batch stream, stored compactly and rebuilt on demand.

Three tables hold every step's full batch exactly:

- ``segments``: runs of steps with one summary each (a run of more than one step is a
  decode-only stretch: each step adds ``num_seqs`` to ``sum_kv`` and 1 to ``max_kv``);
- ``decodes``: one row per decode lifetime of a request: in steps ``start_step <= s <
  end_step`` it decodes with ``kv_len = offset + s + 1``;
- ``chunks``: one row per prefill/mixed sequence of a step (``q_len``, ``kv_len``).

A step's batch lists its decodes by admission order, then its chunks by admission order.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.scheduler_spec import SchedulerSpec
from rpa_bench.workloads.steptime import StepCostModel

SEGMENT_COLUMNS = ("step0", "num_steps", "start_s", "end_s", "num_seqs", "num_tokens", "num_q1", "num_chunk",
                   "sum_kv0", "max_kv0", "pairs0", "num_waiting")


DECODE_COLUMNS = ("rid", "adm", "start_step", "end_step", "offset")
CHUNK_COLUMNS = ("step", "rid", "adm", "q_len", "kv_len")


def _frame(columns: tuple[str, ...], rows: list[tuple]) -> pd.DataFrame:
    """Rows of numbers -> typed columns (times ``*_s`` float64, the rest int64)."""
    table = np.array(rows, dtype=np.float64).reshape(len(rows), len(columns))
    return pd.DataFrame({c: table[:, i] if c.endswith("_s") else table[:, i].astype(np.int64)
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
    def from_rows(cls, *, segments: list[tuple], decodes: list[tuple], chunks: list[tuple], finish_step,
                  **kw) -> "SimulationResult":
        return cls(
            segments=_frame(SEGMENT_COLUMNS, segments),
            decodes=_frame(DECODE_COLUMNS, decodes),
            chunks=_frame(CHUNK_COLUMNS, chunks),
            finish_step=np.asarray(finish_step, np.int64),
            **kw,
        )

    # --- per-step table -----------------------------------------------------------------
    def steps_frame(self) -> pd.DataFrame:
        """One row per step: time, shape and modelled time (start_s exact at segment starts)."""
        seg = self.segments
        n = seg["num_steps"].to_numpy()
        idx = np.repeat(np.arange(len(seg)), n)
        j = np.arange(len(idx)) - np.repeat(np.cumsum(n) - n, n)  # step within its segment
        num_seqs = seg["num_seqs"].to_numpy()[idx]
        multi = (n > 1)[idx]
        grow = np.where(multi, num_seqs, 0)
        sum_kv = seg["sum_kv0"].to_numpy()[idx] + grow * j
        pairs = seg["pairs0"].to_numpy()[idx] + grow * j
        max_kv = seg["max_kv0"].to_numpy()[idx] + np.where(multi, j, 0)
        tokens = seg["num_tokens"].to_numpy()[idx]
        dt = np.asarray(self.cost.step_time_s(tokens, sum_kv, pairs), dtype=np.float64)
        cum = np.concatenate([[0.0], np.cumsum(dt)])
        first = (np.cumsum(n) - n)[idx]
        start = seg["start_s"].to_numpy()[idx] + (cum[:-1] - cum[first])
        q1 = seg["num_q1"].to_numpy()[idx]
        chunk = seg["num_chunk"].to_numpy()[idx]
        phase = np.where(q1 == num_seqs, "decode", np.where(q1 == 0, "prefill", "mixed"))
        return pd.DataFrame({
            "step": seg["step0"].to_numpy()[idx] + j,
            "start_s": start,
            "step_time_s": dt,
            "num_seqs": num_seqs,
            "num_tokens": tokens,
            "num_decode_seqs": q1,
            "num_prefill_seqs": chunk,
            "num_mixed_seqs": num_seqs - q1 - chunk,
            "sum_kv": sum_kv,
            "max_kv": max_kv,
            "pairs": pairs,
            "num_waiting": seg["num_waiting"].to_numpy()[idx],
            "phase": phase,
        })

    # --- full batches -----------------------------------------------------------------------
    def sequences_at(self, step: int) -> list[tuple[int, int, int]]:
        """(request id, q_len, kv_len) of every sequence of ``step``, in batch order."""
        if not 0 <= step < self.num_steps:
            raise ValueError(f"step={step} out of range [0, {self.num_steps})")
        d = self.decodes
        mask = (d["start_step"].to_numpy() <= step) & (step < d["end_step"].to_numpy())
        # decodes still running at the end of the simulation have no row yet: none remain
        rows = d[mask].sort_values("adm")
        out = [(int(r), 1, int(o) + step + 1) for r, o in zip(rows["rid"], rows["offset"])]
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
