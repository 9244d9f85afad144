"""The traffic audit of a plan: per workload point and kernel entry, the bytes the kernel's
schedule moves against the analytic minimum, by operand, with the ceiling it puts on MBU.

Modelled for every point (no arrays: full-scale shapes on any machine); observed from the
real kernel's DMAs in interpret mode where asked and small enough (``observe_max_kv_token_heads``).
"""

from __future__ import annotations

import dataclasses
import json

from rpa_bench.kernels.traffic import hook_status, observe_traffic
from rpa_bench.pipeline.plan import RunPlan
from rpa_bench.pipeline.point import cost_of
from rpa_bench.pipeline.prepare import build_workloads, interpret_work
from rpa_bench.roofline import paper
from rpa_bench.roofline.traffic import TrafficCeiling
from rpa_bench.store.rows import paper_axes
from rpa_bench.workloads.model import AttentionSpec
from rpa_bench.workloads.points import point_attention


@dataclasses.dataclass(frozen=True)
class TrafficConfig:
    """``conf/traffic/default.yaml``."""

    generation: str | None = None  # the TPU generation whose block sizes the kernels use; None: device, else tpu7x
    observe: bool = False  # also count the real kernel's DMAs in interpret mode (small points)
    observe_max_kv_token_heads: int = 40000  # sum(kv_lens) x h_kv above this: not observed (slow)
    out: str | None = None  # folder for traffic.json / .csv / .png; None: <run.results_dir>/traffic/<run.name>
    json: bool = False

    def __post_init__(self) -> None:
        if self.observe_max_kv_token_heads < 1:
            raise ValueError(f"traffic.observe_max_kv_token_heads={self.observe_max_kv_token_heads} must be >= 1")


def audit(plan: RunPlan, cfg: TrafficConfig, generation: str, *, say=lambda m: None) -> list[dict]:
    """One record per (workload point, kernel entry); entries without a traffic model say so."""
    backends = []
    for entry in plan.kernels:
        backend = entry.backend()
        if hasattr(backend, "generation"):
            backend.generation = generation  # the block sizes that generation would use
        backends.append((entry, backend))
    if cfg.observe:
        ok, reason = hook_status()
        if not ok:
            raise ValueError(f"traffic.observe=true: {reason}")
    out = []
    for wentry, workload in build_workloads(plan):
        points = workload.points if plan.max_points is None else workload.points[: plan.max_points]
        for p in points:
            attn = point_attention(plan.attention, p)
            cost = cost_of(p.batch, plan.model, attn, causal=p.causal)
            for entry, backend in backends:
                line = {"workload": wentry.name, "point_id": p.point_id, "kernel": entry.label,
                       "backend": entry.name, "generation": generation, "phase": p.batch.phase,
                       "num_seqs": p.batch.num_seqs, "num_tokens": p.batch.num_tokens,
                       "max_kv_len": p.batch.max_kv_len, **dict(zip(("context_len", "seq_len"), paper_axes(
                           p.batch, getattr(workload, "kind", wentry.kind), getattr(p, "meta", None)))),
                       "analytic_hbm_bytes": int(cost.hbm_bytes)}
                model_fn = getattr(backend, "traffic", None)
                if model_fn is None:
                    line["note"] = f"kernel {entry.name} declares no traffic model"
                    if cfg.observe and hasattr(backend, "traffic_operands"):
                        line.update(_observed_only(backend, plan.model, attn, p, cost, cfg, say,
                                                   f"{entry.label} at {wentry.name}:{p.point_id}"))
                    out.append(line)
                    continue
                try:
                    backend.validate(plan.model, attn, p.batch)
                    t = model_fn(plan.model, attn, p.batch, generation=generation)
                except ValueError as exc:
                    line["note"] = f"not modelled: {exc}"
                    out.append(line)
                    continue
                ceiling = TrafficCeiling(int(cost.hbm_bytes), t.hbm_bytes)
                line.update({"moved_hbm_bytes": t.hbm_bytes, "refetch_factor": ceiling.refetch_factor,
                            "traffic_ceiling_pct": ceiling.ceiling_pct, "dmas": t.dmas,
                            "iterations": t.iterations, "kernel_calls": t.kernel_calls,
                            **{f"bytes_{k}": int(v) for k, v in t.bytes_by_operand.items()},
                            "block_sizes": json.dumps(backend.traffic_blocks(plan.model, p.batch, generation))})
                if cfg.observe:
                    work = interpret_work(p.batch, plan.model)
                    if work > cfg.observe_max_kv_token_heads:
                        line["observed"] = (f"not observed: sum(kv_lens) x h_kv = {work} > "
                                           f"traffic.observe_max_kv_token_heads={cfg.observe_max_kv_token_heads}")
                    else:
                        say(f"  observing {entry.label} at {wentry.name}:{p.point_id} (interpret mode)")
                        seen = observe_traffic(backend, plan.model, attn, p.batch)
                        line["observed_hbm_bytes"] = seen.hbm_bytes
                        line["observed"] = "equal" if seen.comparable() == t.comparable() else (
                            f"DIFFERS: observed {seen.comparable()} vs modelled {t.comparable()}")
                out.append(line)
    _side_by_side(out, [e.label for e, _ in backends])
    return out


