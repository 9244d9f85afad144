"""Measurement rows, built in one place (:func:`build_row`) from typed parts.

Each part is a frozen dataclass whose fields are columns of :class:`rpa_bench.store.row.Row`:
the run's (:class:`RunColumns`), the workload point's, the kernel entry's, its block sizes,
the analytic cost, the correctness gate, the timing, the roofline metrics, the mesh
accounting, the offline compile. Pure functions of their inputs (no timing, no kernels run
here). No other module adds a key to a row.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from rpa_bench.kernels.base import KernelProvenance
from rpa_bench.roofline.traffic import TrafficCeiling
from rpa_bench.store.row import Row
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import AttentionSpec, ModelSpec
from rpa_bench.workloads.spec import format_batch_spec

MAX_BATCH_SPEC_CHARS = 120
FIGURES_PER = ("device", "chip")


@dataclasses.dataclass(frozen=True)
class RunColumns:
    """Columns shared by every row of one run."""

    def columns(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


    run_id: str
    experiment: str
    scale: str
    device: str  # roofline device spec name
    device_kind: str
    num_devices: int
    mesh: str
    seed: int
    figures_per: str | None = None  # device | chip: whose peaks the metrics divide by; None: a chip is one device

    def __post_init__(self) -> None:
        if self.figures_per is not None and self.figures_per not in FIGURES_PER:
            raise ValueError(f"figures_per={self.figures_per!r}; allowed: {', '.join(FIGURES_PER)}")


def figures_per(num_devices: int, devices_per_chip: int, *, vendor: str = "google") -> str | None:
    """``chip`` when ``num_devices`` devices make up whole chips of ``devices_per_chip``
    devices each (every device of a chip used), else ``device``; None where the distinction
    means nothing: a chip of one device, or a CPU host (its forced devices share the host)."""
    if num_devices < 1 or devices_per_chip < 1:
        raise ValueError(f"num_devices={num_devices} and devices_per_chip={devices_per_chip} must be >= 1")
    if vendor == "cpu" or devices_per_chip == 1:
        return None
    return "chip" if num_devices % devices_per_chip == 0 else "device"


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def workload_hash(batch: RaggedBatch, model: ModelSpec, attn: AttentionSpec, *, causal: bool,
                  max_num_batched_tokens: int | None, max_num_seqs: int | None) -> str:
    blob = json.dumps(
        {"batch": batch.to_dict(), "model": dataclasses.asdict(model), "attention": dataclasses.asdict(attn),
         "causal": causal, "max_num_batched_tokens": max_num_batched_tokens, "max_num_seqs": max_num_seqs},
        sort_keys=True, separators=(",", ":"), default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _batch_spec(batch: RaggedBatch) -> str | None:
    try:
        text = format_batch_spec(batch)
    except Exception:  # noqa: BLE001 - a display convenience only
        return None
    return text if len(text) <= MAX_BATCH_SPEC_CHARS else None


class _Part:
    """A typed part of a row: its fields are row columns."""

    def columns(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __getitem__(self, name: str) -> Any:  # read like the row it becomes part of
        return getattr(self, name)


@dataclasses.dataclass(frozen=True)
class PointColumns(_Part):
    workload: str
    workload_kind: str
    point_id: str
    workload_hash: str
    phase: str
    num_seqs: int
    num_tokens: int
    max_kv_len: int
    context_len: int | None
    seq_len: int | None
    causal: bool
    sliding_window: int | None
    weight: float
    batch_spec: str | None
    model: str
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    kv_dtype: str
    page_size: int


@dataclasses.dataclass(frozen=True)
class KernelColumns(_Part):
    kernel: str
    backend: str
    compiler_options: str | None
    kernel_source: str | None
    kernel_commit: str | None
    interpret: bool


@dataclasses.dataclass(frozen=True)
class BlockColumns(_Part):
    """The block sizes a kernel was built with and where they came from (its ``meta``)."""

    block_sizes: str | None
    block_sizes_source: str | None

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> "BlockColumns":
        meta = dict(meta or {})
        if "block_sizes" in meta:  # rpa_v3 family: per case (bq, bkv) tokens
            sizes: Any = {k: list(v) for k, v in (meta.get("block_sizes") or {}).items() if v is not None}
        elif "num_kv_pages_per_block" in meta:  # rpa_v2 / jax_rpa: pages and queries per block
            sizes = {"num_kv_pages_per_block": meta.get("num_kv_pages_per_block"),
                     "num_queries_per_block": meta.get("num_queries_per_block")}
        elif "block_bytes" in meta:  # the reference's KV block
            sizes = {"block_bytes": meta["block_bytes"]}
        else:
            return cls(None, None)
        source = meta.get("block_sizes_source", "config" if "block_bytes" in meta else None)
        return cls(json.dumps(sizes, sort_keys=True, default=str),
                   None if source is None else (source if isinstance(source, str)
                                                else json.dumps(source, sort_keys=True, default=str)))


@dataclasses.dataclass(frozen=True)
class CostColumns(_Part):
    hbm_bytes: int
    flops: int
    flops_count: str
    arithmetic_intensity: float


@dataclasses.dataclass(frozen=True)
class GateColumns(_Part):
    """The correctness gate: the check against the reference on the same batch."""

    max_abs_err: float | None
    tolerance: float | None


@dataclasses.dataclass(frozen=True)
class TimingColumns(_Part):
    timing_source: str | None = None
    compile_time_s: float | None = None
    loops_per_sample: int | None = None
    samples_us: list | None = None
    wall_samples_us: list | None = None
    sample_order: list | None = None
    device_samples_us: list | None = None
    latency_us: float | None = None
    latency_iqr_us: float | None = None
    latency_ci_low_us: float | None = None
    latency_ci_high_us: float | None = None
    wall_latency_us: float | None = None
    device_latency_us: float | None = None
    per_device_latency_us: list | None = None
    capture_path: str | None = None


@dataclasses.dataclass(frozen=True)
class MetricColumns(_Part):
    convention: str
    throughput_gb_per_s: float | None
    throughput_gib_per_s: float | None
    tflops: float | None
    mbu_pct: float | None
    mfu_pct: float | None
    mbu_si_pct: float | None
    mfu_si_pct: float | None
    mbu_calibrated_pct: float | None
    mfu_calibrated_pct: float | None
    bound_time_us: float | None
    bound_by: str | None
    roofline_efficiency_pct: float | None
    above_roof: bool


@dataclasses.dataclass(frozen=True)
class MeshColumns(_Part):
    """A sharded call's accounting; its num_devices, mesh and per-device latency replace the run's."""

    num_devices: int
    mesh: str
    per_device_latency_us: list | None
    load_imbalance: float | None
    modelled_load_imbalance: float | None
    per_device_hbm_bytes: list | None
    per_device_flops: list | None
    per_chip: str | None


@dataclasses.dataclass(frozen=True)
class CompileColumns(_Part):
    """``run.compile_only``: one variant's compile for a TPU generation."""

    compile_target: str | None = None
    compile_status: str | None = None
    compile_time_s: float | None = None
    vmem_used_bytes: int | None = None
    vmem_capacity_bytes: int | None = None
    vmem_headroom: float | None = None
    compiled_hbm_bytes: int | None = None
    compile_facts: str | None = None


