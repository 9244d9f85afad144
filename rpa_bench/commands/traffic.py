"""``rpa-bench traffic``: the bytes each RPA kernel moves, per batch and block sizes.

    rpa-bench traffic experiment=paper_decode kernel=rpa_v3 device=tpu7x --json
    rpa-bench traffic experiment=paper_prefill_causal kernel=rpa_v3 traffic.generation=v6e
    rpa-bench traffic workload=batch_spec 'workload.spec=[2q24s24_q1s300]' workload.page_size=16 \\
        'run.kernels=[rpa_v3,{use: rpa_v3, label: big, options: {m_block_sizes: [32, 64, 32, 64]}}]'
    rpa-bench traffic workload=batch_spec 'workload.spec=[4q1s90]' workload.page_size=16 traffic.observe=true

For every point of the workloads and every kernel entry: the HBM bytes the kernel's own
schedule moves with the block sizes it would use on the target generation (KV re-read once
per query block, whole KV blocks, padded head dim and head packing, new-KV writes), split by
operand, the DMAs and (query block, KV block) iterations, against the analytic minimum the
roofline divides by: ``refetch_factor = moved / analytic`` and the traffic ceiling
``analytic / moved`` (the MBU the kernel cannot exceed with these block sizes, even at full
bandwidth). No arrays are made: full-scale shapes run anywhere. ``traffic.observe=true``
also runs the real kernel in Pallas interpret mode on the points small enough and counts its
DMAs (the model's check; never a timing). Two entries are put side by side
(``moved_vs_<first>``). Writes traffic.json, traffic.csv and traffic.png to ``traffic.out``.
Exit 0; 1 when an observation differs from the model; 2 on bad input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rpa_bench.commands import _hydra
from rpa_bench.commands._hydra import run_hydra
from rpa_bench.generations import BY_KIND
from rpa_bench.paths import output_folder_problem
from rpa_bench.typed import from_dict

EXTRA_OVERRIDES = ("+traffic=default", "hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=disabled",
                   "hydra/hydra_logging=disabled")
COLUMNS = ("workload", "point_id", "kernel", "phase", "max_kv_len", "num_tokens", "analytic_hbm_bytes",
           "moved_hbm_bytes", "refetch_factor", "traffic_ceiling_pct", "bytes_kv_cache", "bytes_new_kv",
           "bytes_q", "bytes_output", "bytes_kv_cache_write", "dmas", "iterations")


def task(cfg: DictConfig) -> int:
    from hydra import compose as hydra_compose
    from hydra.core.hydra_config import HydraConfig

    from rpa_bench.pipeline.plan import plan_from_config, target_generation  # imports JAX: loaded when the command runs
    from rpa_bench.pipeline.traffic import TrafficConfig, audit  # imports JAX: loaded when the command runs
    from rpa_bench.reports.traffic_chart import traffic_png  # imports matplotlib: loaded when the command runs

    tcfg_dict = OmegaConf.to_container(cfg.traffic, resolve=True)
    as_json = bool(tcfg_dict.get("json")) or _hydra.JSON_OUTPUT
    prog = "rpa-bench traffic"
    try:
        tcfg = from_dict(TrafficConfig, tcfg_dict, section="traffic")
        problem = output_folder_problem(tcfg.out, "traffic.out")
        if problem:
            raise ValueError(problem)
        config = _hydra.container(cfg)
        task_overrides = list(HydraConfig.get().overrides.task)
        workloads = _hydra.compose_entries("workload", cfg.run.get("workloads"), cfg.workload, task_overrides,
                                           hydra_compose)
        kernels = _hydra.compose_entries("kernel", cfg.run.get("kernels"), cfg.kernel, task_overrides, hydra_compose)
        experiment = HydraConfig.get().runtime.choices.get("experiment") or "traffic"
        plan = plan_from_config(config, workloads=workloads, kernels=kernels, experiment=str(experiment))
        generation = target_generation(tcfg.generation, plan.device.name)
        say = (lambda m: None) if as_json else (lambda m: print(m, file=sys.stderr, flush=True))
        records = audit(plan, tcfg, generation, say=say)
    except ValueError as exc:
        return _hydra.fail(prog, str(exc), as_json=as_json)
    out = Path(tcfg.out) if tcfg.out else plan.results_dir / "traffic" / plan.run_name
    out.mkdir(parents=True, exist_ok=True)
    (out / "traffic.json").write_text(json.dumps(records, indent=1, default=str))
    import pandas as pd

    frame = pd.DataFrame(records)
    frame.to_csv(out / "traffic.csv", index=False)
    png = traffic_png(records, out / "traffic.png")
    differs = [r for r in records if str(r.get("observed", "")).startswith("DIFFERS")]
    if as_json:
        print(json.dumps(records, indent=1, default=str))
    else:
        cols = [c for c in (*COLUMNS, *[c for c in frame.columns if c.startswith("moved_vs_")], "observed", "note")
                if c in frame.columns]
        view = frame[cols].copy()
        for c in ("refetch_factor",) + tuple(c for c in cols if c.startswith("moved_vs_")):
            if c in view:
                view[c] = view[c].map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")
        if "traffic_ceiling_pct" in view:
            view["traffic_ceiling_pct"] = view["traffic_ceiling_pct"].map(lambda v: "-" if pd.isna(v) else f"{v:.1f}")
        print(f"traffic for {BY_KIND[generation].alias} block sizes (bytes per call; ceiling = analytic / moved, "
              "the MBU these block sizes allow at full bandwidth)")
        print(view.astype(object).where(view.notna(), "-").to_string(index=False))
        print(f"\nwrote {out / 'traffic.json'}, {out / 'traffic.csv'}" + (f", {png}" if png else ""))
    if differs:
        print(f"{prog}: {len(differs)} observation(s) differ from the model", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    return run_hydra("rpa-bench traffic", task, argv, extra_overrides=EXTRA_OVERRIDES, doc=__doc__)
