"""Build a workload: the list of ragged batches (points) a run measures, with weights.

``build_workload(spec, model, scheduler, seed=...)`` turns a workload spec into points:
the paper's sweeps (one point per length, exact padding), random batches, batch-spec
strings, or a trace (simulated with the scheduler, then sampled; each point is one
simulated step with its weight and padding sizes for ``materialize``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import ModelSpec
from rpa_bench.workloads.sampling import coverage, sample_steps
from rpa_bench.workloads.scheduler import simulate
from rpa_bench.workloads.scheduler_spec import SchedulerSpec
from rpa_bench.workloads.spec import format_batch_spec, parse_batch_spec
from rpa_bench.workloads.steptime import StepCostModel, step_time_model
from rpa_bench.workloads.stream import SimulationResult
from rpa_bench.workloads.summary import simulation_summary
from rpa_bench.workloads.synthetic import decode_batch, prefill_batch, random_batch
from rpa_bench.workloads.traces import read_trace
from rpa_bench.workloads.workload_spec import (  # noqa: F401 - re-exported API
    BatchSpecSpec, PaperDecodeSpec, PaperPrefillSpec, SlidingWindowSpec, SpecVerifySpec, SyntheticSpec, TraceSpec,
    WorkloadSpec,
    workload_spec_from_dict,
)


@dataclasses.dataclass(frozen=True)
class WorkloadPoint:
    point_id: str  # stable, e.g. "ctx=8192" or "step=12345"
    batch: RaggedBatch
    causal: bool
    weight: float  # share of the workload this point represents (time share for traces)
    max_num_batched_tokens: int  # padding for materialize
    max_num_seqs: int
    meta: dict = dataclasses.field(default_factory=dict)
    sliding_window: int | None = None  # this point's window (None: the run's attention setting)


def point_attention(attn: Any, point: WorkloadPoint) -> Any:
    """The run's AttentionSpec for one point: its causal flag, and its own sliding window if it has one."""
    changes: dict[str, Any] = {"causal": point.causal}
    if point.sliding_window is not None:
        changes["sliding_window"] = point.sliding_window
    return dataclasses.replace(attn, **changes)


@dataclasses.dataclass(eq=False)
class Workload:
    name: str
    kind: str
    points: list[WorkloadPoint]
    summary: dict
    sources: dict[str, str]  # file -> sha256
    seed: int
    simulation: SimulationResult | None = None  # traces: the whole simulated stream
    sample: pd.DataFrame | None = None  # traces: sampled steps with weights

    @functools.cached_property
    def steps(self) -> pd.DataFrame | None:
        """Per-step summary of every simulated step, ``sampled`` marking the points (traces)."""
        if self.simulation is None:
            return None
        frame = self.simulation.steps_frame()
        frame["sampled"] = False
        frame.loc[self.sample["step"].to_numpy(), "sampled"] = True
        return frame

    def sampled_batches(self) -> pd.DataFrame:
        """One row per sequence of every point: point_id, seq_index, q_len, kv_len (+ meta step)."""
        rows = {"point_id": [], "seq_index": [], "q_len": [], "kv_len": []}
        for p in self.points:
            n = p.batch.num_seqs
            rows["point_id"] += [p.point_id] * n
            rows["seq_index"] += list(range(n))
            rows["q_len"] += list(p.batch.q_lens)
            rows["kv_len"] += list(p.batch.kv_lens)
        return pd.DataFrame(rows)

    def write_tables(self, folder: str | Path) -> list[Path]:
        """Write the workload's tables under ``folder``; return their paths.

        - ``summary.json``: name, kind, seed, sources (file -> sha256), summary;
        - ``steps.parquet`` (traces): every simulated step's summary, ``sampled`` marking
          the points (the only top-level table: reports draw the batch shape from it;
          ``step_time_s`` stored as float32);
        - ``batches/points.parquet``: each point's sequences (point_id, seq_index, q_len,
          kv_len); ``batches/sample.parquet`` (traces): sampled steps and their weights;
        - ``stream/{segments,decodes,chunks}.parquet`` (traces): the exact, complete
          stream (:class:`.stream.SimulationResult`).
        """
        folder = Path(folder)
        (folder / "batches").mkdir(parents=True, exist_ok=True)
        doc = {"name": self.name, "kind": self.kind, "seed": self.seed, "sources": self.sources,
               "summary": self.summary}
        (folder / "summary.json").write_text(json.dumps(doc, indent=2, default=float))
        tables = {"batches/points": self.sampled_batches()}
        if self.simulation is not None:
            (folder / "stream").mkdir(exist_ok=True)
            tables.update({"steps": self.steps.astype({"step_time_s": np.float32}), "batches/sample": self.sample,
                           "stream/segments": self.simulation.segments, "stream/decodes": self.simulation.decodes,
                           "stream/chunks": self.simulation.chunks})
        out = [folder / "summary.json"]
        for name, table in tables.items():
            out.append(folder / f"{name}.parquet")
            table.to_parquet(out[-1], index=False, compression="zstd")
        return out


