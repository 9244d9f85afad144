"""A synthetic, schema-conforming run folder: to preview reports and to test them.

Rows are plausible, not measured: latencies follow a simple roofline model of a made-up
CPU-like device with log-normal noise. The manifest says so (``synthetic: true``) and the
report shows it in the provenance. It covers a scaled-down paper decode sweep, both
prefill sweeps, a weighted trace workload with per-step tables, every status, and
interpret-mode rows of an RPA kernel next to the reference kernel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import numpy as np
import pandas as pd

from rpa_bench.store.run_store import RunStore
from rpa_bench.store.schema import COLUMNS, SCHEMA_VERSION

SYNTHETIC_DEVICE = {
    "name": "cpu",
    "hbm_bw_bytes_per_s": 40e9,
    "peak_bf16_flops_per_s": 0.8e12,
    "matrix_unit_width": None,
    "source": "synthetic example device (not a datasheet)",
}
HEADS_Q, HEADS_KV, HEAD_DIM, PAGE = 32, 8, 128, 256
DTYPE_BYTES = 2


@dataclasses.dataclass(frozen=True)
class SyntheticRunSpec:
    """What to put in a synthetic run. ``slowdown`` multiplies every latency."""

    run_id: str = "synthetic"
    seed: int = 0
    slowdown: float = 1.0
    num_samples: int = 15
    decode_context_lens: tuple[int, ...] = (512, 1024, 2048, 4096)
    prefill_seq_lens: tuple[int, ...] = (512, 1024, 2048, 4096)
    decode_num_seqs: int = 8
    include_prefill: bool = True
    include_trace: bool = True
    status: str = "complete"
    num_devices: int = 1  # > 1: every row sharded over mesh data=num_devices,model=1
    devices_per_chip: int = 1  # 2: a TPU7x-like chip of two devices

    @property
    def mesh(self) -> str:
        return f"data={self.num_devices},model=1"

    @property
    def figures_per(self) -> str:
        return "chip" if self.num_devices % self.devices_per_chip == 0 else "device"


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _decode_cost(n: int, c: int) -> tuple[int, int]:
    hbm = n * HEAD_DIM * ((c + 1) * 2 * HEADS_KV + 2 * HEADS_Q) * DTYPE_BYTES
    flops = 4 * n * (c + 1) * HEADS_Q * HEAD_DIM
    return hbm, flops


def _prefill_cost(s: int, causal: bool) -> tuple[int, int]:
    hbm = s * HEAD_DIM * (2 * HEADS_Q + 4 * HEADS_KV) * DTYPE_BYTES
    flops = 2 * s * (s + min(1024, s)) * HEADS_Q * HEAD_DIM if causal else 4 * s * s * HEADS_Q * HEAD_DIM
    return hbm, flops


def _metrics(hbm: int, flops: int, latency_us: float, phase: str) -> dict:
    bw, peak = SYNTHETIC_DEVICE["hbm_bw_bytes_per_s"], SYNTHETIC_DEVICE["peak_bf16_flops_per_s"]
    seconds = latency_us * 1e-6
    bound_s = max(hbm / bw, flops / peak)
    gib_per_s = hbm / 2**30 / seconds
    tflops = flops / 1e12 / seconds
    mbu = gib_per_s / (bw / 1e9) * 100 if phase != "prefill" else None
    mfu = tflops / (peak / 1e12 * 0.5) * 100 if phase != "decode" else None
    return {
        "throughput_gb_per_s": hbm / 1e9 / seconds,
        "throughput_gib_per_s": gib_per_s,
        "tflops": tflops,
        "mbu_pct": mbu,
        "mfu_pct": mfu,
        "mbu_si_pct": hbm / seconds / bw * 100 if phase != "prefill" else None,
        "mfu_si_pct": flops / seconds / peak * 100 if phase != "decode" else None,
        "mbu_calibrated_pct": hbm / seconds / (0.8 * bw) * 100 if phase != "prefill" else None,
        "mfu_calibrated_pct": flops / seconds / (0.7 * peak) * 100 if phase != "decode" else None,
        "bound_time_us": bound_s * 1e6,
        "bound_by": "memory" if hbm / bw >= flops / peak else "compute",
        "roofline_efficiency_pct": bound_s * 1e6 / latency_us * 100,
        "above_roof": bound_s * 1e6 > latency_us,
        "arithmetic_intensity": flops / hbm,
    }


class _Rows:
    def __init__(self, spec: SyntheticRunSpec):
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.rows: list[dict] = []

    def add(self, *, experiment, workload, kind, point_id, phase, num_seqs, num_tokens, max_kv_len,
            context_len=None, seq_len=None, causal=True, weight=1.0, kernel="reference",
            variant="excl_prep", status="ok", interpret=False, hbm=0, flops=0, flops_count="noncausal",
            error=None) -> None:
        spec = self.spec
        bw, peak = SYNTHETIC_DEVICE["hbm_bw_bytes_per_s"], SYNTHETIC_DEVICE["peak_bf16_flops_per_s"]
        model_us = max(hbm / (0.55 * bw), flops / (0.35 * peak)) * 1e6 + 30.0
        if interpret:
            model_us *= 400.0  # the interpreter is slow and says nothing about the kernel
        model_us *= spec.slowdown * (1.15 if variant == "incl_prep" else 1.0)
        row = {name: None for name in COLUMNS}
        row.update(
            run_id=spec.run_id, experiment=experiment, workload=workload, workload_kind=kind,
            point_id=point_id, workload_hash=_hash(workload, point_id, num_seqs, max_kv_len, causal),
            phase=phase, num_seqs=num_seqs, num_tokens=num_tokens, max_kv_len=max_kv_len,
            context_len=context_len, seq_len=seq_len, causal=causal, weight=weight,
            batch_spec=None, model="llama3_8b", num_q_heads=HEADS_Q, num_kv_heads=HEADS_KV,
            head_dim=HEAD_DIM, dtype="bfloat16", kv_dtype="bfloat16", page_size=PAGE, kernel=kernel,
            kernel_source="tpu-inference==0.32.0" if kernel != "reference" else "rpa_bench.kernels.reference",
            kernel_commit=None, variant=variant, status=status, error=error, interpret=interpret,
            timing_source="wall", device="cpu", device_kind="cpu", num_devices=spec.num_devices, mesh=spec.mesh,
            figures_per=spec.figures_per,
            seed=spec.seed, timestamp="2026-01-01T00:00:00Z", warnings=[], hbm_bytes=hbm, flops=flops,
            flops_count=flops_count, convention="paper", loops_per_sample=1,
            tolerance=2e-2, max_abs_err=None, scale="cpu_smoke",
        )
        if status in ("ok", "incorrect"):
            samples = model_us * self.rng.lognormal(0.0, 0.03, spec.num_samples)
            median = float(np.median(samples))
            q1, q3 = np.percentile(samples, [25, 75])
            row.update(
                samples_us=samples.tolist(), wall_samples_us=samples.tolist(), device_samples_us=None,
                latency_us=median, latency_iqr_us=float(q3 - q1), latency_ci_low_us=median * 0.98,
                latency_ci_high_us=median * 1.02, wall_latency_us=median, compile_time_s=1.5,
                max_abs_err=3e-3 if status == "ok" else 0.4,
                **_metrics(hbm, flops, median, phase),
            )
            if status == "incorrect":
                row["error"] = "max_abs_err=0.4 above tolerance=0.02"
            if status == "ok" and not interpret and spec.num_devices > 1:
                row.update(_mesh_columns(spec, hbm, flops, median))
        self.rows.append(row)


def _mesh_columns(spec: SyntheticRunSpec, hbm: int, flops: int, step_us: float) -> dict:
    """Per-device and per-chip columns of a sharded row: the last device carries a quarter
    more work than the others, so it is the slowest and sets the step time."""
    n, per_chip = spec.num_devices, spec.devices_per_chip
    load = [1.25 if i == n - 1 else 1.0 for i in range(n)]
    share = [x / sum(load) for x in load]
    times = [step_us * x / max(load) for x in load]
    dev_bytes, dev_flops = [hbm * x for x in share], [flops * x for x in share]
    # the manifest's device spec covers all the devices used, as a run's roofline does
    bw, peak = SYNTHETIC_DEVICE["hbm_bw_bytes_per_s"] / n, SYNTHETIC_DEVICE["peak_bf16_flops_per_s"] / n
    chips = []
    for c in range(-(-n // per_chip)):
        ids = list(range(c * per_chip, min(n, (c + 1) * per_chip)))
        t = max(times[i] for i in ids)
        cb, cf = sum(dev_bytes[i] for i in ids), sum(dev_flops[i] for i in ids)
        chips.append({"chip": f"chip({c},0,0)", "device_ids": ids, "hbm_bytes": int(cb), "flops": int(cf),
                      "latency_us": t, "mbu_si_pct": cb / (t * 1e-6) / (bw * per_chip) * 100,
                      "mfu_si_pct": cf / (t * 1e-6) / (peak * per_chip) * 100})
    return {"timing_source": "device", "per_device_latency_us": times, "load_imbalance": max(times) / (sum(times) / n),
            "modelled_load_imbalance": max(load) / (sum(load) / n), "per_device_hbm_bytes": dev_bytes,
            "per_device_flops": dev_flops, "per_chip": json.dumps(chips)}


def _decode_rows(rows: _Rows) -> None:
    n = rows.spec.decode_num_seqs
    for c in rows.spec.decode_context_lens:
        hbm, flops = _decode_cost(n, c)
        common = dict(experiment="paper_decode", workload="paper_decode", kind="paper_decode",
                      point_id=f"ctx={c}", phase="decode", num_seqs=n, num_tokens=n, max_kv_len=c + 1,
                      context_len=c, hbm=hbm, flops=flops)
        for variant in ("excl_prep", "incl_prep"):
            rows.add(**common, variant=variant)
        status = "incorrect" if c == rows.spec.decode_context_lens[-1] else "ok"
        rows.add(**common, kernel="rpa_v3", interpret=True, status=status)


def _prefill_rows(rows: _Rows) -> None:
    for causal, name in ((False, "paper_prefill_noncausal"), (True, "paper_prefill_causal")):
        for s in rows.spec.prefill_seq_lens:
            hbm, flops = _prefill_cost(s, causal)
            common = dict(experiment=name, workload=name, kind="paper_prefill", point_id=f"seq={s}",
                          phase="prefill", num_seqs=1, num_tokens=s, max_kv_len=s, seq_len=s, causal=causal,
                          hbm=hbm, flops=flops, flops_count="causal_executed" if causal else "noncausal")
            rows.add(**common)
            rows.add(**common, variant="incl_prep")
            if s == rows.spec.prefill_seq_lens[-1]:
                rows.add(**common, kernel="rpa_v3", interpret=True, status="failed",
                         error="RESOURCE_EXHAUSTED: interpreter out of memory")
            else:
                rows.add(**common, kernel="rpa_v3", interpret=True)
        rows.add(experiment=name, workload=name, kind="paper_prefill", point_id="seq=32768", phase="prefill",
                 num_seqs=1, num_tokens=32768, max_kv_len=32768, seq_len=32768, causal=causal,
                 kernel="rpa_v2", status="skipped", error="scale=cpu_smoke skips seq_len > 4096")


def _trace_rows(rows: _Rows) -> pd.DataFrame:
    rng = np.random.default_rng(12345)  # the same trace sample in every synthetic run
    steps = pd.DataFrame({"step": np.arange(400)})
    steps["num_decode"] = np.clip(np.round(20 + 10 * np.sin(steps.step / 40) + rng.normal(0, 2, 400)), 1, None)
    steps["num_prefill"] = (rng.random(400) < 0.3).astype(int) * rng.integers(1, 3, 400)
    steps["num_seqs"] = steps.num_decode + steps.num_prefill
    steps["num_tokens"] = steps.num_decode + steps.num_prefill * rng.integers(64, 512, 400)
    steps["max_kv_len"] = rng.integers(600, 4000, 400)
    steps["sampled"] = False
    picks = np.linspace(5, 395, 8).astype(int)
    steps.loc[picks, "sampled"] = True
    for i, step in enumerate(picks):
        r = steps.loc[step]
        n, t, kv = int(r.num_seqs), int(r.num_tokens), int(r.max_kv_len)
        phase = "decode" if r.num_prefill == 0 else "mixed"
        hbm, _ = _decode_cost(n, kv // 2)
        flops = 4 * t * (kv // 2) * HEADS_Q * HEAD_DIM
        rows.add(experiment="trace_azure_conv", workload="azure_conv_sample", kind="trace",
                 point_id=f"step={step}", phase=phase, num_seqs=n, num_tokens=t, max_kv_len=kv,
                 weight=[0.2, 0.1, 0.15, 0.05, 0.1, 0.2, 0.1, 0.1][i], hbm=hbm, flops=flops,
                 flops_count="causal_useful")
    return steps


def write_synthetic_run(path: str | pathlib.Path, spec: SyntheticRunSpec = SyntheticRunSpec()) -> pathlib.Path:
    """Write manifest.json, measurements.parquet and workloads/ tables under ``path``."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rows = _Rows(spec)
    _decode_rows(rows)
    workloads = {"paper_decode": {"kind": "paper_decode", "sources": {}, "seed": spec.seed,
                                  "summary": {"points": len(spec.decode_context_lens)}}}
    if spec.include_prefill:
        _prefill_rows(rows)
        for name in ("paper_prefill_noncausal", "paper_prefill_causal"):
            workloads[name] = {"kind": "paper_prefill", "sources": {}, "seed": spec.seed,
                               "summary": {"points": len(spec.prefill_seq_lens)}}
    if spec.include_trace:
        steps = _trace_rows(rows)
        workloads["azure_conv_sample"] = {
            "kind": "trace", "seed": spec.seed,
            "sources": {"AzureLLMInferenceTrace_conv.csv": "9f2c" + "0" * 60},
            "summary": {"requests_total": 1000, "steps": 400,
                        "sample": {"method": "stratified", "points": 8, "steps_total": 400,
                                   "represented_time_fraction": 0.715, "sampled_time_fraction": 0.021}},
        }
    manifest = {
        "schema_version": SCHEMA_VERSION, "run_id": spec.run_id, "created_utc": "2026-01-01T00:00:00Z",
        "command": ["rpa-bench", "run", "experiment=main_cpu", "scale=cpu_smoke"],
        "config": {"scale": {"name": "cpu_smoke", "scaled_down": True, "decode_num_seqs": spec.decode_num_seqs},
                   "model": {"name": "llama3_8b"}, "seed": spec.seed},
        "environment": {"python": "3.12", "jax": "0.11.2", "jaxlib": "0.11.2", "libtpu": None,
                        "tpu-inference": "0.32.0", "platform": "cpu", "device_kind": "cpu", "device_count": 1},
        "git": {"commit": "0" * 40, "dirty": False},
        "kernels": {"reference": {"source": "rpa_bench.kernels.reference", "version": "0.1.0"},
                    "rpa_v3": {"source": "tpu-inference", "version": "0.32.0", "commit": None}},
        "workloads": workloads,
        "device_spec": {**SYNTHETIC_DEVICE, "devices_per_chip": spec.devices_per_chip, "num_devices": spec.num_devices},
        "calibration": {"hbm_bw_bytes_per_s": 0.8 * SYNTHETIC_DEVICE["hbm_bw_bytes_per_s"],
                        "matmul_flops_per_s": 0.7 * SYNTHETIC_DEVICE["peak_bf16_flops_per_s"],
                        "source": "synthetic"},
        "status": spec.status,
        "mesh": spec.mesh,
        "synthetic": True,
        # a modelled time account (synthetic, like the rest), so the report's phases section renders
        "phases": {"start-up": 5.0, "workload build": 0.2, "materialise": 1.5, "reference": 1.0, "compile": 3.0,
                   "check": 0.5, "warm-up": 0.6, "calibration": 0.3, "timed samples": 4.0, "capture": 2.0,
                   "capture parse": 0.3, "statistics": 0.1, "store write": 0.2, "other": 0.3},
        "process_wall_s": 19.0, "overhead_ratio": 1.84,
    }
    store = RunStore(path)
    store.write_manifest(manifest)
    store.append(rows.rows)
    if spec.include_trace:
        store.write_workload_table("azure_conv_sample", "steps", steps)
        sample = steps[steps["sampled"]][["step"]].assign(
            time_weight=[0.2, 0.1, 0.15, 0.05, 0.1, 0.2, 0.1, 0.1])
        store.write_workload_table("azure_conv_sample", "sample", sample.reset_index(drop=True))
    return path
