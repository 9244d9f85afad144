"""Shared by the tests that need several JAX devices on a CPU-only machine.

Forced host devices must be configured before JAX starts, so such tests run their body in
a subprocess (the test file run as a script) and read back one JSON line of results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

NUM_HOST_DEVICES = 8


def run_cases(names: list[str], tmp: str, run_one: Callable[[str, str], dict]) -> dict:
    """Subprocess side: ``run_one(name, tmp)`` per case; an exception becomes that case's ``error``."""
    import jax

    out: dict = {"num_devices": len(jax.devices())}
    for name in names:
        t0 = time.perf_counter()
        try:
            out[name] = run_one(name, tmp)
        except Exception:  # noqa: BLE001 - reported to the test, which fails with it
            out[name] = {"error": traceback.format_exc()}
        out[name]["seconds"] = round(time.perf_counter() - t0, 2)  # for the log, never asserted
    return out


def run_in_subprocess(script: str, names: list[str], tmp_path) -> dict:
    """Pytest side: run ``script``'s cases on NUM_HOST_DEVICES forced CPU devices."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_HOST_DEVICES}",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, script, str(tmp_path), *names], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def v3_available() -> bool:
    try:
        from rpa_bench.kernels.rpa_v3 import RpaV3Backend
    except ImportError:
        return False
    return RpaV3Backend().availability()[0]
