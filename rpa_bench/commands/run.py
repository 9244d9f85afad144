"""``rpa-bench run``: measure kernels on workloads; store the results under results/<run>/.

    rpa-bench run experiment=paper_decode
    rpa-bench run experiment=main_cpu scale=cpu_smoke timing=quick
    rpa-bench run experiment=paper_decode run.name=decode-1          # resumes if it exists
    rpa-bench run -m hydra/launcher=joblib kernel=reference,rpa_v3  # one run folder per job

Workloads and kernels: ``run.workloads`` / ``run.kernels`` list names of ``conf/workload``
/ ``conf/kernel`` entries (an entry may be ``{use: <name>, <field>: <value>, ...}`` to
override fields); when null, or when the command line sets ``workload=`` / ``kernel=``
(or one of their fields), the single ``workload`` / ``kernel`` group is used. Each
listed entry is composed by Hydra with the run's other overrides.

Run folder: ``results/<run.name>/``; with ``-m`` each job gets
``results/<run.name>/<job number>/``. A folder that already holds a run is resumed:
finished (point, kernel) pairs are kept, the rest measured. A different config is refused.

Multi-host (``distributed:`` in conf/config.yaml, or ``RPA_BENCH_DISTRIBUTED=1``): every
host runs the same command; JAX joins them before its first device use, every process
measures every point on the global mesh, and only process 0 writes the run folder. The
writer decides what a resumed run skips (or refuses the config) for all processes.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

import rpa_bench
from rpa_bench.commands import _hydra, report
from rpa_bench.commands._hydra import compose, run_hydra
from rpa_bench.measure.host import fix_mmap_threshold
from rpa_bench.measure.phases import Account, one_line, overhead_ratio, phase, scope, since_import
from rpa_bench.paths import output_folder_problem
from rpa_bench.pipeline.plan import check_run_name, plan_from_config
from rpa_bench.pipeline.summary import final_table
from rpa_bench.parallel import distributed
from rpa_bench.status import Status
from rpa_bench.store.rows import now_utc
from rpa_bench.store.run_store import RunStore



def _run_dir(cfg: DictConfig) -> tuple[Path, str]:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir).parent
    results = Path(str(cfg.run.results_dir))
    try:
        run_id = run_dir.resolve().relative_to(results.resolve()).as_posix()
    except ValueError:
        run_id = run_dir.name
    return run_dir, run_id


CTRL_C_AWARE = True  # reads rpa_bench.CTRL_C: a Ctrl-C while starting up ends the run at its first safe point


def task(cfg: DictConfig) -> int:
    import logging

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU backend" is not news
    interrupted = _SIGINT
    interrupted.update(sigint=rpa_bench.CTRL_C["pressed"], armed=False)  # pressed while the command started

    def on_int(signum, frame):
        # Remembered, so a Ctrl-C that a library swallows still ends the run. Raised only once
        # the sweep runs: during start-up an exception raised inside a native module's import
        # (jaxlib's nanobind) aborts the whole process, so start-up checks the flag at safe points.
        interrupted["sigint"] = True
        if interrupted["armed"]:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_int)
    try:
        rc = _task(cfg)
        if interrupted["sigint"] and rc == 0:
            _mark_interrupted(cfg)
            print("rpa-bench run: interrupted", file=sys.stderr)
            return 130
        return rc
    except ValueError as exc:  # config problems: a clear message, no traceback
        print(f"rpa-bench run: {exc}", file=sys.stderr)
        _remove_unstarted_run_dir(cfg)
        return 2
    except KeyboardInterrupt:  # during start-up, before any point: nothing measured to keep
        _mark_interrupted(cfg)
        print("\nrpa-bench run: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the results folder cannot be written (read-only, disk full)
        print(f"rpa-bench run: cannot write the run folder: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)


_SIGINT = {"sigint": False, "armed": False}


def _checkpoint(*, arm: bool = False) -> None:
    """A safe point of start-up: raise the Ctrl-C that arrived meanwhile; ``arm``: from here on
    Ctrl-C raises at once (the sweep keeps every finished point)."""
    if _SIGINT["sigint"]:
        raise KeyboardInterrupt
    if arm:
        _SIGINT["armed"] = True


def _mark_interrupted(cfg: DictConfig) -> None:
    """The stored run (if any) says interrupted; a run folder never started is removed."""
    try:
        run_dir, _ = _run_dir(cfg)
        store = RunStore(run_dir)
        if store.exists():
            if store.read_manifest().get("status") == "running":
                store.update_manifest(status="interrupted", interrupted_utc=now_utc())
        else:
            _remove_unstarted_run_dir(cfg)
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass


def _remove_unstarted_run_dir(cfg: DictConfig) -> None:
    """A refused config leaves no folder behind: the run folder Hydra made for this call is
    removed when it holds nothing but Hydra's own log folder (never an existing run)."""
    import shutil

    try:
        run_dir, _ = _run_dir(cfg)
    except Exception:  # noqa: BLE001 - nothing to clean
        return
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {"hydra"}:
        shutil.rmtree(run_dir, ignore_errors=True)