def cost_model_for(model: ModelSpec, scheduler: SchedulerSpec) -> StepCostModel:
    """Step-time model of ``model`` on the scheduler's device (or its explicit peaks)."""
    bw, peak = scheduler.hbm_bw_bytes_per_s, scheduler.peak_flops_per_s
    if bw is None or peak is None:  # the device's figures are the roofline's to look up, before this
        raise ValueError(f"scheduler.hbm_bw_bytes_per_s / peak_flops_per_s are unset: resolve scheduler.device="
                         f"{scheduler.device!r} first (rpa_bench.roofline.specs.with_device_peaks)")
    return step_time_model(bw, peak, scheduler.step_overhead_s, model)


def _padding(batch: RaggedBatch, scheduler: SchedulerSpec) -> tuple[int, int]:
    if scheduler.pad_to == "exact":
        return batch.num_tokens, batch.num_seqs
    if scheduler.pad_to == "pow2":
        def pow2(x: int, cap: int) -> int:
            return min(1 << (x - 1).bit_length(), max(cap, x))
        return pow2(batch.num_tokens, scheduler.max_num_batched_tokens), pow2(batch.num_seqs, scheduler.max_num_seqs)
    return scheduler.max_num_batched_tokens, scheduler.max_num_seqs


def _uniform(points: list[tuple[str, RaggedBatch, dict]], causal: bool, *, tokens_pad: int | None = None,
             seqs_pad: int | None = None) -> list[WorkloadPoint]:
    """Equal weights; padding ``tokens_pad`` / ``seqs_pad`` (None: each batch's exact size)."""
    w = 1.0 / len(points)
    return [WorkloadPoint(pid, b, causal, w, tokens_pad or b.num_tokens, seqs_pad or b.num_seqs, meta)
            for pid, b, meta in points]


def _trace_workload(spec: TraceSpec, model: ModelSpec, scheduler: SchedulerSpec, seed: int) -> Workload:
    requests = read_trace(spec.path, columns=spec.column_map, file_type=spec.file_type, on_bad_row=spec.on_bad_row,
                          arrival_rate_per_s=spec.arrival_rate_per_s, seed=seed, max_requests=spec.max_requests)
    result = simulate(requests, scheduler, cost_model_for(model, scheduler))
    summary = simulation_summary(result)
    summary["skipped_rows"] = requests.num_skipped_rows
    cols = result.step_columns(("step", "start_s", "step_time_s", "num_tokens", "max_kv_len"))
    sample = sample_steps(cols, scheduler.sampling, seed=seed)
    summary["sample"] = coverage(sample, cols, scheduler.sampling.method)
    points = []
    for step, w_steps, w_time in zip(sample["step"], sample["step_weight"], sample["time_weight"]):
        batch = result.batch_at(int(step))
        t_pad, s_pad = _padding(batch, scheduler)
        meta = {"step": int(step), "sim_time_s": float(cols["start_s"][step]),
                "modelled_step_time_s": float(cols["step_time_s"][step]), "step_weight": float(w_steps),
                "time_weight": float(w_time), "spec": format_batch_spec(batch)}
        points.append(WorkloadPoint(f"step={int(step)}", batch, spec.causal, float(w_time), t_pad, s_pad, meta))
    return Workload(spec.name, spec.kind, points, summary, dict(requests.sources), seed, result, sample)