@dataclasses.dataclass(frozen=True)
class TrafficColumns(_Part):
    """The kernel's HBM traffic for the call (its model, and its observation where taken)."""

    moved_hbm_bytes: int | None = None
    observed_hbm_bytes: int | None = None
    refetch_factor: float | None = None
    traffic_ceiling_pct: float | None = None
    traffic: str | None = None

    @classmethod
    def of(cls, modelled: Any, analytic_bytes: int | None, observed: Any = None) -> "TrafficColumns":
        """From a :class:`rpa_bench.kernels.traffic.Traffic` and the call's analytic bytes."""
        ceiling = TrafficCeiling(int(analytic_bytes), modelled.hbm_bytes) if analytic_bytes else None
        return cls(moved_hbm_bytes=modelled.hbm_bytes,
                   observed_hbm_bytes=None if observed is None else observed.hbm_bytes,
                   refetch_factor=None if ceiling is None else ceiling.refetch_factor,
                   traffic_ceiling_pct=None if ceiling is None else ceiling.ceiling_pct,
                   traffic=modelled.to_json())


# Parts may refine what an earlier part set (a sharded call's own mesh and device times);
# any other column set twice is a bug.
_REFINED = {"num_devices", "mesh", "per_device_latency_us"}


def build_row(run: "RunColumns", point: PointColumns, kernel: KernelColumns, *, variant: str, status: str,
              error: str | None = None, warnings: Sequence[str] = (), phase_seconds: str | None = None,
              blocks: BlockColumns | None = None, cost: CostColumns | None = None, gate: GateColumns | None = None,
              timing: TimingColumns | None = None, metrics: MetricColumns | None = None,
              mesh: MeshColumns | None = None, compiled: CompileColumns | None = None,
              traffic: "_Part | None" = None) -> dict:
    """The one place a row is made: the run's, point's and kernel's columns, then each typed
    part given; returns the row as a dict of :class:`~rpa_bench.store.row.Row` columns."""
    cols: dict[str, Any] = {**run.columns(), **point.columns(), **kernel.columns(), "variant": variant,
                            "status": str(status), "error": error, "warnings": list(warnings) or None,
                            "phase_seconds": phase_seconds, "timestamp": now_utc()}
    for part in (blocks, cost, gate, timing, metrics, mesh, compiled, traffic):
        if part is None:
            continue
        for name, value in part.columns().items():
            if name in cols and cols[name] is not None and name not in _REFINED and value is not None:
                raise ValueError(f"row column {name!r} set twice ({type(part).__name__})")
            if value is not None or name not in cols:
                cols[name] = value
    return Row(**cols).as_dict()


