"""Multi-host runs: ``jax.distributed`` initialisation, the one writer, gathered times.

On a TPU pod slice (or a multi-node GPU job) every host runs the same ``rpa-bench run``;
after :func:`initialize` the global mesh spans all hosts, every process materialises the
same inputs (deterministic from the seed) and executes the same sharded program, each
profiles its own local devices, and only process 0 writes the run store
(:func:`is_writer`). Per-device times are gathered to every process with
:func:`allgather_device_times` so the writer records all of them.

Configuration (``distributed:`` in conf/config.yaml), each field falling back to the
environment, then to JAX's own cluster detection (TPU pod metadata, Slurm, ...):
``enabled`` (``RPA_BENCH_DISTRIBUTED=1``), ``coordinator_address``
(``JAX_COORDINATOR_ADDRESS``), ``num_processes`` (``JAX_NUM_PROCESSES``),
``process_id`` (``JAX_PROCESS_ID``), ``initialization_timeout_s``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ENV = {
    "enabled": "RPA_BENCH_DISTRIBUTED",
    "coordinator_address": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}
_TRUE = ("1", "true", "yes", "on")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-host run (None: let JAX detect it)."""

    enabled: bool = False
    coordinator_address: str | None = None  # host:port of process 0
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout_s: int = 300

    def __post_init__(self) -> None:
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"distributed.num_processes={self.num_processes} must be >= 1 or null")
        if self.process_id is not None:
            if self.process_id < 0:
                raise ValueError(f"distributed.process_id={self.process_id} must be >= 0 or null")
            if self.num_processes is not None and self.process_id >= self.num_processes:
                raise ValueError(
                    f"distributed.process_id={self.process_id} must be < distributed.num_processes="
                    f"{self.num_processes}"
                )
        if self.initialization_timeout_s < 1:
            raise ValueError(f"distributed.initialization_timeout_s={self.initialization_timeout_s} must be >= 1")
        if self.coordinator_address is not None and ":" not in self.coordinator_address:
            raise ValueError(
                f"distributed.coordinator_address={self.coordinator_address!r} must be host:port"
            )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, env: Mapping[str, str] | None = None) -> "DistributedConfig":
        """Config values first, then the environment variables in :data:`ENV`."""
        cfg = dict(cfg or {})
        env = os.environ if env is None else env
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = set(cfg) - allowed
        if unknown:
            raise ValueError(f"distributed: unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
        values: dict[str, Any] = {}
        for field in allowed:
            value = cfg.get(field)
            if value is None and field in ENV and env.get(ENV[field]) not in (None, ""):
                raw = env[ENV[field]]
                if field == "enabled":
                    value = raw.strip().lower() in _TRUE
                elif field in ("num_processes", "process_id"):
                    try:
                        value = int(raw)
                    except ValueError as e:
                        raise ValueError(f"{ENV[field]}={raw!r} must be an integer") from e
                else:
                    value = raw
            if value is not None:
                values[field] = value
        return cls(**values)


def initialize(config: DistributedConfig) -> bool:
    """Join the multi-host run when ``config.enabled`` (before any other JAX call).

    Returns True when this call initialised ``jax.distributed``; False when disabled or
    already initialised. Unset fields are left to JAX's cluster detection.
    """
    if not config.enabled:
        return False
    import jax

    if jax.distributed.is_initialized():
        return False
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address,
        num_processes=config.num_processes,
        process_id=config.process_id,
        initialization_timeout=config.initialization_timeout_s,
    )
    return True


def process_index() -> int:
    import jax

    return int(jax.process_index())


def is_writer() -> bool:
    """True on the one process that writes the run store (process 0)."""
    return process_index() == 0


def from_writer(value: Any) -> Any:
    """The writer's ``value`` (anything JSON can carry) on every process; ``value`` itself
    when the run has one process. Every process must call it (a collective): decisions
    that depend on local clocks or files (loop counts, what a resumed run has done, a
    refused config) are taken once, by the writer, and followed by all."""
    import jax

    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    blob = np.frombuffer(json.dumps(value).encode(), np.uint8) if is_writer() else np.zeros(0, np.uint8)
    size = int(np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(blob.size, np.int32))))
    buf = np.zeros(size, np.uint8)
    if is_writer():
        buf[:] = blob
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf), np.uint8)
    return json.loads(out.tobytes().decode())


def describe() -> dict:
    """What the manifest records about the processes of the run."""
    import jax

    return {
        "process_index": int(jax.process_index()),
        "process_count": int(jax.process_count()),
        "local_device_count": int(jax.local_device_count()),
        "device_count": int(jax.device_count()),
        "distributed": bool(jax.distributed.is_initialized()),
    }


def allgather_device_times(device_ids: Sequence[int], per_call_us: Sequence[Sequence[float]]) -> dict[int, tuple[float, ...]]:
    """Every process's per-device, per-call times, on every process: {device id: times}.

    ``device_ids`` / ``per_call_us``: this process's devices and their per-call times
    (every process must pass the same number of devices and calls). Values travel as
    float32 pairs (high part, remainder), so float64 precision survives without x64.
    """
    import jax

    local = np.concatenate([np.asarray(device_ids, np.float64)[:, None],
                            np.asarray(per_call_us, np.float64)], axis=1)  # [n_local, 1 + calls]
    if jax.process_count() == 1:
        rows = local
    else:
        from jax.experimental import multihost_utils

        hi = local.astype(np.float32)
        lo = (local - hi.astype(np.float64)).astype(np.float32)
        both = np.asarray(multihost_utils.process_allgather(np.stack([hi, lo])))  # [procs, 2, n_local, 1 + calls]
        rows = (both[:, 0].astype(np.float64) + both[:, 1].astype(np.float64)).reshape(-1, local.shape[1])
    return {int(round(r[0])): tuple(float(x) for x in r[1:]) for r in rows}
