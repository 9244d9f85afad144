"""One (workload point, kernel) measurement: check against the reference, then time.

For a materialised batch and the reference's output on it:

1. build the backend's call and compile both timed variants (:mod:`.calls`);
2. correctness gate: run ``incl_prep`` once, ``finish`` it, compare with the reference
   (``compare_outputs``: tolerance by dtype). Not ok -> both rows ``incorrect``, not timed;
3. Pallas interpret-mode kernels (RPA kernels off TPU) stop here unless
   ``timing.time_interpret``: rows ``skipped`` with the check's result, because interpret
   timings are not kernel performance;
4. per variant: the timing protocol (:mod:`.timing`, wall clock), then a short profiler
   capture (:mod:`.capture`) for device time. ``timing_source`` is ``device`` when the
   capture attributes events to the call's module, else ``wall`` with the reason;
5. cost and metrics from the roofline module (paper convention, si, calibrated).

Any exception becomes a ``failed`` row with its message; the sweep goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rpa_bench.kernels.checking import compare_outputs, tolerance_for
from rpa_bench.kernels.reference import DEFAULT_BLOCK_BYTES, ReferenceBackend
from rpa_bench.measure import capture as cap
from rpa_bench.measure import xspace
from rpa_bench.measure.calls import VARIANTS, TimedCall, build_timed_calls
from rpa_bench.measure.devtime import PerDeviceTiming, per_device_timing
from rpa_bench.measure.phases import Account, phase, scope
from rpa_bench.measure.stats import summarize
from rpa_bench.measure.timing import Sampler, TimingConfig, interleave, time_function
from rpa_bench.parallel.columns import row_updates
from rpa_bench.parallel.distributed import from_writer
from rpa_bench.roofline.calibration import Roofline
from rpa_bench.roofline.cost import PAPER_CKV, batch_cost
from rpa_bench.roofline.metrics import compute_metrics
from rpa_bench.status import Status
from rpa_bench.store import rows as record

MAX_ERROR_CHARS = 2000


def error_text(exc: BaseException) -> str:
    """``Type: message`` plus the innermost frame, bounded."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    text = f"{type(exc).__name__}: {exc}{where}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def cost_ckv(causal: bool) -> int | None:
    """The KV block executed causal FLOPs are counted in (the paper's), None without a mask."""

    return PAPER_CKV if causal else None


def cost_of(batch, model, attn, *, causal: bool):
    return batch_cost(batch, model, causal=causal, sliding_window=attn.sliding_window,
                      ckv=cost_ckv(causal), count="executed")


def traffic_columns(backend: Any, model: Any, attn: Any, batch: Any, cost: Any,
                    generation: str | None = None) -> record.TrafficColumns | None:
    """The kernel's modelled traffic for the call, where its backend declares a model (never raises:
    a model that cannot say is no column)."""
    model_fn = getattr(backend, "traffic", None)
    if model_fn is None:
        return None
    try:
        modelled = model_fn(model, attn, batch, generation=generation) if generation else model_fn(model, attn, batch)
    except Exception:  # noqa: BLE001 - traffic is an annotation of the row, never its failure
        return None
    return record.TrafficColumns.of(modelled, cost.hbm_bytes if cost is not None else None)


def metrics_of(cost, latency_us: float, roof: Roofline) -> tuple[dict, list[str]]:
    paper = compute_metrics(cost, latency_us, roof.device, convention="paper")
    si = compute_metrics(cost, latency_us, roof.device, convention="si")
    calibrated = None
    if roof.calibration is not None:
        calibrated = compute_metrics(cost, latency_us, roof.device, convention="si",
                                     peak_source="calibrated", calibration=roof.calibration)
    return record.metric_columns(paper, si, calibrated)


def _in_order() -> bool:
    """TPU / GPU run one device's calls in dispatch order (one stream); the CPU client may not."""
    import jax

    return jax.devices()[0].platform in ("tpu", "gpu")


def _agree() -> Callable[[Any], Any]:
    """Identity on one process; across hosts, the writer's clock decisions for all processes."""
    import jax

    if jax.process_count() == 1:
        return lambda value: value

    return from_writer


