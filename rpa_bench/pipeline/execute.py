"""The sweep: every (workload point, kernel) of a prepared run, measured and stored point by point.

:func:`execute` walks the points: materialise the batch once, run the reference on it
once, measure each kernel (:mod:`rpa_bench.pipeline.point`) and append its rows to the
store as one atomic part. Finished (point, kernel) pairs found in the store are skipped,
so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses

from collections import Counter
from collections.abc import Callable
from typing import Any

from rpa_bench.names import slug
from rpa_bench.kernels.backend_util import call_context
from rpa_bench.kernels.reference import reference_attention
from rpa_bench.measure.phases import phase
from rpa_bench.pipeline.compile_only import compile_variants
from rpa_bench.pipeline.plan import WorkloadEntry
from rpa_bench.pipeline.point import (
    KernelJob,
    PointReference,
    cost_of,
    error_text,
    measure_interleaved,
    measure_job,
    program_tag,
    traffic_columns,
)
from rpa_bench.pipeline.prepare import (
    KernelSlot,
    PreparedRun,
    _compile_targets,
    interpret_work,
)
from rpa_bench.status import Status
from rpa_bench.store import rows as record
from rpa_bench.store.run_store import RunStore
from rpa_bench.workloads.materialize import materialize
from rpa_bench.workloads.points import (
    point_attention,
)




def _point_rows(prep: PreparedRun, run: record.RunColumns, entry: WorkloadEntry, wl: Any, p: Any,
                todo: list[KernelSlot], store: RunStore, on_rows: Callable[[list[dict]], None]) -> None:
    """Every kernel of ``todo`` on point ``p``: one materialised batch (on this process's
    first device), the unsharded reference once, then each kernel checked against it and timed."""
    import jax

    plan = prep.plan
    attn = point_attention(plan.attention, p)
    point_cols = record.point_columns(
        workload=entry.name, workload_kind=getattr(wl, "kind", entry.kind), point_id=p.point_id, batch=p.batch,
        causal=p.causal, weight=p.weight, model=plan.model, model_name=plan.model_name, attn=attn,
        max_num_batched_tokens=p.max_num_batched_tokens, max_num_seqs=p.max_num_seqs, meta=getattr(p, "meta", None),
    )

    def simple(slot: KernelSlot, status: str, error: str, *, modelled: bool = False) -> list[dict]:
        """Rows without a measurement; ``modelled``: with what needs no arrays (cost, traffic)."""
        kcols = record.kernel_columns(slot.entry, slot.provenance, interpret=slot.interpret)
        parts: dict = {}
        if modelled:
            try:
                cost = cost_of(p.batch, plan.model, attn, causal=p.causal)
                parts = {"cost": record.cost_columns(cost),
                         "traffic": traffic_columns(slot.backend, plan.model, attn, p.batch, cost)}
            except Exception:  # noqa: BLE001 - the row stands without them
                parts = {}
        return [record.build_row(run, point_cols, kcols, variant=v, status=status, error=error, **parts)
                for v in ("excl_prep", "incl_prep")]

    inputs = reference = None
    group: list[KernelJob] = []
    for slot in todo:
        if not slot.available:
            on_rows(simple(slot, Status.SKIPPED, f"kernel unavailable: {slot.reason}"))
            continue
        reason = prep.unsupported.get((entry.name, p.point_id, slot.entry.label))
        if reason is not None:
            on_rows(simple(slot, Status.SKIPPED, reason))
            continue
        if plan.compile_only is not None:
            on_rows(_compiled_rows(prep, run, point_cols, slot, p, attn))
            continue
        if slot.interpret and interpret_work(p.batch, plan.model) > plan.scale.interpret_max_kv_token_heads:
            on_rows(simple(slot, Status.SKIPPED, (
                f"not checked: too large for Pallas interpret mode on {prep.platform} (sum(kv_lens) x h_kv = "
                f"{interpret_work(p.batch, plan.model)} > scale.interpret_max_kv_token_heads="
                f"{plan.scale.interpret_max_kv_token_heads}); checked on smaller points, measure it on a TPU"),
                modelled=True))
            continue
        if inputs is None:
            try:
                with phase("materialise"):
                    inputs = materialize(p.batch, plan.model, max_num_batched_tokens=p.max_num_batched_tokens,
                                         max_num_seqs=p.max_num_seqs, seed=plan.seed, poison=True,
                                         device=jax.local_devices()[0])  # the same data on every host
                    jax.block_until_ready(inputs.k_cache)
                reference = PointReference(lambda i=inputs: reference_attention(i, attn))
            except Exception as exc:  # noqa: BLE001 - every kernel of the point gets the error
                err = f"materialise/reference failed: {error_text(exc)}"
                for s in todo[todo.index(slot):]:
                    on_rows(simple(s, Status.FAILED, err))
                return
        kcols = record.kernel_columns(slot.entry, slot.provenance, interpret=slot.interpret)
        job = KernelJob(
            backend=slot.backend, interpret=slot.interpret, inputs=inputs, reference=reference, attn=attn,
            causal=p.causal, timing=plan.timing, roof=prep.roof, run=run, point_cols=point_cols,
            kernel_cols=kcols, captures_dir=store.captures_dir, run_dir=store.root,
            capture_stem=f"{slug(entry.name)}.{slug(p.point_id)}.{slug(slot.entry.label)}",
            point_capture_stem=f"{slug(entry.name)}.{slug(p.point_id)}",
            context=lambda s=slot: call_context(s.interpret),
            compiler_options={**plan.timing.compiler_options, **slot.entry.compiler_options},
        )
        timed = not slot.interpret or plan.timing.time_interpret
        if timed and _interleaving(prep):
            # timed together below, samples interleaved, profiled in one session: own program names
            job = dataclasses.replace(job, program_tag=program_tag(slot.entry.label, len(group)))
            group.append(job)
        else:
            on_rows(measure_job(job))
    if group:
        if len(group) == 1:
            on_rows(measure_job(group[0]))
        else:
            for rows in measure_interleaved(group, order=plan.timing.interleave_order, seed=plan.seed):
                on_rows(rows)


def _interleaving(prep: PreparedRun) -> bool:
    """Interleave the samples of a point's timed kernels (timing.interleave; auto: several entries)."""
    mode = prep.plan.timing.interleave
    return bool(mode) if mode != "auto" else len(prep.kernels) > 1


