"""Where a run happened: versions, host, devices, and the suite's own git state."""

from __future__ import annotations

import hashlib
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


def environment() -> dict:
    """Versions (python, jax, jaxlib, libtpu, tpu-inference, ...), host and devices."""
    return {
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "host": socket.gethostname(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "host_allocator": host.applied(),
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
