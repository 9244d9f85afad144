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

from omegaconf import DictConfig, OmegaConf

from rpa_bench.commands._hydra import run_hydra

VOLATILE_RUN_KEYS = ("name", "results_dir", "progress", "report")


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) or OmegaConf.is_list(node) else node


def _explicit_paths(node: str) -> frozenset[str]:
    """Dotted paths below ``node`` that the command line sets (``workload.num_seqs=2`` -> num_seqs)."""
    from hydra.core.hydra_config import HydraConfig

    out = set()
    for o in HydraConfig.get().overrides.task:
        key = o.split("=", 1)[0].lstrip("+~")
        if key.startswith(node + "."):
            out.add(key[len(node) + 1:])
    return frozenset(out)


def _entry_paths(item: Any, prefix: str = "") -> set[str]:
    if not isinstance(item, dict):
        return set()
    out = set()
    for k, v in item.items():
        if k == "use" and not prefix:
            continue
        out.add(prefix + k)
        out |= _entry_paths(v, prefix + k + ".")
    return out


def _compose_entries(group: str, entries: Any, fallback: DictConfig) -> list[dict]:
    """Each listed ``conf/<group>`` entry composed by Hydra with the run's other overrides.

    A ``<group>=...`` / ``<group>.field=...`` override on the command line wins over an
    experiment's list: ``experiment=paper_decode kernel=rpa_v3 kernel.source=...`` measures
    that one kernel.
    """
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    task = list(HydraConfig.get().overrides.task)
    explicit = any(o.lstrip("+~").startswith((f"{group}=", f"{group}.")) for o in task)
    if entries is None or explicit:
        return [_container(fallback)]
    base = [o for o in task if not o.lstrip("+~").startswith(f"run.{group}")]
    out = []
    for item in _container(entries):
        over = {}
        if isinstance(item, dict):
            item = dict(item)
            name = item.pop("use", None)
            over = item
            if not name:
                raise ValueError(f"run.{group} entry {item} needs 'use: <conf/{group} name>'")
        else:
            name = str(item)
        try:
            cfg = compose(config_name="config", overrides=[*base, f"{group}={name}"])
        except Exception as exc:  # hydra's MissingConfigException and friends
            raise ValueError(f"run.{group}: cannot compose {group}={name!r}: {exc}") from None
        entry = _container(cfg[group])
        entry.update(over)
        out.append(entry)
    return out


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


def task(cfg: DictConfig) -> int:
    import logging

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU backend" is not news
    try:
        return _task(cfg)
    except ValueError as exc:  # config problems: a clear message, no traceback
        print(f"rpa-bench run: {exc}", file=sys.stderr)
        _remove_unstarted_run_dir(cfg)
        return 2


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


def _open_store(store: Any, config: dict, prep: Any, plan: Any, run_id: str) -> None:
    """Resume the run in ``store`` (refusing a different config) or start it: the manifest
    and the workloads' tables. The writer's job."""
    from rpa_bench.measure import environment, schema, sweep
    from rpa_bench.measure.record import now_utc
    from rpa_bench.parallel import distributed

    run_dir = store.root
    if store.exists():
        old = store.read_manifest()
        changed = _diff(_comparable(old.get("config") or {}), _comparable(config))
        if changed:
            raise ValueError(
                f"{run_dir} holds a run with a different config ({', '.join(changed[:10])}); "
                "resume with the same overrides, or choose a new run.name"
            )
        store.clean_temporaries()
        store.update_manifest(status="running", resumed_utc=[*old.get("resumed_utc", []), now_utc()],
                              resumed_from_status=old.get("status"))
        print(f"rpa-bench run: resuming {run_dir} ({len(store.done_keys())} (point, kernel) pairs done)")
    else:
        manifest = {
            "schema_version": schema.SCHEMA_VERSION,
            "run_id": run_id,
            "created_utc": now_utc(),
            "command": ["rpa-bench", "run", *sys.argv[1:]],
            "config": config,
            "environment": environment.environment(),
            "git": environment.git_state(),
            "kernels": environment.portable(sweep.kernel_provenance(prep)),
            "workloads": {e.name: sweep.workload_manifest(e, w, plan.max_points) for e, w in prep.workloads},
            "device_spec": prep.roof.device.to_dict(),
            "calibration": prep.roof.calibration.to_dict() if prep.roof.calibration is not None else None,
            "status": "running",
            "experiment": plan.experiment,
            "scale": {"name": plan.scale.name, "reduced": plan.scale.reduced},
            "seeds": {"run": plan.seed},
            "mesh": prep.mesh_label,
            "processes": distributed.describe(),
        }
        store.write_manifest(manifest)
        for e, w in prep.workloads:
            sweep.write_workload_tables(store, e, w)