def _local(devices: Any) -> list:
    """This process's devices among a mesh's (each process parses its own capture)."""
    import jax

    return [d for d in devices if d.process_index == jax.process_index()]


def _call_devices(call: TimedCall) -> list:
    """The devices the call's inputs live on (the device it ran on, for one device)."""
    import jax

    for a in call.args:
        if isinstance(a, jax.Array):
            return sorted(a.devices(), key=lambda d: d.id)
    return [jax.devices()[0]]


@dataclasses.dataclass(frozen=True)
class Captured:
    """A point's profiler session (every kernel and variant of the point): the stored file
    (None when it could not be kept) and its parsed records."""

    path: Path | None
    space: Any
    note: str | None = None


def _wall(call: TimedCall, cfg: TimingConfig, clock: Callable[[], float]) -> Any:
    with call.context():
        return time_function(call, call.args, config=cfg, donates=call.donates, clock=clock,
                             label=f"{call.variant} samples", in_order=_in_order(), agree=_agree())


def _program(call: TimedCall, num_calls: int) -> Callable[[int], Any]:
    """Call ``i`` of a capture on fresh arguments (made when the program starts: one
    program's copies alive at a time)."""
    sets: list = []

    def run(i: int) -> Any:
        if i == 0:
            sets[:] = [call.fresh_args() for _ in range(num_calls)]
        args, sets[i] = sets[i], None
        return call(*args)
    return run


def capture_point(readies: list["_Ready"], walls: dict[int, dict[str, tuple]], *,
                  stem: str | None = None) -> Captured | None:
    """One profiler session for every kernel and variant given (after their timing): the
    point's interleaved kernels, or one kernel's two variants (``stem``: the session's name)."""
    if not readies:
        return None
    job, cfg = readies[0].job, readies[0].job.timing
    if not cfg.capture or cfg.profiled_calls <= 0 or job.captures_dir is None:
        return None
    dest = cap.session_path(Path(job.captures_dir), stem or job.point_capture_stem or job.capture_stem)
    def unprofiled_s(r: "_Ready", v: str) -> float:  # the call's median wall time without the profiler
        wall = (walls.get(id(r)) or {}).get(v, (None, None))[0]
        return wall.summary.median_us * 1e-6 if wall is not None else 0.0

    programs = [(_program(r.calls[v], cfg.profiled_calls), r.calls[v].context, unprofiled_s(r, v))
                for r in readies for v in VARIANTS if v in r.calls]
    try:
        with phase("capture"):
            path = cap.capture_programs(programs, cfg.profiled_calls, dest, hlo=cfg.capture_hlo)
        with phase("capture parse"):
            return Captured(path, xspace.read(path))
    except cap.CaptureNotKept as err:  # the timing stands; only the file is lost
        return Captured(None, err.space, f"the profiler capture could not be kept ({err}); device time was read "
                                         "from it before it was discarded")


