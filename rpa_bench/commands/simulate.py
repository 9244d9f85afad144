"""``rpa-bench simulate``: continuous batching on a trace; write the batch stream.

    rpa-bench simulate workload=mooncake_conversation
    rpa-bench simulate workload=azure_conv scheduler.prefix_caching=true scheduler.num_kv_pages=2048
    rpa-bench simulate workload=sharegpt workload.arrival_rate_per_s=8 +simulate.out_dir=/tmp/sg

Prints the summary and writes into ``results/simulate-<workload>-<run.name>/`` (or
``simulate.out_dir``): summary.json, steps.parquet (every step), batches/ (sampled steps,
their weights and full batches), stream/ (segments, decodes, chunks: the compact,
complete stream) and batch_shape.png.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rpa_bench.commands._hydra import run_hydra
from rpa_bench.roofline.specs import with_device_peaks
from rpa_bench.workloads.model import ModelSpec
from rpa_bench.workloads.points import build_workload, workload_spec_from_dict
from rpa_bench.workloads.scheduler_spec import SchedulerSpec
from rpa_bench.reports.shape_plot import plot_batch_shape

EXTRA_OVERRIDES = ("hydra.run.dir=${run.results_dir}/simulate-${workload.name}-${run.name}",)


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def format_summary(name: str, sources: dict, s: dict) -> str:
    kv = s["kv_len"]
    pc = s["prefix_cache"]
    sample = s["sample"]
    lines = [f"rpa-bench simulate: workload={name}"]
    lines += [f"  source: {path} (sha256 {sha[:16]})" for path, sha in sources.items()]
    if s.get("skipped_rows"):
        lines.append(f"  skipped bad rows: {s['skipped_rows']}")
    lines += [
        f"  requests completed: {s['requests_completed']} of {s['requests_total']}",
        f"  steps: {s['steps']} ({s['segments']} segments), simulated time {s['simulated_time_s']:.1f} s "
        f"(busy {s['busy_time_s']:.1f} s)",
        f"  per step: {s['tokens_per_step_mean']:.1f} tokens, {s['seqs_per_step_mean']:.1f} sequences (mean)",
        "  sequences: " + ", ".join(f"{k} {_pct(v)}" for k, v in s["seq_share"].items()),
        "  steps: " + ", ".join(f"{k} {_pct(v)}" for k, v in s["step_share"].items())
        + "; time: " + ", ".join(f"{k} {_pct(v)}" for k, v in s["time_share"].items()),
        f"  kv_len: mean {kv['mean']:.0f}, p50 {kv['p50']}, p90 {kv['p90']}, p99 {kv['p99']}, max {kv['max']}",
        f"  preemptions: {s['preemptions']}; prefix cache: "
        + (f"hit rate {_pct(pc['hit_rate'])} ({pc['hit_tokens']} tokens)" if pc["enabled"] else "off"),
        f"  latency: mean {s['latency_s']['mean']:.2f} s, p99 {s['latency_s']['p99']:.2f} s; "
        f"output {s['output_tokens_per_s']:.0f} tokens/s",
        f"  sample: {sample['method']}, {sample['points']} steps = {_pct(sample['sampled_steps_fraction'])} of "
        f"steps, {_pct(sample['sampled_time_fraction'])} of time; weights represent "
        f"{_pct(sample['represented_time_fraction'])} of time",
    ]
    return "\n".join(lines)


def task(cfg: DictConfig) -> int:
    from hydra.core.hydra_config import HydraConfig

    t0 = time.perf_counter()
    try:
        model = ModelSpec.from_dict(OmegaConf.to_container(cfg.model, resolve=True))
        spec = workload_spec_from_dict(OmegaConf.to_container(cfg.workload, resolve=True))
        scheduler = with_device_peaks(SchedulerSpec.from_dict(OmegaConf.to_container(cfg.scheduler, resolve=True)))
        if spec.kind != "trace":
            raise ValueError(f"workload={spec.name} has kind={spec.kind!r}; simulate needs kind 'trace' "
                             "(azure_code, azure_conv, mooncake_conversation, mooncake_synthetic, sharegpt, "
                             "arxiv, generic_csv)")
        workload = build_workload(spec, model, scheduler, seed=int(cfg.seed))
    except ValueError as err:
        print(f"rpa-bench simulate: {err}", file=sys.stderr)
        return 2
    t_sim = time.perf_counter() - t0
    out_dir = Path(OmegaConf.select(cfg, "simulate.out_dir", default=None) or HydraConfig.get().runtime.output_dir)
    workload.write_tables(out_dir)
    plot_batch_shape(workload.simulation, workload.summary, out_dir / "batch_shape.png",
                     title=f"{spec.name} on {model.name}, {scheduler.device}",
                     sampled_steps=workload.sample["step"].to_numpy())
    print(format_summary(spec.name, workload.sources, workload.summary))
    print(f"  took: {t_sim:.2f} s to read, simulate and sample; {time.perf_counter() - t0 - t_sim:.2f} s to write")
    print(f"output: {out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_hydra("rpa-bench simulate", task, list(argv or []), extra_overrides=EXTRA_OVERRIDES, doc=__doc__)