def _task(cfg: DictConfig) -> int:
    from rpa_bench.pipeline import execute, point, summary  # noqa: F401 - imported here: start-up
    from rpa_bench.store import run_store  # noqa: F401 - imported here: start-up

    _checkpoint()
    held: list[Any] = []  # run stores whose lock this process holds
    account = Account()
    account.add("start-up", since_import())  # imports, Hydra, config, JAX init: until the run's first work
    try:
        with scope(account):
            return _task_body(cfg, held, account)
    finally:
        for store in held:
            store.release_lock()


def _task_body(cfg: DictConfig, held: list, account: Any) -> int:
    import shutil
    import tempfile

    from hydra.core.hydra_config import HydraConfig

    from rpa_bench.pipeline import prepare, run as pipeline_run  # imports JAX: loaded when the command runs

    t0 = time.perf_counter()
    config = _hydra.container(cfg)
    # multi-host: join the other processes before the first JAX device use (no-op when disabled)
    distributed.initialize(distributed.DistributedConfig.from_config(config.get("distributed")))
    import jax

    with phase("start-up"):
        jax.devices()  # backend initialisation: start-up, paid once per process
    _checkpoint()
    experiment = HydraConfig.get().runtime.choices.get("experiment") or "adhoc"
    from hydra import compose as hydra_compose

    task_overrides = list(HydraConfig.get().overrides.task)
    workloads = _hydra.compose_entries("workload", cfg.run.get("workloads"), cfg.workload, task_overrides, hydra_compose)
    kernels = _hydra.compose_entries("kernel", cfg.run.get("kernels"), cfg.kernel, task_overrides, hydra_compose)
    config["composed"] = {"workloads": workloads, "kernels": kernels}
    plan = plan_from_config(config, workloads=workloads, kernels=kernels, experiment=str(experiment))
    with phase("workload build"):
        prep = prepare.prepare_run(plan)  # every check, before anything is allocated
    _checkpoint()
    if prep.platform == "cpu":  # repeatable CPU timings (see rpa_bench/measure/host.py)
        fix_mmap_threshold()

    run_dir, run_id = _run_dir(cfg)
    writer = distributed.is_writer()
    decision: dict[str, Any] = {"error": None, "done": []}
    if writer:
        store = RunStore(run_dir)
        store.acquire_lock()  # a second run with this run.name is refused (RunLockedError)
        held.append(store)
        try:
            decision["done"] = sorted(list(k) for k in pipeline_run.open_run(
                store, config, prep, run_id, command=["rpa-bench", "run", *sys.argv[1:]]))
        except ValueError as exc:
            decision["error"] = str(exc)
    else:  # only the writer stores rows; this process keeps its own captures aside until the end
        store = RunStore(tempfile.mkdtemp(prefix=f"rpa-bench-process{distributed.process_index()}-"))
    decision = distributed.from_writer(decision)  # every process skips / refuses the same
    if decision["error"]:
        raise ValueError(decision["error"])
    if not writer:
        try:
            return _follow(prep, store, run_id, {tuple(k) for k in decision["done"]}, run_dir)
        finally:
            shutil.rmtree(store.root, ignore_errors=True)

    stop = {"requested": False}

    def on_term(signum, frame):  # SIGTERM as Ctrl-C: stop now; finished points are kept (atomic parts)
        stop["requested"] = True
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        _checkpoint(arm=True)
        from hydra.types import RunMode

        # a sweep's jobs may run in parallel processes: their bars would overwrite each other,
        # so each job prints its summary when it ends instead
        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        outcome = pipeline_run.measure_into(
            prep, store, run_id=run_id, done={tuple(k) for k in decision["done"]},
            progress=bool(cfg.run.get("progress", True)) and not multirun, should_stop=lambda: stop["requested"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    if outcome.status == "interrupted":
        print(f"\nrpa-bench run: interrupted; finished points are kept. Resume with the same command "
              f"and run.name={plan.run_name}", file=sys.stderr)
        return 130
    if outcome.status == "failed":
        print(f"rpa-bench run: stopped: a result could not be written ({outcome.reason}); the parts already "
              f"written are kept. Free space or fix permissions, then resume with run.name={plan.run_name}",
              file=sys.stderr)
        return 1

    wall = since_import()
    seconds = account.as_dict()
    seconds["other"] = round(max(0.0, wall - account.total()), 4)
    ratio = overhead_ratio(seconds, wall)
    df = pipeline_run.complete_run(store, wall_time_s=round(time.perf_counter() - t0, 1), phases=seconds,
                                   process_wall_s=round(wall, 3),
                                   overhead_ratio=None if ratio is None else round(ratio, 3))
    counts = df.groupby("status").size().to_dict()

    if _hydra.JSON_OUTPUT:
        import json

        ok = df[(df["status"] == Status.OK) & ~df["interpret"].fillna(False).astype(bool)]
        print(json.dumps({"results": str(run_dir), "rows": len(df), "status_counts": counts,
                          "wall_s": round(wall, 1), "phases": seconds, "overhead_ratio": ratio,
                          "timed": json.loads(ok[["workload", "point_id", "kernel", "variant", "latency_us",
                                                  "timing_source", "mbu_pct", "mfu_pct"]].to_json(orient="records"))},
                         indent=1, default=str))
        return 0
    print()
    print(final_table(df))
    print(f"\n{len(df)} rows ({', '.join(f'{k}={v}' for k, v in sorted(counts.items()))}) in "
          f"{time.perf_counter() - t0:.0f} s" + interpret_note(df))
    print(one_line(seconds, wall))
    print(f"results: {run_dir}")
    if cfg.run.get("report"):
        if report.main([str(run_dir)]) != 0:
            print(f"rpa-bench run: the report could not be rendered; try rpa-bench report {run_dir}",
                  file=sys.stderr)
    else:
        print(f"report:  rpa-bench report {run_dir}")
    return 0


def interpret_note(df: Any) -> str:
    """The caveat about interpret-mode timings, only where the run has such timings."""
    timed = df["interpret"].fillna(False).astype(bool) & df["latency_us"].notna() if len(df) else []
    return "; timings marked [interpret] are not kernel performance." if len(df) and timed.any() else "."


def _follow(prep: Any, scratch: Any, run_id: str, done: set, run_dir: Path) -> int:
    """A process other than the writer: the same measurements, nothing stored."""
    from rpa_bench.pipeline import execute  # imports JAX: loaded when the command runs

    try:
        _checkpoint(arm=True)
        counts = execute.execute(prep, scratch, run_id=run_id, progress=False, write=False, done=done)
    except KeyboardInterrupt:
        return 130
    print(f"rpa-bench run: process {distributed.process_index()} measured {sum(counts.values())} rows; "
          f"process 0 stores them in {run_dir}")
    return 0


def _writable_results_dir(argv: list[str]) -> str | None:
    """A one-line reason when the run folder's location cannot be written (checked before Hydra
    tries to create it), else None."""

    for a in argv:  # before Hydra creates <results_dir>/<run.name>/hydra: the folder must stay inside
        if a.lstrip("+").startswith("run.name="):
            try:
                check_run_name(a.split("=", 1)[1])
            except ValueError as exc:
                return str(exc)
    if "-m" in argv or "--multirun" in argv or any(a.startswith("-") for a in argv):
        return None
    try:
        cfg = compose([a for a in argv if "=" in a])
        results = str(cfg.run.results_dir)
    except Exception:  # noqa: BLE001 - Hydra reports config errors itself
        return None
    return output_folder_problem(results, "run.results_dir")


def main(argv: list[str]) -> int:
    problem = _writable_results_dir(argv)
    if problem:
        print(f"rpa-bench run: {problem}", file=sys.stderr)
        return 2
    return run_hydra("rpa-bench run", task, argv, doc=__doc__)