def _task(cfg: DictConfig) -> int:
    import shutil
    import tempfile

    from hydra.core.hydra_config import HydraConfig

    from rpa_bench.measure import sweep
    from rpa_bench.measure.plan import Explicit, plan_from_config
    from rpa_bench.measure.record import now_utc
    from rpa_bench.measure.store import RunStore
    from rpa_bench.measure.summary import final_table
    from rpa_bench.parallel import distributed

    t0 = time.perf_counter()
    config = _container(cfg)
    # multi-host: join the other processes before the first JAX device use (no-op when disabled)
    distributed.initialize(distributed.DistributedConfig.from_config(config.get("distributed")))
    experiment = HydraConfig.get().runtime.choices.get("experiment") or "adhoc"
    workloads = _compose_entries("workload", cfg.run.get("workloads"), cfg.workload)
    kernels = _compose_entries("kernel", cfg.run.get("kernels"), cfg.kernel)
    config["composed"] = {"workloads": workloads, "kernels": kernels}
    # what the command line (or a run.workloads entry) sets wins over the scale preset
    listed = _container(cfg.run.get("workloads"))
    if listed is not None and not any(o.lstrip("+~").startswith(("workload=", "workload."))
                                      for o in HydraConfig.get().overrides.task):
        per_entry = [frozenset(_entry_paths(item)) for item in listed]
    else:
        per_entry = [_explicit_paths("workload")]
    explicit = Explicit(model=_explicit_paths("model"), scheduler=_explicit_paths("scheduler"),
                        workloads=tuple(per_entry))
    plan = plan_from_config(config, workloads=workloads, kernels=kernels, experiment=str(experiment),
                            explicit=explicit)
    prep = sweep.prepare_run(plan)  # every check, before anything is allocated
    if prep.platform == "cpu":  # repeatable CPU timings (see rpa_bench/measure/host.py)
        from rpa_bench.measure.host import fix_mmap_threshold

        fix_mmap_threshold()

    run_dir, run_id = _run_dir(cfg)
    writer = distributed.is_writer()
    decision: dict[str, Any] = {"error": None, "done": []}
    if writer:
        store = RunStore(run_dir)
        try:
            _open_store(store, config, prep, plan, run_id)
            decision["done"] = sorted(list(k) for k in store.done_keys())
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

    def on_term(signum, frame):  # SIGTERM: stop cleanly after the (point, kernel) in flight
        stop["requested"] = True

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        sweep.execute(prep, store, run_id=run_id, progress=bool(cfg.run.get("progress", True)),
                      should_stop=lambda: stop["requested"], done={tuple(k) for k in decision["done"]})
    except KeyboardInterrupt:
        store.update_manifest(status="interrupted", interrupted_utc=now_utc())
        print(f"\nrpa-bench run: interrupted; finished points are kept. Resume with the same command "
              f"and run.name={plan.run_name}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    store.consolidate()
    store.update_manifest(status="complete", completed_utc=now_utc(),
                          wall_time_s=round(time.perf_counter() - t0, 1))
    df = store.read()
    print()
    print(final_table(df))
    counts = df.groupby("status").size().to_dict()
    print(f"\n{len(df)} rows ({', '.join(f'{k}={v}' for k, v in sorted(counts.items()))}) in "
          f"{time.perf_counter() - t0:.0f} s; timings marked [interpret] are not kernel performance.")
    print(f"results: {run_dir}")
    if cfg.run.get("report"):
        from rpa_bench.commands import report

        if report.main([str(run_dir)]) != 0:
            print(f"rpa-bench run: the report could not be rendered; try rpa-bench report {run_dir}",
                  file=sys.stderr)
    else:
        print(f"report:  rpa-bench report {run_dir}")
    return 0


def _follow(prep: Any, scratch: Any, run_id: str, done: set, run_dir: Path) -> int:
    """A process other than the writer: the same measurements, nothing stored."""
    from rpa_bench.measure import sweep
    from rpa_bench.parallel import distributed

    try:
        counts = sweep.execute(prep, scratch, run_id=run_id, progress=False, write=False, done=done)
    except KeyboardInterrupt:
        return 130
    print(f"rpa-bench run: process {distributed.process_index()} measured {sum(counts.values())} rows; "
          f"process 0 stores them in {run_dir}")
    return 0


def main(argv: list[str]) -> int:
    return run_hydra("rpa-bench run", task, argv)