def _compiled_rows(prep: PreparedRun, run: record.RunColumns, point_cols: record.PointColumns, slot: KernelSlot,
                   p: Any, attn: Any) -> list[dict]:
    """``run.compile_only``: both variants compiled for the target, with their facts (nothing runs)."""

    plan = prep.plan
    kcols = record.kernel_columns(slot.entry, slot.provenance, interpret=False)
    notes: list[str] = []
    cost = None
    try:
        cost = cost_of(p.batch, plan.model, attn, causal=p.causal)
        cost_cols = record.cost_columns(cost)
    except Exception as exc:  # noqa: BLE001 - the compile facts still stand
        cost_cols, notes = None, [f"cost model failed: {error_text(exc)}"]
    traffic = traffic_columns(slot.backend, plan.model, attn, p.batch, cost, generation=plan.compile_only)
    with phase("compile"):
        facts = compile_variants(slot.backend, plan.model, attn, p.batch, generation=plan.compile_only,
                                 devices=_compile_targets(plan),
                                 padding={"max_num_batched_tokens": p.max_num_batched_tokens,
                                          "max_num_seqs": p.max_num_seqs})
    notes.append(f"compile-only for {plan.compile_only}: compiled by the TPU compiler, not run; no timing, "
                 "no correctness check")
    return [record.build_row(run, point_cols, kcols, variant=variant, status=f.status, error=f.error,
                             warnings=notes, blocks=f.blocks, cost=cost_cols, compiled=f.columns, traffic=traffic)
            for variant, f in facts.items()]


def execute(prep: PreparedRun, store: RunStore, *, run_id: str, progress: bool = True,
            on_part: Callable[[list[dict]], None] | None = None,
            should_stop: Callable[[], bool] = lambda: False, write: bool = True,
            done: set[tuple[str, str, str]] | None = None) -> Counter:
    """Measure everything not yet in ``store``; returns status counts of the rows measured.

    ``should_stop`` is polled after each stored part; when true the sweep raises
    ``KeyboardInterrupt`` (what the signal handler of the command turns SIGTERM into).
    ``write=False``: a process of a multi-host run other than the writer. It measures the
    same points (sharded calls, gathered outputs and per-device times are collective) and
    stores no row; ``store`` then only receives its own profiler captures (a scratch
    folder). ``done``: the (workload, point, kernel) pairs to skip (default: ``store``'s).
    """
    from tqdm import tqdm

    plan = prep.plan
    spec = prep.roof.device
    run = record.RunColumns(run_id=run_id, experiment=plan.experiment, scale=plan.scale.name,
                            device=spec.name, device_kind=prep.device_kind,
                            num_devices=prep.num_devices, mesh=prep.mesh_label, seed=plan.seed,
                            figures_per=record.figures_per(spec.num_devices, spec.devices_per_chip,
                                                           vendor=spec.vendor))
    done = store.done_keys() if done is None else set(done)
    counts: Counter = Counter()
    bar = tqdm(total=prep.num_jobs, disable=not progress, unit="job", dynamic_ncols=True, desc=plan.experiment)
    bar.update(sum(1 for e, w in prep.workloads for p in prep.points(w) for k in prep.kernels
                   if (e.name, p.point_id, k.entry.label) in done))

    def on_rows(rows: list[dict]) -> None:
        if write:
            with phase("store write"):
                store.append(rows)
        for r in rows:
            counts[r["status"]] += 1
        last = rows[0]
        lat = next((r.get("latency_us") for r in rows if r.get("latency_us") is not None), None)
        bar.set_postfix_str(
            " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            + f" | {last['kernel']} {last['workload']}:{last['point_id']} {last['status']}"
            + (f" {lat:.1f}us" if lat is not None else ""), refresh=False)
        bar.update(1)
        if on_part is not None:
            on_part(rows)
        if should_stop():
            raise KeyboardInterrupt("stop requested")

    for entry, wl in prep.workloads:
        for p in prep.points(wl):
            todo = [k for k in prep.kernels if (entry.name, p.point_id, k.entry.label) not in done]
            if todo:
                _point_rows(prep, run, entry, wl, p, todo, store, on_rows)
    bar.close()
    return counts


