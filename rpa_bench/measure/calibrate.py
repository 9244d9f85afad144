"""Measure this machine's achievable HBM bandwidth and matmul FLOP/s (``rpa-bench calibrate``).

- bandwidth: ``x + 1`` on a ``copy_mib`` MiB float32 array, donated (written in place,
  so the clock sees no page faults of a fresh output); bytes = read + written;
- matmul: ``m x m @ m x m`` in ``matmul_dtype`` (float32 on CPU, labelled so); 2 m^3 FLOPs.

Both are jitted, compiled apart, warmed up and timed with the suite's one timing protocol
(:mod:`rpa_bench.measure.timing`); one JAX device is measured.
"""

from __future__ import annotations

import dataclasses
import datetime
import socket

from rpa_bench.measure.timing import TimingConfig, compile_apart, time_function
from rpa_bench.roofline.calibration import Calibration

CPU_DEFAULTS = {"copy_mib": 256, "matmul_m": 1024, "matmul_dtype": "float32", "trials": 5, "warmup": 1}
ACCEL_DEFAULTS = {"copy_mib": 2048, "matmul_m": 8192, "matmul_dtype": "bfloat16", "trials": 5, "warmup": 1}
MATMUL_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class CalibrationPlan:
    """Sizes of one calibration (``device.calibration`` with the platform's defaults)."""

    copy_mib: int
    matmul_m: int
    matmul_dtype: str
    trials: int
    warmup: int

    def __post_init__(self) -> None:
        for field in ("copy_mib", "matmul_m", "trials"):
            if getattr(self, field) < 1:
                raise ValueError(f"device.calibration.{field}={getattr(self, field)} must be >= 1")
        if self.warmup < 0:
            raise ValueError(f"device.calibration.warmup={self.warmup} must be >= 0")
        if self.matmul_dtype not in MATMUL_DTYPES:
            raise ValueError(
                f"device.calibration.matmul_dtype={self.matmul_dtype!r}; allowed: {', '.join(MATMUL_DTYPES)}"
            )

    @classmethod
    def for_platform(cls, platform: str, overrides: dict) -> "CalibrationPlan":
        base = dict(CPU_DEFAULTS if platform == "cpu" else ACCEL_DEFAULTS)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def measure(plan: CalibrationPlan) -> Calibration:
    """Time the copy and the matmul on ``jax.devices()[0]``."""
    import jax
    import jax.numpy as jnp

    device = jax.devices()[0]
    timing = TimingConfig(warmup_calls=plan.warmup, num_samples=plan.trials, min_samples=plan.trials,
                          min_sample_s=0.0, max_loops_per_sample=1, max_total_s=600.0, capture=False)
    n = plan.copy_mib * 2**20 // 4
    x = jax.device_put(jnp.arange(n, dtype=jnp.float32), device)
    # donated: the output reuses the input's buffer, so no fresh pages are faulted in
    copy, _ = compile_apart(jax.jit(lambda a: a + 1.0, donate_argnums=0), (x,))
    copy_t = time_function(copy, (x,), config=timing, donates=True, label="copy")
    del x

    m = plan.matmul_m
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(key_a, (m, m), dtype=plan.matmul_dtype), device)
    b = jax.device_put(jax.random.normal(key_b, (m, m), dtype=plan.matmul_dtype), device)
    mm, _ = compile_apart(jax.jit(lambda p, q: p @ q), (a, b))
    mm_t = time_function(mm, (a, b), config=timing, label="matmul")

    copy_bytes = 2 * n * 4
    return Calibration(
        hostname=socket.gethostname(),
        device_kind=device.device_kind,
        platform=device.platform,
        num_devices=1,
        hbm_bw_bytes_per_s=copy_bytes / (copy_t.summary.median_us * 1e-6),
        matmul_flops_per_s=2 * m**3 / (mm_t.summary.median_us * 1e-6),
        matmul_dtype=plan.matmul_dtype,
        copy_bytes=copy_bytes,
        matmul_m=m,
        trials=plan.trials,
        copy_samples_s=tuple(s * 1e-6 for s in copy_t.samples_us),
        matmul_samples_s=tuple(s * 1e-6 for s in mm_t.samples_us),
        method=("jit(x + 1.0, donated) on float32 (bytes read + written) and jit(a @ b); rpa_bench.measure.timing "
                "protocol, median of per-call wall time, one device"),
        jax_version=jax.__version__,
        timestamp=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
