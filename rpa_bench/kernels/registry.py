"""The kernel backends by name, and the validated kernel config the commands hand over.

Backends are imported lazily, so asking for one never imports the others (nor
tpu-inference, which :mod:`rpa_bench.kernels.loader` loads on first use).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from rpa_bench.kernels.base import KernelBackend

# name -> (module, class)
_BACKENDS: dict[str, tuple[str, str]] = {
    "rpa_v3": ("rpa_bench.kernels.rpa_v3", "RpaV3Backend"),
    "rpa_v2": ("rpa_bench.kernels.rpa_v2", "RpaV2Backend"),
    "jax_rpa": ("rpa_bench.kernels.jax_rpa", "JaxRpaBackend"),
    "reference": ("rpa_bench.kernels.reference", "ReferenceBackend"),
}
BACKENDS = tuple(_BACKENDS)
PALLAS_BACKENDS = ("rpa_v3", "rpa_v2", "jax_rpa")  # Pallas TPU kernels (interpret mode off TPU)
SOURCE_BACKENDS = ("rpa_v3", "rpa_v2")  # take kernel.source (a tpu-inference checkout or revision)
INTERPRET_CHOICES = ("auto", True, False)


def _check_name(name: str) -> str:
    if name not in _BACKENDS:
        raise ValueError(f"kernel={name!r} unknown; allowed: {', '.join(BACKENDS)}")
    return name


def get_backend(name: str, *, source: str | None = None, options: Mapping[str, Any] | None = None) -> KernelBackend:
    """A backend instance. ``source``: tpu-inference checkout path or ``path@ref`` (rpa_v3, rpa_v2)."""
    _check_name(name)
    if source is not None and name not in SOURCE_BACKENDS:
        raise ValueError(
            f"kernel={name}: kernel.source={source!r} unsupported; allowed for {', '.join(SOURCE_BACKENDS)} only"
        )
    module, cls = _BACKENDS[name]
    backend_cls = getattr(importlib.import_module(module), cls)
    kwargs: dict[str, Any] = {"options": dict(options or {})}
    if name in SOURCE_BACKENDS:
        kwargs["source"] = source
    return backend_cls(**kwargs)


def availability_report() -> dict[str, tuple[bool, str]]:
    """Every backend's (available, reason)."""
    out = {}
    for name in BACKENDS:
        try:
            out[name] = tuple(get_backend(name).availability())
        except ImportError as e:  # a backend module that cannot even be imported
            out[name] = (False, f"import failed: {e}")
    return out


def available_backends() -> tuple[str, ...]:
    """Names of the backends usable here."""
    return tuple(name for name, (ok, _) in availability_report().items() if ok)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """One ``conf/kernel/<name>.yaml``: backend name, code source, options, interpret choice."""

    name: str
    source: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    interpret: Any = "auto"  # "auto": interpret Pallas kernels off TPU; True / False: force

    def __post_init__(self) -> None:
        _check_name(self.name)
        object.__setattr__(self, "options", _freeze(dict(self.options or {})))
        if self.interpret not in INTERPRET_CHOICES:
            raise ValueError(f"kernel={self.name}: interpret={self.interpret!r}; allowed: auto, true, false")
        self.backend()  # validates source and option names (imports nothing heavy)

    def backend(self) -> KernelBackend:
        return get_backend(self.name, source=self.source, options=_thaw(self.options))

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "interpret": self.interpret, "options": _thaw(self.options)}


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def kernel_config_from_dict(d: Mapping[str, Any]) -> KernelConfig:
    """Validate a kernel config mapping (a resolved ``cfg.kernel``); unknown keys are refused."""
    d = dict(d)
    allowed = ("name", "source", "options", "interpret")
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ValueError(f"kernel config key(s) {unknown} unknown; allowed: {', '.join(allowed)}")
    if not d.get("name"):
        raise ValueError(f"kernel.name is missing; allowed: {', '.join(BACKENDS)}")
    source = d.get("source")
    return KernelConfig(
        name=str(d["name"]),
        source=None if source is None else str(source),
        options=dict(d.get("options") or {}),
        interpret=d.get("interpret", "auto"),
    )
