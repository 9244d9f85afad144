"""The sweep: every (workload point, kernel) of a plan, measured and stored point by point.

:func:`prepare_run` does all the cheap work and every check (workloads built, backends
resolved and validated on every point, device-awareness limits) before anything is
allocated; :func:`execute` then walks the points: materialise the batch once, run the
reference on it once, measure each kernel (:func:`rpa_bench.measure.point.measure_kernel`)
and append its rows to the store as one atomic part. Finished (point, kernel) pairs found
in the store are skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from collections import Counter
from collections.abc import Callable
from typing import Any

from rpa_bench.kernels.backend_util import call_context
from rpa_bench.kernels.base import KernelProvenance
from rpa_bench.kernels.reference import reference_attention
from rpa_bench.kernels.registry import KernelConfig, PALLAS_BACKENDS, get_backend
from rpa_bench.measure import environment
from rpa_bench.measure.compile_only import compile_variants, target_devices
from rpa_bench.measure.phases import phase
from rpa_bench.measure.plan import RunPlan, WorkloadEntry
from rpa_bench.measure.point import KernelJob, PointReference, cost_of, error_text, measure_interleaved, measure_job
from rpa_bench.parallel import distributed
from rpa_bench.parallel.backend import ShardedBackend
from rpa_bench.parallel.mesh import chip_major_order, mesh_spec_from_config
from rpa_bench.roofline.calibration import Roofline, resolve_roofline
from rpa_bench.roofline.specs import with_device_peaks
from rpa_bench.status import Status
from rpa_bench.store import rows as record, schema
from rpa_bench.store.rows import now_utc
from rpa_bench.store.run_store import RunStore
from rpa_bench.workloads.materialize import estimate_bytes, materialize, padded_shape
from rpa_bench.workloads.points import build_workload, point_attention, workload_spec_from_dict


@dataclasses.dataclass
class KernelSlot:
    entry: KernelConfig
    backend: Any | None
    interpret: bool
    available: bool
    reason: str
    provenance: KernelProvenance


@dataclasses.dataclass
class PreparedRun:
    plan: RunPlan
    workloads: list[tuple[WorkloadEntry, Any]]  # (entry, Workload)
    kernels: list[KernelSlot]
    roof: Roofline
    platform: str
    device_kind: str
    num_devices: int
    mesh_label: str
    unsupported: dict = dataclasses.field(default_factory=dict)  # (workload, point, kernel) -> reason

    @property
    def num_jobs(self) -> int:
        return sum(len(self.points(w)) for _, w in self.workloads) * len(self.kernels)

    def points(self, workload: Any) -> list:
        pts = list(workload.points)
        return pts if self.plan.max_points is None else pts[: self.plan.max_points]


def interpret_work(batch: Any, model: Any) -> int:
    """Rough cost of an interpret-mode call: cached KV tokens x KV heads."""
    return int(sum(batch.kv_lens)) * int(model.num_kv_heads)


def _resolve_kernels(plan: RunPlan, platform: str) -> list[KernelSlot]:
    slots = []
    for k in plan.kernels:
        backend = get_backend(k.name, source=k.source, options=dict(k.options) or None)
        ok, reason = backend.availability()
        if not ok:  # a kernel the user asked for that cannot be loaded: a config error, before any point
            raise ValueError(f"kernel={k.name} cannot be loaded: {reason}")
        if k.interpret == "auto":
            interpret = platform != "tpu" and k.name in PALLAS_BACKENDS
        else:
            interpret = bool(k.interpret)
        try:
            prov = backend.provenance() if ok else KernelProvenance(kernel=k.name)
        except Exception as exc:  # noqa: BLE001 - provenance is recorded, never fatal
            prov = KernelProvenance(kernel=k.name, error=error_text(exc))
        slots.append(KernelSlot(k, backend, interpret, bool(ok), str(reason), prov))
    return slots


def build_workloads(plan: RunPlan) -> list[tuple[WorkloadEntry, Any]]:
    out = []
    for entry in plan.workloads:
        spec = workload_spec_from_dict(dict(entry.config))
        # a trace's step-time model: one tensor-parallel device's share of the model
        step_model = plan.model.tensor_parallel_shard(plan.mesh.model or 1)
        out.append((entry, build_workload(spec, step_model, with_device_peaks(plan.scheduler), seed=plan.seed)))
    return out


def _check_limits(plan: RunPlan, workloads, kernels: list[KernelSlot], platform: str) -> dict:
    problems: list[str] = []
    unsupported: dict[tuple[str, str, str], str] = {}
    for slot in kernels:  # model-level support: a config error for the whole run
        if slot.available:
            try:
                slot.backend.validate(plan.model, plan.attention, None)
            except ValueError as e:
                problems.append(str(e))
    for entry, wl in workloads:
        for p in (wl.points if plan.max_points is None else wl.points[: plan.max_points]):
            for slot in kernels:  # point-level support (e.g. no causal mask): skipped rows
                if slot.available:
                    try:
                        slot.backend.validate(plan.model, point_attention(plan.attention, p), p.batch)
                    except ValueError as e:
                        unsupported[(entry.name, p.point_id, slot.entry.label)] = f"not supported: {e}"
            if platform != "cpu":
                continue
            shape = padded_shape(p.batch, max_num_batched_tokens=p.max_num_batched_tokens, max_num_seqs=p.max_num_seqs)
            nbytes = estimate_bytes(p.batch, plan.model, max_num_batched_tokens=shape.max_num_batched_tokens,
                                    max_num_seqs=shape.max_num_seqs, num_pages=shape.num_pages)
            flops = cost_of(p.batch, plan.model, point_attention(plan.attention, p), causal=p.causal).flops
            if nbytes > plan.scale.cpu_max_input_bytes or flops > plan.scale.cpu_max_call_flops:
                problems.append(
                    f"scale={plan.scale.name} on cpu: workload {entry.name} point {p.point_id} needs "
                    f"{nbytes / 2**30:.2f} GiB of inputs and {flops / 1e12:.2f} TFLOP per call (limits: "
                    f"scale.cpu_max_input_bytes={plan.scale.cpu_max_input_bytes:.3g}, "
                    f"scale.cpu_max_call_flops={plan.scale.cpu_max_call_flops:.3g}); it would not fit or "
                    "would take hours on this CPU. "
                    + ("Use a smaller workload (e.g. scheduler.max_num_batched_tokens, workload.max_requests, "
                       "shorter contexts), or run on a TPU/GPU" if plan.scale.reduced
                       else "Use scale=cpu_smoke, or run on a TPU/GPU")
                )
    if problems:
        head = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise ValueError("the run cannot start:\n  " + "\n  ".join(head))
    return unsupported


def _roofline(plan: RunPlan, num_devices: int) -> Roofline:
    n = num_devices if plan.compile_only is not None else int(plan.device.num_devices or num_devices)
    return resolve_roofline(plan.device.name, num_devices=n, results_dir=plan.results_dir,
                            compile_only=plan.compile_only)


def _check_every_process_in_mesh(mesh: Any) -> None:
    """On several hosts every process runs the same program: the mesh must reach each one."""
    import jax

    if jax.process_count() == 1:
        return
    chosen = chip_major_order(jax.devices())[: mesh.num_devices]
    idle = sorted(set(range(jax.process_count())) - {int(d.process_index) for d in chosen})
    if idle:
        raise ValueError(
            f"mesh {mesh.label} uses {mesh.num_devices} of {jax.device_count()} devices and leaves process(es) "
            f"{idle} without one; a multi-host run needs a mesh over every host (e.g. mesh.data={jax.device_count()})"
        )


def _compile_targets(plan: RunPlan) -> tuple:
    """``run.compile_only``: one chip of the target generation (compile targets), else the devices."""
    import jax

    if plan.compile_only is None:
        return tuple(jax.devices())

    return target_devices(plan.compile_only)


def prepare_run(plan: RunPlan, workloads: list[tuple[WorkloadEntry, Any]] | None = None) -> PreparedRun:
    """Everything but the measurements; raises ValueError for any config problem.
    ``workloads``: the plan's workloads already built (e.g. a subset of their points)."""

    devices = _compile_targets(plan)
    dev = devices[0]
    mesh = mesh_spec_from_config(plan.mesh.to_dict(), device_kind=dev.device_kind, num_devices=len(devices))
    if plan.compile_only is None:
        _check_every_process_in_mesh(mesh)
    kernels = _resolve_kernels(plan, dev.platform)
    if plan.compile_only is not None:
        for slot in kernels:  # compiled for the TPU with its own defaults, never interpreted
            slot.interpret = False
            if slot.available and hasattr(slot.backend, "generation"):
                slot.backend.generation = plan.compile_only
            if slot.available and hasattr(slot.backend, "check_vmem_estimate"):
                slot.backend.check_vmem_estimate = False  # the compiler, not the estimate, decides
    roof = _roofline(plan, mesh.num_devices)
    if mesh.num_devices > 1:  # each kernel sharded over the mesh, canonical in and out (rpa_bench.parallel)
        for slot in kernels:
            if slot.available:
                slot.backend = ShardedBackend(slot.backend, mesh, device_spec=roof.device,
                                              devices=devices if plan.compile_only else None)
                slot.provenance = dataclasses.replace(slot.provenance, mesh=mesh.label)
    workloads = build_workloads(plan) if workloads is None else workloads
    unsupported = _check_limits(plan, workloads, kernels, dev.platform)
    return PreparedRun(plan, workloads, kernels, roof, dev.platform, dev.device_kind, mesh.num_devices, mesh.label,
                       unsupported)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)[:80]


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

    def simple(slot: KernelSlot, status: str, error: str) -> list[dict]:
        kcols = record.kernel_columns(slot.entry, slot.provenance, interpret=slot.interpret)
        return [record.row(run, point_cols, kcols, variant=v, status=status, error=error)
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
                f"{plan.scale.interpret_max_kv_token_heads}); checked on smaller points, measure it on a TPU")))
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
            capture_stem=f"{_slug(entry.name)}.{_slug(p.point_id)}.{_slug(slot.entry.label)}",
            point_capture_stem=f"{_slug(entry.name)}.{_slug(p.point_id)}",
            context=lambda s=slot: call_context(s.interpret),
            compiler_options={**plan.timing.compiler_options, **slot.entry.compiler_options},
        )
        timed = not slot.interpret or plan.timing.time_interpret
        if timed and _interleaving(prep):
            group.append(job)  # timed together below, samples interleaved
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


