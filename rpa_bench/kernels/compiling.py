"""Compile a backend's kernel call for a real TPU generation on a machine without a TPU.

libtpu holds the whole TPU compiler and works as a compile-only client off TPU: a
topology from ``jax.experimental.topologies`` gives TPU devices to compile for while
``jax.devices()`` stays CPU. The call is traced from abstract inputs placed on a topology
device (``ShapeDtypeStruct(..., sharding=SingleDeviceSharding(dev))``), under
``jax.default_device(dev)`` (``pltpu.get_tpu_info()`` reads the default device) with the
kernel module's ``get_tpu_version()`` answering for the target, then lowered and compiled
by the real Mosaic + XLA:TPU compiler. What that proves: it compiles, it fits VMEM and
HBM, how much of each it uses. What it cannot: speed.

Facts kept per compile: status (``ok`` / ``vmem_oom`` / ``hbm_oom`` / ``failed`` /
``timeout`` / ``skipped``), compile seconds, VMEM used per Mosaic kernel (the
``used_scoped_memory_configs`` of each custom call in ``compiled.as_text()``) against the
generation's VMEM and the kernel's own estimate, the HBM footprint
(``compiled.memory_analysis()``; ``cost_analysis()`` skips Mosaic calls and is not used),
and optionally (``schedule=True``) the static bundle count per kernel from libtpu's LLO
dumps. Compiles can run for minutes when a kernel spills: :func:`compile_many` runs each
in a worker process with a per-compile timeout.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import functools
import glob
import multiprocessing
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

from rpa_bench.kernels import tpu_target
from rpa_bench.kernels.base import check_capabilities
from rpa_bench.kernels.generations import TOPOLOGIES, generation_kind
from rpa_bench.kernels.isolated import kill_pool
from rpa_bench.kernels.lowering import _for_generation, abstract_kernel_args
from rpa_bench.kernels.registry import kernel_config_from_dict
from rpa_bench.workloads.materialize import host_available_bytes

STATUSES = ("ok", "vmem_oom", "hbm_oom", "failed", "timeout", "skipped")
_USED_VMEM = re.compile(r'"used_scoped_memory_configs":\[(.*?)\]')
_SIZE = re.compile(r'"size":"?(\d+)"?')
_CUSTOM_CALL_LINE = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=.*custom-call\(.*custom_call_target=\"tpu_custom_call\"")
_BUNDLES = re.compile(r"total scheduled bundles:\s*(\d+)")
_DUMP_NAME = re.compile(r"^\d+-(?P<name>.+)-\d+-schedule-analysis")


def libtpu_status() -> tuple[bool, str]:
    """(available, reason): whether the compile-only TPU client can be used here."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return False, "libtpu not installed (pip install libtpu==0.0.48, or make setup)"
    return True, ""


@functools.lru_cache(maxsize=None)
def topology_devices(generation: str) -> tuple:
    """The TPU devices of one chip of ``generation`` (compile targets; nothing runs on them)."""
    from jax.experimental import topologies

    name, kwargs = TOPOLOGIES[generation_kind(generation)]
    return tuple(topologies.get_topology_desc(name, "tpu", **kwargs).devices)


@dataclasses.dataclass(frozen=True)
class CompileResult:
    kernel: str  # label (kernel name, or the run entry's label)
    generation: str  # device kind
    case: str
    status: str  # one of STATUSES
    compile_s: float = 0.0  # trace + lower + compile (not kernel performance)
    vmem_used_bytes: dict = dataclasses.field(default_factory=dict)  # Mosaic kernel -> bytes (max over cores)
    vmem_capacity_bytes: int | None = None  # per TensorCore of the generation
    vmem_estimate_bytes: int | None = None  # the kernel's own estimate (largest of its cases), if it has one
    vmem_limit_bytes: int | None = None  # the scoped VMEM limit the kernel asked for
    hbm: dict = dataclasses.field(default_factory=dict)  # memory_analysis: argument/output/alias/temp/code bytes
    bundles: dict = dataclasses.field(default_factory=dict)  # kernel -> total scheduled bundles (schedule=True)
    block_sizes: dict = dataclasses.field(default_factory=dict)
    error: str | None = None
    provenance: dict = dataclasses.field(default_factory=dict)

    @property
    def vmem_used_max_bytes(self) -> int | None:
        return max(self.vmem_used_bytes.values()) if self.vmem_used_bytes else None

    @property
    def vmem_headroom(self) -> float | None:
        """1 - used / capacity of the largest Mosaic kernel (None without a figure)."""
        used = self.vmem_used_max_bytes
        if used is None or not self.vmem_capacity_bytes:
            return None
        return 1.0 - used / self.vmem_capacity_bytes

    def to_row(self) -> dict:
        mib = 1 << 20
        used = self.vmem_used_max_bytes
        return {
            "kernel": self.kernel, "generation": self.generation, "case": self.case, "status": self.status,
            "compile_s": round(self.compile_s, 2),
            "vmem_used_MiB": None if used is None else round(used / mib, 2),
            "vmem_MiB": None if self.vmem_capacity_bytes is None else round(self.vmem_capacity_bytes / mib, 1),
            "estimate_MiB": None if self.vmem_estimate_bytes is None else round(self.vmem_estimate_bytes / mib, 2),
            "hbm_MiB": round(hbm_footprint_bytes(self.hbm) / mib, 1) if self.hbm else None,
            "bundles": ", ".join(f"{k}:{v}" for k, v in self.bundles.items()) or None,
            "error": self.error or "",
        }

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"vmem_headroom": self.vmem_headroom}