def _time_variant(call: TimedCall, cfg: TimingConfig, *, captured: Captured | None,
                  kernel_regex: str | None, clock: Callable[[], float],
                  devices: Any = None, wall: Any = None) -> tuple[record.TimingColumns, list[str],
                                                                  PerDeviceTiming | None]:
    """The variant's timing columns, its notes, and the per-device timing read from the point's capture.
    ``wall``: its wall-clock timing when already taken (interleaved with other kernels)."""
    with call.context():
        if wall is None:
            wall = _wall(call, cfg, clock)
        notes = list(wall.warnings)
        device, per_device, path = None, None, None
        if cfg.capture and cfg.profiled_calls > 0 and captured is not None:
            path, space = captured.path, captured.space
            if captured.note:
                notes.append(captured.note)
            with phase("capture parse"):
                per_device = per_device_timing(space, module_name=call.module_name, num_calls=cfg.profiled_calls,
                                               devices=devices if devices is not None else _call_devices(call),
                                               wall_latency_us=wall.summary.median_us, kernel_regex=kernel_regex)
            device = per_device.as_step()
            notes += device.warnings
    on_device_plane = device is not None and device.available and str(device.plane).startswith("/device:")
    if device is not None and device.available and not on_device_plane:
        notes.append(
            f"no device plane: the XLA op times of {call.module_name} on {device.plane} are kept in "
            "device_samples_us (host-side, with the profiler's per-op overhead); timing_source=wall"
        )
    if on_device_plane:
        per_call = device.per_call_us
        if call.variant == "excl_prep" and device.kernel_per_call_us:
            per_call = device.kernel_per_call_us  # the Pallas call alone, glue excluded
        elif call.variant == "excl_prep" and kernel_regex:
            notes.append(f"excl_prep: no op matched the kernel regex {kernel_regex!r}; the whole module's time "
                         "is used (the kernel call plus any glue XLA added)")
        with phase("statistics"):
            summary = summarize(per_call, cfg.stats, label="device samples")
        notes += [w for w in summary.warnings if w not in notes]
        source, samples, dev = "device", per_call, per_call
        if len(per_call) < cfg.num_samples:
            notes.append(f"device time rests on {len(per_call)} profiled calls (timing.capture_calls="
                         f"{cfg.capture_calls}) < timing.num_samples={cfg.num_samples}: its CI and any comparison "
                         "use these calls; raise timing.capture_calls (or leave it null: as many as num_samples)")
        if device.span_per_call_us is not None:
            span = statistics.median(device.span_per_call_us)
            notes.append(
                f"GPU latency = kernel busy time (union of the module's kernels per call, median "
                f"{summary.median_us:.1f} us); span first-kernel-start -> last-kernel-end {span:.1f} us "
                f"({span / summary.median_us:.2f}x, includes launch gaps widened by the profiler); "
                f"wall clock without the profiler {wall.summary.median_us:.1f} us")
    else:
        if cfg.capture and device is None:
            notes.append("no profiler capture (timing.capture=false or capture_calls=0); timing_source=wall")
        source, samples, summary = "wall", wall.samples_us, wall.summary
        dev = device.per_call_us if device is not None and device.available else None
    cols = record.timing_columns(
        source=source, samples_us=samples, summary=summary, wall=wall, device_samples_us=dev,
        compile_time_s=call.compile_time_s,
        capture_path=str(path) if (device is not None and cfg.keep_captures and path is not None) else None,
    )
    return cols, notes, per_device


class PointReference:
    """A point's reference output, computed once, when a kernel's check first needs it.

    The reference kernel with its default options computes exactly the reference (the
    same functions on the same inputs): when it is checked first at a point, its checked
    output stands in, and the point does not compile and run the reference a second time.
    """

    def __init__(self, compute: Callable[[], Any]) -> None:
        self._compute = compute
        self._value: Any = None

    def get(self) -> Any:
        if self._value is None:
            import jax

            with phase("reference"):
                self._value = jax.block_until_ready(self._compute())
        return self._value

    def offer(self, backend: Any, output: Any) -> None:
        if self._value is None and is_default_reference(backend):
            self._value = output


def is_default_reference(backend: Any) -> bool:
    return (isinstance(backend, ReferenceBackend) and backend.block_bytes == DEFAULT_BLOCK_BYTES
            and backend.extra_work == 0.0)


@dataclasses.dataclass
class KernelJob:
    """One kernel at one point: everything its measurement needs (see :func:`measure_kernel`)."""

    backend: Any
    interpret: bool
    inputs: Any
    reference: Any  # KernelOutput, or a PointReference computed on first use
    attn: Any
    causal: bool
    timing: TimingConfig
    roof: Roofline
    run: record.RunColumns
    point_cols: record.PointColumns
    kernel_cols: record.KernelColumns
    captures_dir: Path | None
    run_dir: Path | None = None
    capture_stem: str = "capture"
    point_capture_stem: str | None = None  # the point's one profiler session (every kernel and variant)
    kernel_regex: str | None = None  # None: from the call's meta (pallas_name_prefix)
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    clock: Callable[[], float] = time.perf_counter
    compiler_options: dict | None = None
    # several entries profiled in one capture session: each entry's own program names
    program_tag: str | None = None


