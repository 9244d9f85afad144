"""``rpa-bench calibrate``: measure achievable HBM bandwidth and matmul FLOP/s here.

Hydra overrides, e.g. ``rpa-bench calibrate device.calibration.copy_mib=64``:

- bandwidth: ``x + 1`` on a ``copy_mib`` MiB float32 array, donated (written in place,
  so the clock sees no page faults of a fresh output); bytes = read + written;
- matmul: ``m x m @ m x m`` in ``matmul_dtype`` (float32 on CPU, labelled so); 2 m^3 FLOPs.

Both are jitted, compiled apart, warmed up and timed with the suite's one timing protocol
(:mod:`rpa_bench.measure.calibrate`, blocking on the outputs); the median per call is kept
with the raw samples. The result goes to
``<run.results_dir>/calibration/<hostname>-<device_kind>.json``, where
:func:`rpa_bench.roofline.calibration.resolve_roofline` (CPU) and
``compute_metrics(peak_source="calibrated")`` find it. One JAX device is measured.
"""

from __future__ import annotations

import json

from omegaconf import DictConfig

from rpa_bench.commands import _hydra
from rpa_bench.commands._hydra import run_hydra
from rpa_bench.measure.calibrate import CalibrationPlan, measure
from rpa_bench.roofline.calibration import save_calibration
from rpa_bench.roofline.specs import PEAK_FIELD_BY_DTYPE

def task(cfg: DictConfig) -> int:
    import jax

    knobs = dict(cfg.device.get("calibration") or {})
    plan = CalibrationPlan.for_platform(jax.devices()[0].platform, knobs)
    cal = measure(plan)
    path = save_calibration(cal, results_dir=cfg.run.results_dir)
    summary = {
        "path": str(path),
        "device_kind": cal.device_kind,
        "hbm_bw_gb_per_s": round(cal.hbm_bw_bytes_per_s / 1e9, 2),
        "matmul_tflops": round(cal.matmul_flops_per_s / 1e12, 4),
        "matmul_dtype": cal.matmul_dtype,
        "peak_field": PEAK_FIELD_BY_DTYPE[cal.matmul_dtype],
        "copy_mib": plan.copy_mib,
        "matmul_m": plan.matmul_m,
        "trials": plan.trials,
    }
    if _hydra.JSON_OUTPUT:
        print(json.dumps(summary))
        return 0
    print(f"calibrated {cal.device_kind}: copy bandwidth {summary['hbm_bw_gb_per_s']:.2f} GB/s "
          f"({plan.copy_mib} MiB copies), matmul {summary['matmul_tflops']:.4g} TFLOP/s ({cal.matmul_dtype}, "
          f"m={plan.matmul_m}), best of {plan.trials} trials\nsaved: {path} (MBU/MFU with "
          "device.peak_source=calibrated divide by these; --json for machines)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_hydra("rpa-bench calibrate", task, list(argv or []),
                     extra_overrides=("hydra.output_subdir=null", "hydra/job_logging=disabled",
                                      "hydra/hydra_logging=disabled", "hydra.run.dir=."), doc=__doc__)
