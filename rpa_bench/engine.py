"""Where the embarrassingly parallel phases run: this machine, or a Ray cluster.

``engine.kind=local`` (default): compile fan-outs run in worker processes on this machine
(:func:`rpa_bench.kernels.compiling.compile_many`). ``engine.kind=ray``: each item is a Ray
task that declares what it needs (compile-only work: ``engine.task_cpus`` CPUs and
``engine.task_memory_gib``; timed work: one accelerator of its kind, ``{"TPU": 1}`` or
``{"GPU": 1}``); results come back to the driver as they finish, which writes them (one
writer: nothing written twice). A task whose worker dies is retried by Ray
(``engine.max_retries``); a task past its time limit is cancelled (its worker killed).

``engine.address``: null starts a Ray head on this machine, on loopback only (127.0.0.1,
no dashboard, no usage report); ``auto`` joins the cluster this machine belongs to
(``ray start --head`` / ``ray start --address=...`` ran before); ``ray://host:port`` connects
through Ray Client. ``engine.runtime_env``: ``none`` (every node already has the suite
installed the same way, e.g. ``make setup`` on each TPU VM or a shared filesystem),
``working_dir`` (ship this checkout's code; the pinned packages must be installed on the
nodes) or ``pip`` (ship the code and have Ray install ``requirements.lock`` on each node).

No scheduler is written here: Ray schedules, retries and cancels; this module only turns
the suite's config into Ray calls and iterates results as they complete.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rpa_bench.typed import from_dict

KINDS = ("local", "ray")
RUNTIME_ENVS = ("none", "working_dir", "pip")
ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """``conf/engine/<kind>.yaml``."""

    kind: str = "local"
    address: str | None = None  # null: a local head on 127.0.0.1; auto; ray://host:port
    num_cpus: int | None = None  # the local head's CPUs (null: this machine's)
    object_store_memory: int | None = None  # the local head's object store, bytes (null: Ray's default)
    task_cpus: float = 1.0  # CPUs one compile task declares
    task_memory_gib: float | None = 2.0  # memory one compile task declares (a serving-size compile: 1-2 GiB)
    max_retries: int = 2  # Ray retries of a task whose worker died
    runtime_env: str = "none"
    # the resource one timed task declares (a tune rung's candidate, a history revision): null:
    # TPU where the driver sees a TPU, GPU where it sees a GPU, none on a CPU (not spread)
    accelerator: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"engine.kind={self.kind!r}; allowed: {', '.join(KINDS)}")
        if self.runtime_env not in RUNTIME_ENVS:
            raise ValueError(f"engine.runtime_env={self.runtime_env!r}; allowed: {', '.join(RUNTIME_ENVS)}")
        addr = self.address
        if addr is not None and addr != "auto" and not str(addr).startswith("ray://") and ":" not in str(addr):
            raise ValueError(f"engine.address={addr!r}; allowed: null (a local head), auto, ray://host:port, host:port")
        if self.task_cpus <= 0 or self.max_retries < 0:
            raise ValueError(f"engine.task_cpus={self.task_cpus} must be > 0 and engine.max_retries="
                             f"{self.max_retries} >= 0")
        if self.address is not None and (self.num_cpus is not None or self.object_store_memory is not None):
            raise ValueError("engine.num_cpus / engine.object_store_memory size a local head; "
                             f"with engine.address={self.address!r} the cluster has its own (set them null)")

    @property
    def is_ray(self) -> bool:
        return self.kind == "ray"


def ray_available() -> tuple[bool, str]:
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        return False, f"ray is not installed ({exc}); install the pinned environment (make setup)"
    return True, "ok"


def _runtime_env(cfg: EngineConfig) -> dict | None:
    if cfg.runtime_env == "none":
        return None
    env: dict = {"working_dir": str(ROOT), "excludes": [".venv", "results", ".git", "*.egg-info"],
                 "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}
    if cfg.runtime_env == "pip":
        env["pip"] = [line for line in (ROOT / "requirements.lock").read_text().splitlines()
                      if line.strip() and not line.startswith("#")]
    return env


def connect(cfg: EngineConfig) -> dict:
    """Connect to (or start) Ray as ``cfg`` says; idempotent. Returns the cluster's resources."""
    ok, reason = ray_available()
    if not ok:
        raise ValueError(f"engine.kind=ray: {reason}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"runtime_env": _runtime_env(cfg), "log_to_driver": False}
        if cfg.address is None:  # a head of our own: loopback only
            kwargs.update(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=cfg.num_cpus,
                          object_store_memory=cfg.object_store_memory)
        else:
            kwargs["address"] = cfg.address
        ray.init(**kwargs)
    return dict(ray.cluster_resources())


def options(cfg: EngineConfig, resources: dict[str, float] | None = None, *, memory_gib: float | None = None) -> dict:
    """``.options(...)`` of one task: CPUs, memory and any custom resource (``{"TPU": 1}``)."""
    out: dict[str, Any] = {"num_cpus": cfg.task_cpus, "max_retries": cfg.max_retries}
    mem = cfg.task_memory_gib if memory_gib is None else memory_gib
    if mem:
        out["memory"] = int(mem * 2**30)
    res = dict(resources or {})
    if "GPU" in res:
        out["num_gpus"] = res.pop("GPU")
    if res:
        out["resources"] = res
    return out


@dataclasses.dataclass(frozen=True)
class TaskFailure:
    """What came back instead of a result: the task raised, its worker died past its retries,
    or it ran past its time limit (``timed_out``)."""

    error: str
    timed_out: bool = False


def map_as_completed(fn: Callable[[Any], Any], items: Sequence[Any], cfg: EngineConfig, *,
                     resources: dict[str, float] | None = None, timeout_s: float | None = None,
                     memory_gib: float | None = None, poll_s: float = 0.25) -> Iterator[tuple[int, Any]]:
    """``(index, fn(items[index]) or TaskFailure)`` for every item, as each finishes, each item a
    Ray task, submitted in order and no more at once than the cluster can run (so a task's
    clock starts when it starts, and an interrupted fan-out has done the first items). A task
    running longer than ``timeout_s`` is cancelled (its worker is killed). Stopping the
    iteration (or Ctrl-C) cancels what is still running."""
    import ray

    cluster = connect(cfg)
    opts = options(cfg, resources, memory_gib=memory_gib)
    remote = ray.remote(fn).options(**opts)
    width = max(1, int(cluster.get("CPU", 1) // opts["num_cpus"]))
    for name, need in (opts.get("resources") or {}).items():
        width = min(width, max(1, int(cluster.get(name, 0) // need)))
    if "num_gpus" in opts:
        width = min(width, max(1, int(cluster.get("GPU", 0) // opts["num_gpus"])))
    queue = list(enumerate(items))
    running: dict[Any, tuple[int, float]] = {}
    try:
        while queue or running:
            while queue and len(running) < width:
                i, item = queue.pop(0)
                running[remote.remote(item)] = (i, time.monotonic())
            done, _ = ray.wait(list(running), num_returns=1, timeout=poll_s)
            for ref in done:
                i, _ = running.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a failed task is a result, never the end of the fan-out
                    result = TaskFailure(_short(exc))
                yield i, result
            if timeout_s is None:
                continue
            now = time.monotonic()
            for ref, (i, start) in list(running.items()):
                if now - start > timeout_s:
                    ray.cancel(ref, force=True)
                    running.pop(ref)
                    yield i, TaskFailure(f"did not finish within {timeout_s:g} s", timed_out=True)
    finally:
        for ref in running:
            ray.cancel(ref, force=True)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]


def accelerator_resource(cfg: EngineConfig, platform: str) -> str | None:
    """The Ray resource a timed task declares: ``engine.accelerator``, else the driver's kind."""
    return cfg.accelerator or {"tpu": "TPU", "gpu": "GPU"}.get(platform)


def engine_from_dict(d: dict | None) -> EngineConfig:
    return from_dict(EngineConfig, dict(d or {}), section="engine")