def classify(message: str) -> str:
    """The status of a failed compile from the compiler's message."""
    text = message.lower()
    if "vmem" in text and ("resource_exhausted" in text or "out of memory" in text or "oom" in text
                           or "would exceed memory" in text):
        return "vmem_oom"
    if "compiletimescopedvmemoom" in text:
        return "vmem_oom"
    if "resource_exhausted" in text or "out of memory" in text:
        return "hbm_oom"
    return "failed"


def short_error(exc: BaseException, limit: int = 400) -> str:
    """The compiler's message, first meaningful lines, bounded (never a traceback)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("The stack trace", "For simplicity", "---"))][:3]
    text = f"{type(exc).__name__}: " + " | ".join(keep)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def vmem_used(compiled_text: str) -> dict[str, int]:
    """Per Mosaic custom call in compiled HLO text: the scoped VMEM it uses (bytes)."""
    out: dict[str, int] = {}
    for line in compiled_text.splitlines():
        m = _CUSTOM_CALL_LINE.match(line)
        if not m:
            continue
        used = _USED_VMEM.search(line)
        if used:
            size = sum(int(s) for s in _SIZE.findall(used.group(1)))
            out[m.group("name")] = max(out.get(m.group("name"), 0), size)
    return out


def hbm_of(compiled: Any) -> dict:
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    return {"argument_bytes": int(stats.argument_size_in_bytes), "output_bytes": int(stats.output_size_in_bytes),
            "alias_bytes": int(stats.alias_size_in_bytes), "temp_bytes": int(stats.temp_size_in_bytes),
            "code_bytes": int(stats.generated_code_size_in_bytes)}


def hbm_footprint_bytes(hbm: dict) -> int:
    """Arguments + outputs + temporaries + code of a compiled program (from :func:`hbm_of`)."""
    return int(sum(hbm.get(k, 0) for k in ("argument_bytes", "output_bytes", "temp_bytes", "code_bytes")))


def bundles_in(dump_dir: str) -> dict[str, int]:
    """``total scheduled bundles`` per kernel from libtpu's schedule-analysis dumps."""
    out: dict[str, int] = {}
    for path in glob.glob(os.path.join(dump_dir, "**", "*schedule-analysis*"), recursive=True):
        try:
            with open(path, errors="replace") as f:
                m = _BUNDLES.search(f.read(4096))
        except OSError:
            continue
        name = _DUMP_NAME.match(os.path.basename(path))
        if m and name:
            out[name.group("name")] = max(out.get(name.group("name"), 0), int(m.group(1)))
    return out


def place_on(tree: Any, sharding: Any) -> Any:
    """Abstract arrays (ShapeDtypeStruct) placed with ``sharding``; other leaves unchanged."""
    import jax

    def one(a: Any) -> Any:
        if isinstance(a, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)
        return a

    return jax.tree.map(one, tree)