def annotate(row: dict, *, warnings: Sequence[str] = (), phase_seconds: str | None = None) -> dict:
    """A built row with notes appended and/or its phase account set (known only once every
    variant of its (point, kernel) is done); the row stays a :class:`Row`."""
    out = dict(row)
    if warnings:
        out["warnings"] = [*(out.get("warnings") or []), *warnings]
    if phase_seconds is not None:
        out["phase_seconds"] = phase_seconds
    return Row(**out).as_dict()


def paper_axes(batch: RaggedBatch, workload_kind: str, meta: Mapping[str, Any] | None = None
               ) -> tuple[int | None, int | None]:
    """The paper's sweep axis of a point: decode context ``c = kv_len - 1`` and prefill
    sequence length ``s`` (from the point's meta, else from a paper workload's batch)."""
    meta = dict(meta or {})
    context_len, seq_len = meta.get("context_len"), meta.get("seq_len")
    if context_len is None and workload_kind == "paper_decode" and len(set(batch.kv_lens)) == 1:
        context_len = batch.kv_lens[0] - 1
    if seq_len is None and workload_kind == "paper_prefill" and batch.num_seqs == 1:
        seq_len = batch.q_lens[0]
    return (None if context_len is None else int(context_len)), (None if seq_len is None else int(seq_len))


def point_columns(*, workload: str, workload_kind: str, point_id: str, batch: RaggedBatch, causal: bool,
                  weight: float, model: ModelSpec, model_name: str, attn: AttentionSpec,
                  max_num_batched_tokens: int | None, max_num_seqs: int | None,
                  meta: Mapping[str, Any] | None = None) -> PointColumns:
    context_len, seq_len = paper_axes(batch, workload_kind, meta)
    return PointColumns(**{
        "workload": workload,
        "workload_kind": workload_kind,
        "point_id": point_id,
        "workload_hash": workload_hash(batch, model, attn, causal=causal,
                                       max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs),
        "phase": batch.phase,
        "num_seqs": batch.num_seqs,
        "num_tokens": batch.num_tokens,
        "max_kv_len": batch.max_kv_len,
        "context_len": context_len,
        "seq_len": seq_len,
        "causal": causal,
        "sliding_window": attn.sliding_window,
        "weight": weight,
        "batch_spec": _batch_spec(batch),
        "model": model_name,
        "num_q_heads": model.num_q_heads,
        "num_kv_heads": model.num_kv_heads,
        "head_dim": model.head_dim,
        "dtype": model.dtype,
        "kv_dtype": model.kv_dtype,
        "page_size": batch.page_size,
    })


def kernel_columns(entry: Any, provenance: KernelProvenance, *, interpret: bool) -> KernelColumns:
    """``entry``: a run's kernel entry (a KernelConfig: label, backend, compiler options) or a plain name."""
    if isinstance(entry, str):
        name, backend, options = entry, entry, {}
    else:
        name, backend, options = entry.label, entry.name, dict(entry.compiler_options)
    return KernelColumns(kernel=name, backend=backend,
                         compiler_options=json.dumps(options, sort_keys=True) if options else None,
                         kernel_source=provenance.source_label, kernel_commit=provenance.git_commit,
                         interpret=interpret)


