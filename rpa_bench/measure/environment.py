"""Where a run happened: versions, host, devices, and the suite's own git state."""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rpa_bench.measure import host

PACKAGES = ("rpa_bench", "jax", "jaxlib", "libtpu", "tpu-inference", "xprof", "hydra-core", "numpy", "scipy")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict:
    import jax

    devices = jax.devices()
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
    }


# Environment variables that change what the compilers emit or how the runtime runs it.
FLAG_VARIABLES = ("XLA_FLAGS", "LIBTPU_INIT_ARGS", "TPU_LIBRARY_PATH", "NEURON_CC_FLAGS")
# jax config values that change code generation (recorded whatever their value).
CODEGEN_CONFIG = ("jax_enable_x64", "jax_default_matmul_precision", "jax_threefry_partitionable",
                  "jax_use_shardy_partitioner", "jax_dynamic_shapes", "jax_numpy_rank_promotion",
                  "jax_default_prng_impl", "jax_enable_checks", "jax_disable_jit", "jax_platforms",
                  "jax_pallas_use_mosaic_gpu", "jax_cpu_enable_async_dispatch", "jax_exec_time_optimization_effort",
                  "jax_memory_fitting_effort", "jax_xla_backend")


def flags(compiler_options: dict | None = None) -> dict:
    """Compiler and runtime flags in force: ``XLA_FLAGS``, ``LIBTPU_INIT_ARGS``, ``JAX_*``
    variables, jax config values that affect code generation, and the per-executable compiler
    options the run passes (``timing.compiler_options``; per kernel entry in the rows)."""
    import jax

    env = {k: v for k, v in sorted(os.environ.items()) if k in FLAG_VARIABLES or k.startswith("JAX_")}
    values = getattr(jax.config, "values", {})
    config = {k: values[k] for k in CODEGEN_CONFIG if k in values}
    return {"env": env, "jax_config": {k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
                                       for k, v in config.items()},
            "compiler_options": dict(compiler_options or {})}


def flag_differences(a: dict | None, b: dict | None) -> list[str]:
    """Names of the flags that differ between two runs' recorded ``flags``, e.g. ``XLA_FLAGS``."""
    a, b = a or {}, b or {}
    out = []
    for group in ("env", "jax_config", "compiler_options"):
        ga, gb = a.get(group) or {}, b.get(group) or {}
        for name in sorted(set(ga) | set(gb)):
            if ga.get(name) != gb.get(name):
                out.append(name if group != "compiler_options" else f"compiler_options.{name}")
    return out


def load_average() -> list[float] | None:
    """1, 5 and 15-minute host load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def environment() -> dict:
    """Versions (python, jax, jaxlib, libtpu, tpu-inference, ...), host and devices."""
    return {
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "host": socket.gethostname(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "host_allocator": host.applied(),
        "load_average": load_average(),
        **device_info(),
    }


def git_state(repo: str | Path | None = None) -> dict:
    """The suite's git commit and dirty flag (``commit: None`` outside a checkout)."""
    repo = Path(repo) if repo else Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "branch": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status), "branch": git("rev-parse", "--abbrev-ref", "HEAD")}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def portable_path(text: str) -> str:
    """A path inside an installed environment or this checkout, without the machine's prefix
    (``site-packages/...``, ``<checkout>/...``); any other string unchanged."""
    import site
    import sysconfig

    roots = [(p, "site-packages") for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()}]
    roots.append((str(Path(__file__).resolve().parents[2]), "<checkout>"))
    for root, label in sorted(roots, key=lambda r: -len(r[0])):
        if text == root or text.startswith(root.rstrip("/") + "/"):
            return label + text[len(root.rstrip("/")):]
    return text


def portable(obj):
    """``portable_path`` applied to every string of a JSON-like structure."""
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v) for v in obj]
    return portable_path(obj) if isinstance(obj, str) else obj