def _compiled_rows(prep: PreparedRun, run: record.RunColumns, point_cols: dict, slot: KernelSlot, p: Any,
                   attn: Any) -> list[dict]:
    """``run.compile_only``: both variants compiled for the target, with their facts (nothing runs)."""

    plan = prep.plan
    kcols = record.kernel_columns(slot.entry, slot.provenance, interpret=False)
    try:
        cost_cols = record.cost_columns(cost_of(p.batch, plan.model, attn, causal=p.causal))
    except Exception as exc:  # noqa: BLE001 - the compile facts still stand
        cost_cols = {"warnings": [f"cost model failed: {error_text(exc)}"]}
    with phase("compile"):
        facts = compile_variants(slot.backend, plan.model, attn, p.batch, generation=plan.compile_only,
                                 devices=_compile_targets(plan),
                                 padding={"max_num_batched_tokens": p.max_num_batched_tokens,
                                          "max_num_seqs": p.max_num_seqs})
    note = (f"compile-only for {plan.compile_only}: compiled by the TPU compiler, not run; no timing, "
            "no correctness check")
    rows = []
    for variant, cols in facts.items():
        cols = dict(cols)
        status = cols.pop("status")
        warnings = list(cost_cols.get("warnings", [])) + [note]
        more = {k: v for k, v in cost_cols.items() if k != "warnings"}
        rows.append(record.row(run, point_cols, kcols, variant=variant, status=status, compile_target=plan.compile_only,
                               warnings=warnings, **more, **cols))
    return rows