def build_workload(spec: WorkloadSpec, model: ModelSpec, scheduler: SchedulerSpec | Mapping | None, *,
                   seed: int) -> Workload:
    """The points of ``spec`` (see the module docstring)."""
    if isinstance(scheduler, Mapping):
        scheduler = SchedulerSpec.from_dict(scheduler) if scheduler else None
    if isinstance(spec, PaperDecodeSpec):
        pts = [(f"ctx={c}", decode_batch(spec.num_seqs, c, page_size=spec.page_size),
                {"context_len": c, "kv_len": c + 1, "num_seqs": spec.num_seqs}) for c in spec.context_lens]
        points = _uniform(pts, spec.causal)
    elif isinstance(spec, PaperPrefillSpec):
        pts = [(f"seq={s}", prefill_batch(spec.num_seqs, s, page_size=spec.page_size),
                {"seq_len": s, "num_seqs": spec.num_seqs}) for s in spec.seq_lens]
        points = _uniform(pts, spec.causal)
    elif isinstance(spec, SyntheticSpec):
        rng = np.random.default_rng(seed)
        pts = []
        for i in range(spec.num_batches):
            b = random_batch(rng, num_seqs=spec.num_seqs, max_kv_len=spec.max_kv_len, max_q_len=spec.max_q_len,
                             decode_fraction=spec.decode_fraction, distribution=spec.distribution,
                             zipf_a=spec.zipf_a, page_size=spec.page_size,
                             max_num_batched_tokens=spec.max_num_batched_tokens)
            pts.append((f"batch={i}", b, {"spec": format_batch_spec(b)}))
        budget = spec.max_num_batched_tokens
        points = _uniform(pts, spec.causal, tokens_pad=budget, seqs_pad=spec.num_seqs if budget else None)
    elif isinstance(spec, BatchSpecSpec):
        pts = []
        for text in spec.spec:
            b = parse_batch_spec(text, page_size=spec.page_size, chunk_prefill_size=spec.chunk_prefill_size)
            pts.append((format_batch_spec(b), b, {"spec": format_batch_spec(b)}))
        points = _uniform(pts, spec.causal)
    elif isinstance(spec, SpecVerifySpec):
        pts = []
        for n in spec.num_seqs:
            for c in spec.context_lens:
                for q in spec.query_lens:
                    b = RaggedBatch.ordered([q] * n, [c + q] * n, page_size=spec.page_size)
                    pts.append((f"n={n},q={q},ctx={c}", b,
                                {"num_seqs": n, "query_len": q, "context_len": c, "spec": format_batch_spec(b)}))
        points = _uniform(pts, spec.causal)
    elif isinstance(spec, SlidingWindowSpec):
        c = spec.context_len
        if spec.phase == "decode":
            batch = decode_batch(spec.num_seqs, c, page_size=spec.page_size)
        else:
            batch = prefill_batch(spec.num_seqs, c, page_size=spec.page_size)
        w_each = 1.0 / len(spec.windows)
        points = [WorkloadPoint(f"w={w}", batch, True, w_each, batch.num_tokens, batch.num_seqs,
                                {"sliding_window": w, "context_len": c, "phase": spec.phase,
                                 "num_seqs": spec.num_seqs}, sliding_window=w) for w in spec.windows]
    elif isinstance(spec, TraceSpec):
        if scheduler is None:
            raise ValueError(f"workload {spec.name} (kind=trace) needs scheduler settings; got scheduler=None")
        return _trace_workload(spec, model, scheduler, seed)
    else:
        raise ValueError(f"spec={type(spec).__name__}; allowed: {', '.join(c.__name__ for c in WorkloadSpec.__args__)}")
    return Workload(spec.name, spec.kind, points, {"points": len(points)}, {}, seed)
