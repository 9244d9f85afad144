"""The one typed row of the run store: every column of ``measurements.parquet``.

:class:`Row` declares each column once (name, dtype, meaning, and whether it was added
to schema v1 after its first release); :data:`rpa_bench.store.schema.COLUMNS` and
``docs/columns.md`` are generated from it (``python -m rpa_bench.store.row`` prints the
page). Rows are built only by :func:`rpa_bench.store.rows.build_row` from typed parts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

DTYPES = ("string", "int64", "Int64", "float64", "bool", "object")


def col(dtype: str, meaning: str, *, added: bool = False) -> Any:
    """A column: its parquet/pandas dtype, what it means (units in the name), and whether an
    older v1 run may lack it (read as null)."""
    assert dtype in DTYPES, dtype
    return dataclasses.field(default=None, metadata={"dtype": dtype, "meaning": meaning, "added": added})


@dataclasses.dataclass(frozen=True)
class Row:
    """One (workload point, kernel entry, variant) measurement; failures are rows with a status."""

    run_id: str | None = col('string', 'run folder name')
    experiment: str | None = col('string', 'experiment name (e.g. paper_decode)')
    scale: str | None = col('string', "scale preset: full (the paper's shapes) | cpu_smoke (reduced shapes, not the paper's)")
    workload: str | None = col('string', 'workload name')
    workload_kind: str | None = col('string', 'paper_decode | paper_prefill | synthetic | trace | batch_spec')
    point_id: str | None = col('string', 'stable id of the workload point, e.g. ctx=8192 or step=12345')
    workload_hash: str | None = col('string', 'content hash of the batch + model + attention config')
    phase: str | None = col('string', 'decode | prefill | mixed')
    num_seqs: int | None = col('int64', 'sequences in the batch')
    num_tokens: int | None = col('int64', 'query tokens in the batch')
    max_kv_len: int | None = col('int64', 'longest kv_len')
    context_len: int | None = col('Int64', 'paper decode context c (kv_len - 1), else null')
    seq_len: int | None = col('Int64', 'paper prefill sequence length s, else null')
    causal: bool | None = col('bool', 'causal mask')
    sliding_window: int | None = col('Int64', 'causal sliding window (keys a query sees), null for none', added=True)
    weight: float | None = col('float64', "share of the workload this point represents: 1/points for a sweep (each point equal), the sampled step's share of the simulated trace time for traces; time-weighted trace metrics use weight x latency")
    batch_spec: str | None = col('string', 'batch-spec string of the batch when short, else null')
    model: str | None = col('string', 'model config name')
    num_q_heads: int | None = col('int64', 'query heads of the model (per device shard)')
    num_kv_heads: int | None = col('int64', 'KV heads of the model (per device shard)')
    head_dim: int | None = col('int64', 'head dimension')
    dtype: str | None = col('string', 'query/output dtype')
    kv_dtype: str | None = col('string', 'KV cache dtype')
    page_size: int | None = col('int64', 'tokens per KV-cache page')
    kernel: str | None = col('string', "the run's label of the kernel entry (default: its backend name)")
    backend: str | None = col('string', 'backend name (rpa_v3, rpa_v2, jax_rpa, reference, ...)', added=True)
    compiler_options: str | None = col('string', 'JSON: per-executable XLA compiler options the programs were compiled with, null when none', added=True)
    block_sizes: str | None = col('string', 'JSON: the block sizes the kernel was built with (rpa_v3: per case [bq, bkv] tokens; rpa_v2: pages/queries per block; reference: block_bytes), null when the backend has none', added=True)
    block_sizes_source: str | None = col('string', 'JSON or text: where the block sizes came from (config | env | heuristic:<generation> | tuned table), per case where the kernel has cases', added=True)
    kernel_source: str | None = col('string', 'package version or source path[@ref]')
    kernel_commit: str | None = col('string', 'git commit of the kernel source, null for a release')
    variant: str | None = col('string', 'incl_prep | excl_prep')
    status: str | None = col('string', 'ok | incorrect | failed | skipped | compiled (run.compile_only: compiled for a TPU, not run)')
    error: str | None = col('string', 'error message / skip reason, null when ok')
    max_abs_err: float | None = col('float64', 'max abs error vs reference on this batch')
    tolerance: float | None = col('float64', 'tolerance used for the correctness gate')
    interpret: bool | None = col('bool', 'ran in Pallas interpret mode (timings are NOT kernel performance)')
    timing_source: str | None = col('string', 'device | wall (device: profiler device plane)')
    compile_time_s: float | None = col('float64', 'first call (compile) time, measured apart')
    loops_per_sample: int | None = col('int64', 'kernel calls per timed sample (loop calibration)')
    samples_us: Any = col('object', 'list[float]: raw per-call latency samples (us) of the timing source')
    wall_samples_us: Any = col('object', 'list[float]: raw per-call wall-clock samples (us)')
    sample_order: Any = col('object', "list[float] or null: interleaved runs: each wall sample's position in the point's sampling sequence (sample i of every kernel entry comes from round i: paired)", added=True)
    device_samples_us: Any = col('object', 'list[float] or null: per-call device time samples from the profiler')
    latency_us: float | None = col('float64', 'median per-call latency of the timing source')
    latency_iqr_us: float | None = col('float64', 'interquartile range')
    latency_ci_low_us: float | None = col('float64', 'bootstrap 95% CI of the median, low')
    latency_ci_high_us: float | None = col('float64', 'bootstrap 95% CI of the median, high')
    wall_latency_us: float | None = col('float64', 'median wall-clock latency')
    device_latency_us: float | None = col('float64', 'median device latency from the profiler, null if none')
    warnings: Any = col('object', 'list[str]: instability / outlier / accounting warnings')
    hbm_bytes: int | None = col('int64', 'analytic HBM bytes of the call')
    flops: int | None = col('int64', 'analytic FLOPs used for the metric (see flops_count)')
    flops_count: str | None = col('string', 'noncausal | causal_executed | causal_useful')
    arithmetic_intensity: float | None = col('float64', 'flops / hbm_bytes')
    convention: str | None = col('string', 'paper | si: the convention of throughput/MBU/MFU')
    throughput_gb_per_s: float | None = col('float64', 'bytes / 1e9 / s')
    throughput_gib_per_s: float | None = col('float64', 'bytes / 2**30 / s')
    tflops: float | None = col('float64', 'a rate: flops / 1e12 / latency (TFLOP/s), not a count')
    mbu_pct: float | None = col('float64', 'memory-bandwidth utilisation (decode, mixed), convention above')
    mfu_pct: float | None = col('float64', 'FLOP utilisation (prefill, mixed), convention above')
    mbu_si_pct: float | None = col('float64', 'MBU in the si convention against the datasheet')
    mfu_si_pct: float | None = col('float64', 'MFU in the si convention against the datasheet')
    mbu_calibrated_pct: float | None = col('float64', 'MBU (si) against the calibrated copy bandwidth, null if none')
    mfu_calibrated_pct: float | None = col('float64', 'MFU (si) against the calibrated matmul FLOP/s, null if none')
    bound_time_us: float | None = col('float64', "roofline lower-bound time on the run's device")
    bound_by: str | None = col('string', 'memory | compute')
    roofline_efficiency_pct: float | None = col('float64', 'bound_time / latency * 100')
    above_roof: bool | None = col('bool', 'metric above 100% of a roof: a measurement or accounting error')
    device: str | None = col('string', 'device spec name (tpu7x, h100_sxm, cpu, ...)')
    device_kind: str | None = col('string', 'jax device_kind string')
    num_devices: int | None = col('int64', 'devices the kernel ran on')
    mesh: str | None = col('string', 'mesh shape, e.g. data=2,model=1')
    per_device_latency_us: Any = col('object', 'list[float] or null: per-device median device time')
    load_imbalance: float | None = col('float64', 'max device time / mean device time, null for one device')
    modelled_load_imbalance: float | None = col('float64', 'max / mean of per-device roofline bound times (how even the split is), null for one device', added=True)
    per_device_hbm_bytes: Any = col('object', "list[float] or null: analytic HBM bytes of each device's share, mesh order (they sum to hbm_bytes)", added=True)
    per_device_flops: Any = col('object', "list[float] or null: analytic FLOPs of each device's share, mesh order (they sum to flops)", added=True)
    per_chip: str | None = col('string', "JSON list or null: per chip {chip, device_ids, hbm_bytes, flops, latency_us (slowest of its devices), mbu_si_pct, mfu_si_pct (SI, against the whole chip's peaks)}", added=True)
    figures_per: str | None = col('string', "device | chip: whose peaks mbu/mfu columns divide by. chip: the devices used make up whole chips; device: part of a chip (one TPU7x TensorCore reaches at most 50% of its chip's peak); null where a chip is one device (CPU, GPU, single-core TPUs)", added=True)
    compile_target: str | None = col('string', 'run.compile_only: the TPU generation compiled for, else null', added=True)
    compile_status: str | None = col('string', 'run.compile_only: ok | vmem_oom | hbm_oom | failed, else null', added=True)
    vmem_used_bytes: int | None = col('Int64', 'run.compile_only: scoped VMEM of the largest Mosaic kernel (per TensorCore)', added=True)
    vmem_capacity_bytes: int | None = col('Int64', 'run.compile_only: VMEM per TensorCore of the target', added=True)
    vmem_headroom: float | None = col('float64', 'run.compile_only: 1 - vmem_used_bytes / vmem_capacity_bytes', added=True)
    compiled_hbm_bytes: int | None = col('Int64', 'run.compile_only: arguments + outputs + temps + code of the compiled program (per device)', added=True)
    compile_facts: str | None = col('string', 'run.compile_only: JSON {vmem_used_bytes per Mosaic kernel, hbm (memory_analysis), block_sizes, vmem_limit_bytes}', added=True)
    moved_hbm_bytes: int | None = col('Int64', "HBM bytes the kernel's own schedule moves for this call with its block sizes (traffic model: KV re-read per query block, whole blocks, padding, new-KV writes), null where the kernel has no traffic model", added=True)
    observed_hbm_bytes: int | None = col('Int64', "HBM bytes the real kernel's DMAs moved, counted in Pallas interpret mode (rpa-bench traffic traffic.observe=true), null when not observed", added=True)
    refetch_factor: float | None = col('float64', 'moved_hbm_bytes / hbm_bytes: how many times the analytic minimum the kernel moves', added=True)
    traffic_ceiling_pct: float | None = col('float64', 'hbm_bytes / moved_hbm_bytes x 100: the MBU (same bandwidth) the kernel cannot exceed with these block sizes, even at full bandwidth', added=True)
    traffic: str | None = col('string', 'JSON: the traffic by operand (kv_cache, new_kv, q, output, kv_cache_write, metadata: bytes and DMAs), iterations and kernel calls', added=True)
    phase_seconds: str | None = col('string', "JSON: wall seconds per phase spent on this row: {variant: its own (warm-up, calibration, timed samples, capture, capture parse, statistics), kernel: the (point, kernel)'s shared ones (compile of both variants, check), the same on both rows}; the run's totals are in the manifest's phases", added=True)
    capture_path: str | None = col('string', 'profiler capture relative to the run folder, null if none')
    seed: int | None = col('int64', "the run's seed (inputs are generated from it)")
    timestamp: str | None = col('string', 'ISO-8601 UTC time of the measurement')

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


FIELDS = dataclasses.fields(Row)
COLUMNS: dict[str, tuple[str, str]] = {f.name: (f.metadata["dtype"], f.metadata["meaning"]) for f in FIELDS}
ADDED_COLUMNS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.metadata["added"])


def columns_markdown() -> str:
    """The column reference page (``docs/columns.md``), generated from :class:`Row`."""
    lines = ["# `measurements.parquet` columns", "",
             "One row per (workload point, kernel entry, variant). The same descriptions are in the parquet",
             "schema itself: `pyarrow.parquet.read_schema(path).field(name).metadata[b\"description\"]`.",
             "Columns marked *optional* were added after schema v1; older runs read them as null.",
             "Generated from `rpa_bench/store/row.py` (`python -m rpa_bench.store.row > docs/columns.md`).", "",
             "| column | type | meaning |", "|---|---|---|"]
    for f in FIELDS:
        meaning = f.metadata["meaning"].replace(" | ", " / ")
        opt = " *(optional)*" if f.metadata["added"] else ""
        lines.append(f"| `{f.name}`{opt} | {f.metadata['dtype']} | {meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(columns_markdown(), end="")