def cost_columns(cost: Any) -> CostColumns:
    return CostColumns(hbm_bytes=int(cost.hbm_bytes), flops=int(cost.flops), flops_count=cost.flops_kind,
                       arithmetic_intensity=float(cost.arithmetic_intensity))


def metric_columns(paper: Any, si: Any, calibrated: Any | None) -> tuple[MetricColumns, list[str]]:
    """Columns from three Metrics of one latency: paper convention, si, si vs calibration."""
    cols = MetricColumns(**{
        "convention": paper.convention,
        "throughput_gb_per_s": paper.throughput_gb_per_s,
        "throughput_gib_per_s": paper.throughput_gib_per_s,
        "tflops": paper.tflops,
        "mbu_pct": paper.mbu_pct,
        "mfu_pct": paper.mfu_pct,
        "mbu_si_pct": si.mbu_pct,
        "mfu_si_pct": si.mfu_pct,
        "mbu_calibrated_pct": calibrated.mbu_pct if calibrated is not None else None,
        "mfu_calibrated_pct": calibrated.mfu_pct if calibrated is not None else None,
        "bound_time_us": paper.bound_time_us,
        "bound_by": paper.bound_by,
        "roofline_efficiency_pct": paper.roofline_efficiency_pct,
        "above_roof": bool(paper.above_roof or (calibrated is not None and calibrated.above_roof)),
    })
    notes = []
    for m in (paper, calibrated):
        if m is not None and m.above_roof and m.above_roof_reason:
            notes.append(f"above the roof ({m.above_roof_reason}): a measurement or accounting error, not a result")
    return cols, notes


def _median(xs: Sequence[float] | None) -> float | None:
    if not xs:
        return None
    import numpy as np

    return float(np.median(np.asarray(xs, dtype=float)))


def timing_columns(*, source: str, samples_us: Sequence[float], summary: Any, wall: Any,
                   device_samples_us: Sequence[float] | None, compile_time_s: float,
                   capture_path: str | None) -> TimingColumns:
    return TimingColumns(**{
        "timing_source": source,
        "compile_time_s": compile_time_s,
        "loops_per_sample": wall.loops_per_sample,
        "samples_us": list(samples_us),
        "wall_samples_us": list(wall.samples_us),
        "device_samples_us": list(device_samples_us) if device_samples_us else None,
        "latency_us": summary.median_us,
        "latency_iqr_us": summary.iqr_us,
        "latency_ci_low_us": summary.ci_low_us,
        "latency_ci_high_us": summary.ci_high_us,
        "wall_latency_us": wall.summary.median_us,
        "device_latency_us": _median(device_samples_us),
        "per_device_latency_us": [summary.median_us] if source == "device" else None,
        "capture_path": capture_path,
    })


def mesh_columns(acc: Any) -> MeshColumns:
    """The multi-device columns of a sharded call from its
    :class:`rpa_bench.parallel.accounting.MeshAccounting`.

    Per-device costs and the per-chip breakdown are always recorded; per-device times
    (and the chips' times and utilisation from them) only when they were measured per
    device: with wall timing each chip's time is the step's wall time.
    """
    return MeshColumns(**{
        "num_devices": acc.num_devices,
        "mesh": acc.mesh,
        "per_device_latency_us": list(acc.time_us) if acc.timing_source == "device" else None,
        "load_imbalance": acc.load_imbalance,
        "modelled_load_imbalance": acc.modelled_imbalance,
        "per_device_hbm_bytes": list(acc.hbm_bytes),
        "per_device_flops": list(acc.flops),
        "per_chip": per_chip_json(acc.per_chip),
    })


def per_chip_json(chips: Sequence[Any]) -> str:
    """The ``per_chip`` column: one JSON object per chip, SI utilisation against the whole
    chip's peaks (``mbu_si_pct`` / ``mfu_si_pct``)."""
    return json.dumps([{"chip": c.chip, "device_ids": list(c.device_ids), "hbm_bytes": c.hbm_bytes,
                        "flops": c.flops, "latency_us": c.time_us, "mbu_si_pct": c.mbu_pct,
                        "mfu_si_pct": c.mfu_pct} for c in chips], separators=(",", ":"))
