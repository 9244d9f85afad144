"""Which TPU generation a kernel is built for, with or without a TPU attached.

JAX knows every generation's figures (``get_tpu_info_for_chip``) and lowers Pallas TPU
kernels for any device kind inside an abstract mesh. The tpu-inference kernels ask
``get_tpu_version()`` (module-level, from ``jax.devices()``), which says -1 off TPU; for a
faithful build for another generation :func:`as_tpu` answers for it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from types import ModuleType

import jax

from rpa_bench import generations as _generations

# Device kinds JAX lowers Pallas TPU kernels for (as jax.Device.device_kind spells them).
GENERATIONS = tuple(g.device_kind for g in _generations.GENERATIONS)
DEFAULT_GENERATIONS = tuple(g.device_kind for g in _generations.GENERATIONS if g.compile_only)

_override_lock = threading.RLock()


def _chip(device_kind: str):
    from jax._src import tpu_info

    chip = tpu_info.chip_version_from_device_kind(device_kind)
    if chip is None:
        raise ValueError(f"generation={device_kind!r} unknown; allowed: {', '.join(GENERATIONS)}")
    return chip


def tpu_info(device_kind: str):
    """JAX's per-TensorCore figures for ``device_kind`` (VMEM, HBM bandwidth, peaks)."""
    from jax._src import tpu_info as _tpu_info

    return _tpu_info.get_tpu_info_for_chip(_chip(device_kind), 1)


def generation(device_kind: str) -> int:
    """Numeric generation (4, 5, 6, 7, ...) as the kernels' ``get_tpu_version`` reports it."""
    return int(tpu_info(device_kind).generation)


def attached_device_kind() -> str | None:
    """Device kind of the attached TPU, or None off TPU."""
    try:
        device = jax.devices()[0]
    except RuntimeError:
        return None
    return device.device_kind if device.platform == "tpu" else None


def vmem_capacity_bytes(device_kind: str | None) -> int:
    """VMEM per TensorCore of ``device_kind`` (the attached TPU when None, else TPU7x)."""
    kind = device_kind or attached_device_kind() or "TPU7x"
    return int(tpu_info(kind).vmem_capacity_bytes)


@contextlib.contextmanager
def abstract_tpu(device_kind: str) -> Iterator[None]:
    """Trace and lower as for one TensorCore of ``device_kind`` (no TPU needed)."""
    from jax.sharding import AbstractDevice, AbstractMesh, use_abstract_mesh

    _chip(device_kind)
    device = AbstractDevice(device_kind=device_kind, num_cores=1, platform="tpu")
    with use_abstract_mesh(AbstractMesh((), (), abstract_device=device)):
        yield


@contextlib.contextmanager
def as_tpu(module: ModuleType, device_kind: str | None) -> Iterator[None]:
    """Make ``module``'s ``get_tpu_version()`` / ``get_device_name()`` answer for ``device_kind``.

    None leaves the module alone (it then asks the attached device).
    """
    if device_kind is None:
        yield
        return
    version = generation(device_kind)
    gen = _generations.BY_KIND.get(device_kind)
    upstream = gen.upstream_name if gen is not None else f"TPU v{version}"
    answers = {
        "get_tpu_version": lambda: version,
        "get_device_name": lambda num_devices=None: upstream + (f"-{num_devices}" if num_devices else ""),
    }
    with _override_lock:
        saved = {name: getattr(module, name) for name in answers if hasattr(module, name)}
        for name in saved:
            setattr(module, name, answers[name])
        try:
            yield
        finally:
            for name, fn in saved.items():
                setattr(module, name, fn)