def compile_for_tpu(backend: Any, model: Any, attn: Any, batch: Any, generation: str, *, case: str = "",
                    label: str | None = None, padding: dict | None = None) -> CompileResult:
    """Compile ``backend``'s kernel call (as ``rpa-bench lower`` lowers it) for one TensorCore of
    ``generation``. Never raises for kernel or compiler errors: they are the result's status.
    In-process and without a time limit: :func:`compile_many` adds both (and bundle counts)."""
    import jax
    from jax.sharding import SingleDeviceSharding

    kind = generation_kind(generation)
    name = label or backend.name
    ok, reason = libtpu_status()
    if not ok:
        return CompileResult(name, kind, case, "skipped", error=reason)
    try:  # a case the kernel declares it cannot take (page size, chunked prefill, ...) is not a failure
        check_capabilities(backend.name, backend.capabilities, model, attn, batch)
    except ValueError as exc:
        return CompileResult(name, kind, case, "skipped", error=str(exc))
    try:
        provenance = backend.provenance().as_dict()
    except Exception as exc:  # noqa: BLE001 - provenance is informative; a compile can still be tried
        provenance = {"kernel": name, "error": str(exc)}
    start = time.perf_counter()
    capacity = int(tpu_target.tpu_info(kind).vmem_capacity_bytes)
    meta: dict = {}
    try:
        dev = topology_devices(kind)[0]
        target = _for_generation(backend, kind)
        if getattr(target, "check_vmem_estimate", False):
            target = copy.copy(target)
            target.check_vmem_estimate = False  # the compiler, not the estimate, decides what fits
        call = target.build(model, attn, batch, interpret=False)
        meta = dict(call.meta or {})
        args = place_on(abstract_kernel_args(call, batch, model, **(padding or {})), SingleDeviceSharding(dev))
        module = target.module() if hasattr(target, "module") else None
        with jax.default_device(dev), tpu_target.as_tpu(module, kind), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
            lowered = jax.jit(call.kernel).trace(*args).lower()
            compiled = lowered.compile()
        text = compiled.as_text()
        result = CompileResult(
            name, kind, case, "ok", time.perf_counter() - start, vmem_used(text), capacity,
            _estimate(target, model, meta), meta.get("vmem_limit_bytes"), hbm_of(compiled),
            {}, _block_sizes(meta), None, provenance)
    except Exception as exc:  # noqa: BLE001 - a failed compile is a result, not a crash
        msg = short_error(exc)
        result = CompileResult(name, kind, case, classify(str(exc)), time.perf_counter() - start, {}, capacity,
                               _estimate(backend, model, meta), meta.get("vmem_limit_bytes"), {}, {},
                               _block_sizes(meta), msg, provenance)
    return result


def _block_sizes(meta: dict) -> dict:
    out = {k: list(v) for k, v in (meta.get("block_sizes") or {}).items() if v is not None}
    return out


def _estimate(backend: Any, model: Any, meta: dict) -> int | None:
    """The kernel's own VMEM estimate for its largest case, where the backend offers one."""
    fn = getattr(backend, "vmem_estimate_bytes", None)
    if fn is None or not meta:
        return None
    try:
        return fn(model, meta)
    except Exception:  # noqa: BLE001 - an estimate is informative only
        return None


# ------------------------------------------------------------------ worker processes


@dataclasses.dataclass(frozen=True)
class CompileJob:
    """One compile, picklable: the backend is rebuilt from its kernel config in the worker."""

    kernel: dict  # kernel config (registry.kernel_config_from_dict)
    label: str
    model: Any
    attn: Any
    batch: Any
    generation: str
    case: str
    schedule: bool = False
    padding: dict | None = None


def _run_job(job: CompileJob) -> CompileResult:
    import rpa_bench  # noqa: F401 - a spawned worker: the package import sets libtpu's environment before JAX

    backend = kernel_config_from_dict(job.kernel).backend()
    return compile_for_tpu(backend, job.model, job.attn, job.batch, job.generation, case=job.case,
                           label=job.label, padding=job.padding)


def _worker_init(schedule_dir: str | None) -> None:
    # libtpu reads its dump flags once, when it loads: a worker asked for bundle counts
    # gets them in its environment before anything imports JAX.
    if schedule_dir:
        os.environ["LIBTPU_INIT_ARGS"] = (os.environ.get("LIBTPU_INIT_ARGS", "") + f" --xla_jf_dump_to={schedule_dir}"
                                          " --xla_jf_dump_llo_text=true --xla_jf_dump_llo_pass_label_regex=final").strip()


class Eta:
    """``[done/total] elapsed, ETA`` for a progress line (the mean time per finished job)."""

    def __init__(self, total: int, clock=time.perf_counter) -> None:
        self.total, self.count, self.clock = total, 0, clock
        self.start = clock()

    def done(self) -> str:
        self.count += 1
        elapsed = self.clock() - self.start
        left = elapsed / self.count * (self.total - self.count)
        return f"[{self.count}/{self.total}] {elapsed:.0f} s, ETA {left:.0f} s"


COMPILE_BYTES = 2 * 2**30  # host memory one serving-size compile may take (measured 1-2 GiB): bounds the workers