def program_tag(label: str, index: int) -> str:
    """An identifier-safe, unique program-name suffix for a point's kernel entry."""
    return f"k{index}_" + re.sub(r"\W+", "_", label)[:40]


@dataclasses.dataclass
class _Ready:
    """A job built, compiled and checked correct: what its timing needs."""

    job: KernelJob
    prepared: Any
    calls: dict
    cost: Any
    cost_cols: record.CostColumns | None
    cost_notes: list[str]
    gate: record.GateColumns
    blocks: record.BlockColumns
    kernel_regex: str | None
    traffic: record.TrafficColumns | None = None
    account: Account | None = None  # the (point, kernel)'s shared phases


def measure_kernel(backend: Any, **kwargs: Any) -> list[dict]:
    """Rows (one per variant) for ``backend`` on ``inputs``; never raises for kernel errors."""
    return measure_job(KernelJob(backend=backend, **kwargs))


def measure_job(job: KernelJob) -> list[dict]:
    """:func:`measure_kernel` for a :class:`KernelJob`."""
    ready = _prepare(job)
    if isinstance(ready, list):
        return ready
    return _measure_ready(ready)


def _measure_ready(ready: "_Ready") -> list[dict]:
    """One kernel: both variants timed, then one capture session for both."""
    accounts = {v: Account() for v in VARIANTS}
    walls = {}
    for variant in VARIANTS:
        with scope(accounts[variant]):
            walls[variant] = (_wall(ready.calls[variant], ready.job.timing, ready.job.clock), None)
    with scope(ready.account or Account()):
        captured = capture_point([ready], {id(ready): walls}, stem=ready.job.capture_stem)
    try:
        return _finish(ready, walls, captured, accounts)
    finally:
        _discard(captured, [ready])


def _discard(captured: Captured | None, readies: list["_Ready"]) -> None:
    """``timing.keep_captures=false``: the file goes once every row has read it."""
    if captured is not None and captured.path is not None and readies and not readies[0].job.timing.keep_captures:
        captured.path.unlink(missing_ok=True)


def _with_phases(rows: list[dict], job_account: Account, variant_accounts: dict[str, Account]) -> list[dict]:
    """Each row's ``phase_seconds``: its variant's own phases, and the (point, kernel)'s shared ones."""
    out = []
    for row in rows:
        acc = variant_accounts.get(row.get("variant"))
        out.append(record.annotate(row, phase_seconds=json.dumps({"variant": acc.as_dict() if acc else {},
                                                                  "kernel": job_account.as_dict()}, sort_keys=True)))
    return out


def measure_interleaved(jobs: list[KernelJob], *, order: str = "alternate", seed: int = 0) -> list[list[dict]]:
    """Several kernels at one point, each built, compiled and checked, then timed with their
    samples interleaved (one sample of each in every round, :func:`.timing.interleave`), so
    drift on a shared host hits every side alike. Rows per job, as :func:`measure_kernel`."""
    readies = [_prepare(job) for job in jobs]
    timed = [r for r in readies if isinstance(r, _Ready)]
    walls: dict[int, dict[str, tuple]] = {id(r): {} for r in timed}
    if len(timed) > 1:
        cfg = timed[0].job.timing
        for variant in VARIANTS:
            samplers = []
            for r in timed:
                call = r.calls[variant]
                sampler = Sampler(call, call.args, config=r.job.timing, donates=call.donates, clock=r.job.clock,
                                  label=f"{variant} samples", in_order=_in_order(), agree=_agree())
                with call.context():
                    sampler.calibrate()
                samplers.append(sampler)
            positions = interleave(samplers, cfg, clock=timed[0].job.clock, agree=_agree(), order=order, seed=seed)
            for r, sampler, pos in zip(timed, samplers, positions):
                walls[id(r)][variant] = (sampler.result(), pos)
    for r in timed:  # a kernel timed alone (the others failed or were not timed): its own samples
        for variant in VARIANTS:
            if variant not in walls[id(r)]:
                walls[id(r)][variant] = (_wall(r.calls[variant], r.job.timing, r.job.clock), None)
    captured = capture_point(timed, walls)
    try:
        return [r if isinstance(r, list) else _finish(r, walls[id(r)], captured) for r in readies]
    finally:
        _discard(captured, timed)