def _observed_only(backend, model, attn, point, cost, cfg: TrafficConfig, say, where: str) -> dict:
    """A kernel with no traffic model: its real DMAs counted in interpret mode (small points only),
    every HBM buffer's bytes included (those no operand shape names as ``unnamed``)."""
    work = interpret_work(point.batch, model)
    if work > cfg.observe_max_kv_token_heads:
        return {"observed": f"not observed: sum(kv_lens) x h_kv = {work} > "
                            f"traffic.observe_max_kv_token_heads={cfg.observe_max_kv_token_heads}"}
    say(f"  observing {where} (interpret mode; no model)")
    try:
        backend.validate(model, attn, point.batch)
        seen = observe_traffic(backend, model, attn, point.batch, count_unnamed=True)
    except ValueError as exc:
        return {"observed": f"not observed: {exc}"}
    ceiling = TrafficCeiling(int(cost.hbm_bytes), seen.hbm_bytes)
    return {"observed_hbm_bytes": seen.hbm_bytes, "moved_hbm_bytes": seen.hbm_bytes,
            "refetch_factor": ceiling.refetch_factor, "traffic_ceiling_pct": ceiling.ceiling_pct,
            "dmas": seen.dmas, **{f"bytes_{k}": int(v) for k, v in seen.bytes_by_operand.items()},
            "observed": "observed only (no model)", "note": "moved bytes observed in interpret mode, not modelled"}


def _side_by_side(records: list[dict], labels: list[str]) -> None:
    """With two or more entries, each record's moved bytes against the first entry's at its point."""
    if len(labels) < 2:
        return
    base = {(r["workload"], r["point_id"]): r.get("moved_hbm_bytes") for r in records if r["kernel"] == labels[0]}
    for r in records:
        first = base.get((r["workload"], r["point_id"]))
        if r["kernel"] != labels[0] and first and r.get("moved_hbm_bytes"):
            r[f"moved_vs_{labels[0]}"] = r["moved_hbm_bytes"] / first


PAPER_TRAFFIC_TABLES = ("table4", "table6", "table8")


def paper_ceilings(kernels: list, generation: str = "TPU7x") -> dict:
    """For each kernel entry with a traffic model: the refetch factor and MBU ceiling of every
    row of the paper's Tables 4, 6, 8 (the paper's shapes, this generation's block sizes), so
    a report can put the ceiling beside the paper's measured MBU without running a kernel."""
    out: dict = {}
    for entry in kernels:
        backend = entry.backend()
        if not hasattr(backend, "traffic"):
            continue
        if hasattr(backend, "generation"):
            backend.generation = generation
        per_table: dict = {}
        for name in PAPER_TRAFFIC_TABLES:
            spec = paper.PAPER_TABLES[name]
            attn = AttentionSpec(causal=spec.causal)
            for value in paper.load_paper_table(name)[spec.sweep_column]:
                batch = spec.batch(int(value))
                cost = cost_of(batch, paper.PAPER_MODEL, attn, causal=spec.causal)
                try:
                    t = backend.traffic(paper.PAPER_MODEL, attn, batch, generation=generation)
                except ValueError:
                    continue
                c = TrafficCeiling(int(cost.hbm_bytes), t.hbm_bytes)
                per_table.setdefault(name, {})[str(int(value))] = {
                    "refetch_factor": round(c.refetch_factor, 4), "traffic_ceiling_pct": round(c.ceiling_pct, 3)}
        out[entry.label] = {"backend": entry.name, "generation": generation, "tables": per_table}
    return out
