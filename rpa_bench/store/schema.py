"""The run store's schema: one contract between the run pipeline and the reports.

A run folder ``results/<run>/`` holds:
- ``manifest.json``: resolved config, environment, provenance (see MANIFEST_KEYS);
- ``measurements.parquet``: one row per (workload point, kernel, variant) measurement
  (see COLUMNS); failures are rows with a status, never missing rows;
- ``captures/``: profiler captures (xplane.pb files), openable in xprof / TensorBoard;
- ``workloads/<workload>/``: per-step simulation summaries of trace workloads (parquet)
  so reports can redraw batch-shape plots without re-simulating.

Bump SCHEMA_VERSION on any incompatible change; readers list what an older run lacks.
Columns added compatibly, without a bump, are listed in OPTIONAL_COLUMNS: runs stored
before them lack them, and readers take them as null without calling the run incomplete.
"""

from __future__ import annotations

from rpa_bench.status import STATUSES as _STATUSES

SCHEMA_VERSION = 1

STATUSES = _STATUSES  # the row statuses: rpa_bench.status.Status

# column name -> (dtype, meaning). Units are in the names.
COLUMNS: dict[str, tuple[str, str]] = {
    "run_id": ("string", "run folder name"),
    "experiment": ("string", "experiment name (e.g. paper_decode)"),
    "scale": ("string", "scale preset: full (the paper's shapes) | cpu_smoke (reduced shapes, not the paper's)"),
    "workload": ("string", "workload name"),
    "workload_kind": ("string", "paper_decode | paper_prefill | synthetic | trace | batch_spec"),
    "point_id": ("string", "stable id of the workload point, e.g. ctx=8192 or step=12345"),
    "workload_hash": ("string", "content hash of the batch + model + attention config"),
    "phase": ("string", "decode | prefill | mixed"),
    "num_seqs": ("int64", "sequences in the batch"),
    "num_tokens": ("int64", "query tokens in the batch"),
    "max_kv_len": ("int64", "longest kv_len"),
    "context_len": ("Int64", "paper decode context c (kv_len - 1), else null"),
    "seq_len": ("Int64", "paper prefill sequence length s, else null"),
    "causal": ("bool", "causal mask"),
    "sliding_window": ("Int64", "causal sliding window (keys a query sees), null for none"),
    "weight": ("float64", "share of the workload this point represents: 1/points for a sweep (each point "
                          "equal), the sampled step's share of the simulated trace time for traces; time-weighted "
                          "trace metrics use weight x latency"),
    "batch_spec": ("string", "batch-spec string of the batch when short, else null"),
    "model": ("string", "model config name"),
    "num_q_heads": ("int64", "query heads of the model (per device shard)"),
    "num_kv_heads": ("int64", "KV heads of the model (per device shard)"),
    "head_dim": ("int64", "head dimension"),
    "dtype": ("string", "query/output dtype"),
    "kv_dtype": ("string", "KV cache dtype"),
    "page_size": ("int64", "tokens per KV-cache page"),
    "kernel": ("string", "the run's label of the kernel entry (default: its backend name)"),
    "backend": ("string", "backend name (rpa_v3, rpa_v2, jax_rpa, reference, ...)"),
    "compiler_options": ("string", "JSON: per-executable XLA compiler options the programs were compiled with, "
                                   "null when none"),
    "kernel_source": ("string", "package version or source path[@ref]"),
    "kernel_commit": ("string", "git commit of the kernel source, null for a release"),
    "variant": ("string", "incl_prep | excl_prep"),
    "status": ("string", "ok | incorrect | failed | skipped | compiled (run.compile_only: compiled for a TPU, not run)"),
    "error": ("string", "error message / skip reason, null when ok"),
    "max_abs_err": ("float64", "max abs error vs reference on this batch"),
    "tolerance": ("float64", "tolerance used for the correctness gate"),
    "interpret": ("bool", "ran in Pallas interpret mode (timings are NOT kernel performance)"),
    "timing_source": ("string", "device | wall (device: profiler device plane)"),
    "compile_time_s": ("float64", "first call (compile) time, measured apart"),
    "loops_per_sample": ("int64", "kernel calls per timed sample (loop calibration)"),
    "samples_us": ("object", "list[float]: raw per-call latency samples (us) of the timing source"),
    "wall_samples_us": ("object", "list[float]: raw per-call wall-clock samples (us)"),
    "sample_order": ("object", "list[float] or null: interleaved runs: each wall sample's position in the point's "
                               "sampling sequence (sample i of every kernel entry comes from round i: paired)"),
    "device_samples_us": ("object", "list[float] or null: per-call device time samples from the profiler"),
    "latency_us": ("float64", "median per-call latency of the timing source"),
    "latency_iqr_us": ("float64", "interquartile range"),
    "latency_ci_low_us": ("float64", "bootstrap 95% CI of the median, low"),
    "latency_ci_high_us": ("float64", "bootstrap 95% CI of the median, high"),
    "wall_latency_us": ("float64", "median wall-clock latency"),
    "device_latency_us": ("float64", "median device latency from the profiler, null if none"),
    "warnings": ("object", "list[str]: instability / outlier / accounting warnings"),
    "hbm_bytes": ("int64", "analytic HBM bytes of the call"),
    "flops": ("int64", "analytic FLOPs used for the metric (see flops_count)"),
    "flops_count": ("string", "noncausal | causal_executed | causal_useful"),
    "arithmetic_intensity": ("float64", "flops / hbm_bytes"),
    "convention": ("string", "paper | si: the convention of throughput/MBU/MFU"),
    "throughput_gb_per_s": ("float64", "bytes / 1e9 / s"),
    "throughput_gib_per_s": ("float64", "bytes / 2**30 / s"),
    "tflops": ("float64", "a rate: flops / 1e12 / latency (TFLOP/s), not a count"),
    "mbu_pct": ("float64", "memory-bandwidth utilisation (decode, mixed), convention above"),
    "mfu_pct": ("float64", "FLOP utilisation (prefill, mixed), convention above"),
    "mbu_si_pct": ("float64", "MBU in the si convention against the datasheet"),
    "mfu_si_pct": ("float64", "MFU in the si convention against the datasheet"),
    "mbu_calibrated_pct": ("float64", "MBU (si) against the calibrated copy bandwidth, null if none"),
    "mfu_calibrated_pct": ("float64", "MFU (si) against the calibrated matmul FLOP/s, null if none"),
    "bound_time_us": ("float64", "roofline lower-bound time on the run's device"),
    "bound_by": ("string", "memory | compute"),
    "roofline_efficiency_pct": ("float64", "bound_time / latency * 100"),
    "above_roof": ("bool", "metric above 100% of a roof: a measurement or accounting error"),
    "device": ("string", "device spec name (tpu7x, h100_sxm, cpu, ...)"),
    "device_kind": ("string", "jax device_kind string"),
    "num_devices": ("int64", "devices the kernel ran on"),
    "mesh": ("string", "mesh shape, e.g. data=2,model=1"),
    "per_device_latency_us": ("object", "list[float] or null: per-device median device time"),
    "load_imbalance": ("float64", "max device time / mean device time, null for one device"),
    "modelled_load_imbalance": ("float64", "max / mean of per-device roofline bound times (how even the split is), "
                                           "null for one device"),
    "per_device_hbm_bytes": ("object", "list[float] or null: analytic HBM bytes of each device's share, mesh order "
                                       "(they sum to hbm_bytes)"),
    "per_device_flops": ("object", "list[float] or null: analytic FLOPs of each device's share, mesh order "
                                   "(they sum to flops)"),
    "per_chip": ("string", "JSON list or null: per chip {chip, device_ids, hbm_bytes, flops, latency_us (slowest of "
                           "its devices), mbu_si_pct, mfu_si_pct (SI, against the whole chip's peaks)}"),
    "figures_per": ("string", "device | chip: whose peaks mbu/mfu columns divide by. chip: the devices used make up "
                              "whole chips; device: part of a chip (one TPU7x TensorCore reaches at most 50% of "
                              "its chip's peak); null where a chip is one device (CPU, GPU, single-core TPUs)"),
    "compile_target": ("string", "run.compile_only: the TPU generation compiled for, else null"),
    "compile_status": ("string", "run.compile_only: ok | vmem_oom | hbm_oom | failed, else null"),
    "vmem_used_bytes": ("Int64", "run.compile_only: scoped VMEM of the largest Mosaic kernel (per TensorCore)"),
    "vmem_capacity_bytes": ("Int64", "run.compile_only: VMEM per TensorCore of the target"),
    "vmem_headroom": ("float64", "run.compile_only: 1 - vmem_used_bytes / vmem_capacity_bytes"),
    "compiled_hbm_bytes": ("Int64", "run.compile_only: arguments + outputs + temps + code of the compiled program "
                                    "(per device)"),
    "compile_facts": ("string", "run.compile_only: JSON {vmem_used_bytes per Mosaic kernel, hbm (memory_analysis), "
                                "block_sizes, vmem_limit_bytes}"),
    "phase_seconds": ("string", "JSON: wall seconds per phase spent on this row: {variant: its own (warm-up, "
                                "calibration, timed samples, capture, capture parse, statistics), kernel: the "
                                "(point, kernel)'s shared ones (compile of both variants, check), the same on both "
                                "rows}; the run's totals are in the manifest's phases"),
    "capture_path": ("string", "profiler capture relative to the run folder, null if none"),
    "seed": ("int64", "the run's seed (inputs are generated from it)"),
    "timestamp": ("string", "ISO-8601 UTC time of the measurement"),
}