def default_workers(num_jobs: int) -> int:
    """Compile workers on this machine: every core, bounded by available memory (one
    COMPILE_BYTES each, one kept for the rest) and by the jobs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    avail = host_available_bytes()
    by_memory = cores if avail is None else max(1, avail // COMPILE_BYTES - 1)
    return max(1, min(cores, by_memory, num_jobs))


def compile_many(jobs: Sequence[CompileJob], *, timeout_s: float, progress: Any = None,
                 timeout_field: str = "compile.timeout_s", workers: int | None = None,
                 engine: Any = None) -> list[CompileResult]:
    """Each job in a worker process, killed past ``timeout_s`` (``timeout_field``: the
    setting that sets it, named in a timeout's message); ``workers`` lanes in parallel
    (None: :func:`default_workers`), each lane one reused worker process with its own
    schedule-dump folder. Results in the jobs' order.

    A compile that times out or kills its worker is a ``timeout`` / ``failed`` result and the
    lane's next job gets a fresh worker. ``progress(result)`` is called after each (from the
    lanes' threads, one at a time).
    """
    ok, reason = libtpu_status()
    if not ok:
        out = [CompileResult(j.label, generation_kind(j.generation), j.case, "skipped", error=reason) for j in jobs]
        for r in out:
            if progress:
                progress(r)
        return out
    jobs = list(jobs)
    if engine is not None and engine.is_ray:
        return _compile_on_ray(jobs, timeout_s=timeout_s, progress=progress, timeout_field=timeout_field,
                               engine=engine)
    n = max(1, min(int(workers) if workers else default_workers(len(jobs)), len(jobs) or 1))
    results: list[CompileResult | None] = [None] * len(jobs)
    queue = list(enumerate(jobs))
    lock = threading.Lock()
    live: list = []  # every lane's worker pool, to stop them on an interrupt

    def lane() -> None:
        ctx = multiprocessing.get_context("spawn")
        pool: concurrent.futures.ProcessPoolExecutor | None = None
        schedule_dir = None

        def fresh() -> concurrent.futures.ProcessPoolExecutor:
            return concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_worker_init,
                                                          initargs=(schedule_dir,))

        try:
            while True:
                with lock:
                    if not queue:
                        return
                    index, job = queue.pop(0)
                if job.schedule and schedule_dir is None:
                    schedule_dir = tempfile.mkdtemp(prefix="rpa_bench_llo_")
                    if pool is not None:
                        kill_pool(pool)
                        pool = None
                if pool is None:
                    pool = fresh()
                    with lock:
                        live.append(pool)
                start = time.perf_counter()
                fut = pool.submit(_run_job, job)
                try:
                    res = fut.result(timeout=timeout_s)
                    if job.schedule and schedule_dir:
                        mosaic = {k.split(".")[0] for k in res.vmem_used_bytes}  # the Mosaic kernels only
                        res = dataclasses.replace(res, bundles={k: v for k, v in bundles_in(schedule_dir).items()
                                                                if k.split(".")[0] in mosaic})
                        for f in glob.glob(os.path.join(schedule_dir, "*")):
                            _remove(f)
                except concurrent.futures.TimeoutError:
                    kill_pool(pool)
                    pool = None
                    res = CompileResult(job.label, generation_kind(job.generation), job.case, "timeout",
                                        time.perf_counter() - start,
                                        error=f"compile did not finish within {timeout_s:g} s ({timeout_field})")
                except Exception as exc:  # noqa: BLE001 - the worker died (e.g. killed for memory)
                    kill_pool(pool)
                    pool = None
                    res = CompileResult(job.label, generation_kind(job.generation), job.case, "failed",
                                        time.perf_counter() - start, error=short_error(exc))
                with lock:
                    results[index] = res
                    if progress:
                        progress(res)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if schedule_dir:
                _remove(schedule_dir)

    if n == 1:
        lane()
    else:
        threads = [threading.Thread(target=lane, name=f"rpa_bench-compile-{i}", daemon=True) for i in range(n)]
        for th in threads:
            th.start()
        try:
            for th in threads:
                while th.is_alive():  # joined in slices: Ctrl-C / SIGTERM still reach the main thread
                    th.join(0.2)
        except BaseException:
            with lock:
                queue.clear()  # no lane starts another job
                pools = list(live)
            for pool in pools:
                kill_pool(pool)
            raise
    return [r for r in results if r is not None]


def _compile_on_ray(jobs: list[CompileJob], *, timeout_s: float, progress: Any, timeout_field: str,
                    engine: Any) -> list[CompileResult]:
    """Each job a Ray task (compile-only: CPUs and memory, no accelerator); results in the
    jobs' order, ``progress`` called on the driver as each arrives. Bundle counts
    (``compile.schedule``) need the local engine: libtpu's dump folder is per worker process."""
    from rpa_bench import engine as eng  # the Ray path only: the local path never needs it

    results: list[CompileResult | None] = [None] * len(jobs)
    plain = [dataclasses.replace(j, schedule=False) for j in jobs]
    for index, res in eng.map_as_completed(_run_job, plain, engine, timeout_s=timeout_s):
        job = jobs[index]
        if isinstance(res, eng.TaskFailure):
            status = "timeout" if res.timed_out else "failed"
            error = (f"compile did not finish within {timeout_s:g} s ({timeout_field})" if res.timed_out
                     else f"Ray task failed: {res.error}")
            res = CompileResult(job.label, generation_kind(job.generation), job.case, status, error=error)
        results[index] = res
        if progress:
            progress(res)
    return [r for r in results if r is not None]


def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)