def kernel_provenance(prep: PreparedRun) -> dict:
    return {s.entry.label: {**s.provenance.as_dict(), "backend": s.entry.name, "available": s.available, "availability": s.reason,
                           "interpret": s.interpret, "config": s.entry.to_dict()} for s in prep.kernels}


def _jsonable(x: Any) -> Any:
    import json

    import numpy as np
    import pandas as pd

    if isinstance(x, pd.DataFrame):
        return None  # tables go to workloads/<name>/, not the manifest
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = dataclasses.asdict(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    try:
        json.dumps(x)
        return x
    except TypeError:
        return str(x)


def workload_manifest(entry: WorkloadEntry, wl: Any, max_points: int | None = None) -> dict:
    """The manifest's entry for one workload: kind, sources with sha256, seed, summary."""
    points = list(wl.points)
    return {
        "kind": getattr(wl, "kind", entry.kind),
        "config": _jsonable(dict(entry.config)),
        "sources": _jsonable(getattr(wl, "sources", {}) or {}),
        "seed": getattr(wl, "seed", None),
        "summary": _jsonable(getattr(wl, "summary", None)),
        "num_points": len(points),
        "num_points_measured": len(points) if max_points is None else min(max_points, len(points)),
        "point_ids": [p.point_id for p in points],
    }


def write_workload_tables(store: RunStore, entry: WorkloadEntry, wl: Any) -> list:
    """The workload's own tables (summary, points; traces: per-step tables) under workloads/<name>/."""
    return list(wl.write_tables(store.root / "workloads" / entry.name))


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


# --- the run folder ------------------------------------------------------------------
VOLATILE_RUN_KEYS = ("name", "results_dir", "progress", "report")  # a resume may change these


def _comparable(config: dict) -> dict:
    out = dict(config)
    out["run"] = {k: v for k, v in dict(out.get("run") or {}).items() if k not in VOLATILE_RUN_KEYS}
    return out


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def open_store(store: RunStore, config: dict, prep: PreparedRun, run_id: str, *, command: list[str]) -> None:
    """Resume the run in ``store`` (refusing a different config) or start it: the manifest
    and the workloads' tables. The writer's job."""
    plan = prep.plan
    run_dir = store.root
    if store.exists():
        old = store.read_manifest()
        changed = _diff(_comparable(old.get("config") or {}), _comparable(config))
        if changed:
            raise ValueError(
                f"{run_dir} holds a run with a different config ({', '.join(changed[:10])}); "
                "resume with the same overrides, or choose a new run.name"
            )
        check_same_workloads(old, {e.name: workload_manifest(e, w, plan.max_points)
                                    for e, w in prep.workloads}, run_dir)
        store.clean_temporaries()
        for e, w in prep.workloads:  # tables a kill before they were written lost: rebuilt
            if not any((run_dir / "workloads" / e.name).glob("*.parquet")):
                write_workload_tables(store, e, w)
        store.update_manifest(status="running", resumed_utc=[*old.get("resumed_utc", []), now_utc()],
                              resumed_from_status=old.get("status"))
        print(f"rpa-bench: resuming {run_dir} ({len(store.done_keys())} (point, kernel) pairs done)", file=sys.stderr)
        retry = sorted(store.retry_keys())
        if retry:
            print(f"rpa-bench: retrying {len(retry)} (point, kernel) pair(s) that failed for an environmental "
                  "reason: " + ", ".join(f"{w}:{p}:{k}" for w, p, k in retry[:8]) + (" ..." if len(retry) > 8 else ""),
                  file=sys.stderr)
    else:
        manifest = {
            "schema_version": schema.SCHEMA_VERSION,
            "run_id": run_id,
            "created_utc": now_utc(),
            "command": list(command),
            "config": config,
            "environment": environment.environment(),
            "flags": environment.flags(dict(plan.timing.compiler_options)),
            "git": environment.git_state(),
            "kernels": environment.portable(kernel_provenance(prep)),
            "workloads": {e.name: workload_manifest(e, w, plan.max_points) for e, w in prep.workloads},
            "device_spec": prep.roof.device.to_dict(),
            "calibration": prep.roof.calibration.to_dict() if prep.roof.calibration is not None else None,
            "status": "running",
            "experiment": plan.experiment,
            "scale": {"name": plan.scale.name, "reduced": plan.scale.reduced},
            "seeds": {"run": plan.seed},
            "mesh": prep.mesh_label,
            "processes": distributed.describe(),
        }
        for e, w in prep.workloads:  # before the manifest says the run (and its tables) exist
            write_workload_tables(store, e, w)
        store.write_manifest(manifest)


def check_same_workloads(old: dict, new: dict, run_dir: Path) -> None:
    """A resume measures the same inputs: trace files (sha256) and point ids must not have changed."""
    changes = []
    for name, now in new.items():
        before = (old.get("workloads") or {}).get(name)
        if before is None:
            changes.append(f"workload {name} is new")
            continue
        if (before.get("sources") or {}) != (now.get("sources") or {}):
            changes.append(f"workload {name}'s source files changed (sha256 differs from the stored run)")
        if before.get("point_ids") != now.get("point_ids"):
            changes.append(f"workload {name}'s points changed ({len(before.get('point_ids') or [])} stored, "
                           f"{len(now.get('point_ids') or [])} now)")
    if changes:
        raise ValueError(f"{run_dir} cannot be resumed: " + "; ".join(changes)
                         + "; choose a new run.name to measure the new inputs")