# added to schema v1 later (multi-device accounting): an older v1 run lacks them (null)
OPTIONAL_COLUMNS = ("modelled_load_imbalance", "per_device_hbm_bytes", "per_device_flops", "per_chip", "figures_per",
                    # offline TPU compilation (run.compile_only)
                    "compile_target", "compile_status", "vmem_used_bytes", "vmem_capacity_bytes", "vmem_headroom",
                    "compiled_hbm_bytes", "compile_facts",
                    # kernel entries with labels, per-executable compiler options
                    "backend", "compiler_options",
                    # per-point sliding windows (sliding_window workloads)
                    "sliding_window",
                    # interleaved sampling of several kernel entries (timing.interleave)
                    "sample_order",
                    # per-phase wall time (where a run's time goes)
                    "phase_seconds")

MANIFEST_KEYS = (
    "schema_version",
    "run_id",
    "created_utc",
    "command",  # argv
    "config",  # resolved config (dict)
    "environment",  # python, jax, jaxlib, libtpu, tpu-inference versions; host; platform; device kind/count
    "git",  # rpa_bench commit, dirty flag
    "kernels",  # per kernel: provenance (source, version, commit, dirty, file sha256)
    "workloads",  # per workload: kind, sources {file: sha256}, seed, summary (traces: sample coverage)
    "device_spec",  # the roofline DeviceSpec used, with sources
    "calibration",  # measured ceilings used, or null
    "status",  # running | complete | interrupted | failed
)