def _prepare(job: KernelJob) -> "_Ready | list[dict]":
    """Build, compile and check ``job``: a :class:`_Ready`, or its final rows (failed,
    incorrect, or checked in interpret mode and not timed)."""
    account = Account()
    with scope(account):
        out = _prepare_in_scope(job)
    if isinstance(out, list):
        return _with_phases(out, account, {})
    out.account = account
    return out


def _prepare_in_scope(job: KernelJob) -> "_Ready | list[dict]":
    import jax

    inputs, timing = job.inputs, job.timing
    batch, model = inputs.batch, inputs.model
    try:
        cost = cost_of(batch, model, job.attn, causal=job.causal)
        cost_cols, cost_notes = record.cost_columns(cost), []
    except Exception as exc:  # noqa: BLE001 - a row with its error, never a missing row
        cost, cost_cols, cost_notes = None, None, [f"cost model failed: {error_text(exc)}"]
    blocks = record.BlockColumns(None, None)
    traffic = None

    def rows(status: str, *, error: str | None = None, gate: record.GateColumns | None = None,
             timings: dict | None = None, notes: tuple[str, ...] = ()) -> list[dict]:
        return [record.build_row(job.run, job.point_cols, job.kernel_cols, variant=v, status=status, error=error,
                                 warnings=[*cost_notes, *notes], blocks=blocks, cost=cost_cols, gate=gate,
                                 timing=(timings or {}).get(v), traffic=traffic) for v in VARIANTS]

    kernel_regex = job.kernel_regex
    try:
        with phase("compile"):
            prepared = job.backend.build(model, job.attn, batch, interpret=job.interpret)
            blocks = record.BlockColumns.from_meta(prepared.meta)
            traffic = traffic_columns(job.backend, model, job.attn, batch, cost)
            check_only = job.interpret and not timing.time_interpret
            calls = build_timed_calls(prepared, inputs, context=job.context, clock=job.clock,
                                      compiler_options=job.compiler_options, program_tag=job.program_tag,
                                      variants=("incl_prep",) if check_only else VARIANTS)
        with phase("check"):
            check = calls["incl_prep"]
            with check.context():
                out = prepared.finish(check(*check.fresh_args()))
                jax.block_until_ready(out)
            tolerance = tolerance_for(model)
            reference = job.reference
            if isinstance(reference, PointReference):
                reference.offer(job.backend, out)
                reference = reference.get()
            max_abs_err, ok = compare_outputs(
                out, reference, inputs, tolerance=tolerance,
                scratch_tail=getattr(job.backend.capabilities, "writes_own_page_tail", False))
        del out  # a full KV cache: free it before timing
        prefix = (prepared.meta or {}).get("pallas_name_prefix")
        if kernel_regex is None and prefix:
            kernel_regex = "^" + re.escape(str(prefix))
    except Exception as exc:  # noqa: BLE001
        return rows(Status.FAILED, error=error_text(exc))
    gate = record.GateColumns(max_abs_err=float(max_abs_err), tolerance=tolerance)
    if not ok:
        return rows(Status.INCORRECT, error=f"max_abs_err={max_abs_err:.3g} exceeds tolerance={tolerance:g}; not timed",
                    gate=gate)
    compile_cols = {v: record.TimingColumns(compile_time_s=calls[v].compile_time_s) for v in VARIANTS if v in calls}
    if job.interpret and not timing.time_interpret:
        # correct, with interpret=True and no timing: the status says the kernel passed
        note = (f"checked ok in interpret mode (max_abs_err={max_abs_err:.2g} <= {tolerance:g}), not timed: "
                "Pallas interpret-mode timings are not kernel performance (timing.time_interpret=true times them "
                "anyway)")
        return rows(Status.OK, gate=gate, timings=compile_cols, notes=(note,))
    return _Ready(job, prepared, calls, cost, cost_cols, cost_notes, gate, blocks, kernel_regex, traffic=traffic)


