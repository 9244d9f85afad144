"""Time the trace simulation end to end (read, simulate, summarise, sample) per trace.

    taskset -c 0 .venv/bin/python scripts/bench_simulate.py                      # the two reference traces
    taskset -c 0 .venv/bin/python scripts/bench_simulate.py azure_code sharegpt --repeat 5 scheduler.prefix_caching=true

Arguments: conf/workload names, then optional Hydra overrides (key=value). Prints, per
trace, the best and median of ``--repeat`` runs of ``build_workload`` (the whole path a
run takes) and the best time of each phase; also the number of requests and steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

from omegaconf import OmegaConf

from rpa_bench.commands._hydra import compose
from rpa_bench.roofline.specs import with_device_peaks
from rpa_bench.workloads.model import ModelSpec
from rpa_bench.workloads.points import build_workload, cost_model_for, workload_spec_from_dict
from rpa_bench.workloads.sampling import sample_steps
from rpa_bench.workloads.scheduler import simulate
from rpa_bench.workloads.scheduler_spec import SchedulerSpec
from rpa_bench.workloads.summary import simulation_summary
from rpa_bench.workloads.traces import read_trace


def _compose(name: str, overrides: list[str]) -> dict:
    try:
        cfg = compose([f"workload={name}", *overrides])
    except Exception:  # a config group of the root defaults may be absent in a partial checkout
        cfg = compose([f"workload={name}", *overrides, "~scale"])
    return OmegaConf.to_container(cfg, resolve=True)


def bench(name: str, overrides: list[str], repeat: int) -> None:
    cfg = _compose(name, overrides)
    spec = workload_spec_from_dict(cfg["workload"])
    model = ModelSpec.from_dict(cfg["model"])
    sched = with_device_peaks(SchedulerSpec.from_dict(cfg["scheduler"]))
    cost = cost_model_for(model, sched)
    totals, phases = [], {"read": [], "simulate": [], "summary": [], "sample": []}
    for _ in range(repeat):
        t0 = time.perf_counter()
        wl = build_workload(spec, model, sched, seed=cfg["seed"])
        totals.append(time.perf_counter() - t0)
        t = time.perf_counter()
        req = read_trace(spec.path, columns=spec.column_map, file_type=spec.file_type, on_bad_row=spec.on_bad_row,
                         arrival_rate_per_s=spec.arrival_rate_per_s, seed=cfg["seed"], max_requests=spec.max_requests)
        phases["read"].append(time.perf_counter() - t)
        t = time.perf_counter()
        res = simulate(req, sched, cost)
        phases["simulate"].append(time.perf_counter() - t)
        t = time.perf_counter()
        simulation_summary(res)
        phases["summary"].append(time.perf_counter() - t)
        t = time.perf_counter()
        sample_steps(res.step_columns(("step", "step_time_s", "num_tokens", "max_kv_len")), sched.sampling,
                     seed=cfg["seed"])
        phases["sample"].append(time.perf_counter() - t)
    s = wl.summary
    print(f"{name}: {s['requests_completed']} requests, {s['steps']} steps ({s['segments']} segments), "
          f"{s['preemptions']} preemptions")
    print(f"  build_workload (read + simulate + summary + sample + point batches): best {min(totals):.3f} s, "
          f"median {statistics.median(totals):.3f} s over {repeat}")
    print("  phases (best): " + ", ".join(f"{k} {min(v):.3f} s" for k, v in phases.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("args", nargs="*", help="workload names, then key=value overrides")
    ap.add_argument("--repeat", type=int, default=3)
    ns = ap.parse_args()
    names = [a for a in ns.args if "=" not in a] or ["mooncake_conversation", "azure_conv"]
    overrides = [a for a in ns.args if "=" in a]
    for name in names:
        bench(name, overrides, ns.repeat)


if __name__ == "__main__":
    main()