def _finish(ready: _Ready, walls: dict, captured: Captured | None,
            accounts: dict[str, Account] | None = None) -> list[dict]:
    """The rows from each variant's wall samples and the point's capture."""
    out_rows = []
    accounts = accounts or {v: Account() for v in VARIANTS}
    for variant in VARIANTS:
        with scope(accounts[variant]):
            out_rows.append(_finish_variant(ready, walls, variant, captured))
    out_rows = _check_incl_not_below_excl(out_rows)
    return _with_phases(out_rows, ready.account or Account(), accounts)


def _check_incl_not_below_excl(rows: list[dict]) -> list[dict]:
    """incl_prep does everything excl_prep does and more: faster beyond the CIs is a measurement problem."""
    by = {r.get("variant"): r for r in rows if r.get("status") == Status.OK}
    excl, incl = by.get("excl_prep"), by.get("incl_prep")
    if not excl or not incl:
        return rows
    hi, lo = incl.get("latency_ci_high_us"), excl.get("latency_ci_low_us")
    if hi is not None and lo is not None and hi < lo:
        note = (f"incl_prep ({incl['latency_us']:.1f} us, CI high {hi:.1f}) is faster than excl_prep "
                f"({excl['latency_us']:.1f} us, CI low {lo:.1f}) beyond noise although it does more work: "
                "a measurement artefact (host noise, caches, dispatch); do not read the difference as prep cost")
        return [record.annotate(r, warnings=[note]) if r is excl or r is incl else r for r in rows]
    return rows


def _finish_variant(ready: _Ready, walls: dict, variant: str, captured: Captured | None) -> dict:
    job, prepared, calls, cost = ready.job, ready.prepared, ready.calls, ready.cost
    kernel_regex, timing = ready.kernel_regex, job.timing

    def row(status: str, **parts: Any) -> dict:
        return record.build_row(job.run, job.point_cols, job.kernel_cols, variant=variant, status=status,
                                blocks=ready.blocks, cost=ready.cost_cols, gate=ready.gate, traffic=ready.traffic,
                                **parts)

    try:
        sharded = prepared.plan is not None
        wall, order = walls.get(variant, (None, None))
        cols, notes, per_device = _time_variant(calls[variant], timing, captured=captured,
                                                kernel_regex=kernel_regex if variant == "excl_prep" else None,
                                                clock=job.clock, devices=_local(prepared.devices) if sharded else None,
                                                wall=wall)
        if order is not None:
            cols = dataclasses.replace(cols, sample_order=list(order))
            notes.insert(0, "samples interleaved with the other kernels of this point "
                            f"({timing.interleave_order} order); wall_samples_us are paired by index")
        mesh = None
        if sharded:  # per-device times, load imbalance (rpa_bench.parallel)
            mesh, mesh_notes = row_updates(
                job.backend, prepared.plan, job.attn, timing_source=cols.timing_source, per_device=per_device,
                module_name=calls[variant].module_name, num_calls=timing.profiled_calls,
                wall_latency_us=cols.wall_latency_us, device_spec=job.roof.device, kernel_regex=kernel_regex,
                kernel_only=variant == "excl_prep", ckv=cost_ckv(job.causal))
            notes += [n for n in mesh_notes if n not in notes]
        if cols.capture_path and job.run_dir is not None:
            cols = dataclasses.replace(cols, capture_path=str(Path(cols.capture_path).relative_to(job.run_dir)))
        if job.interpret:
            notes.insert(0, "Pallas interpret mode: this timing is NOT kernel performance")
        metrics = None
        if cost is not None:
            metrics, metric_notes = metrics_of(cost, cols.latency_us, job.roof)
            notes += metric_notes
        return row(Status.OK, warnings=[*ready.cost_notes, *notes], timing=cols, metrics=metrics, mesh=mesh)
    except Exception as exc:  # noqa: BLE001
        return row(Status.FAILED, warnings=ready.cost_notes, error=error_text(exc),
                   timing=record.TimingColumns(compile_time_s=calls[variant].compile_time_s))
