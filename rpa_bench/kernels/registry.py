"""The kernel backends by name, and the validated kernel config the commands hand over.

Every module of this package that ends with ``DECLARATION = KernelDeclaration(...)``
(:mod:`rpa_bench.kernels.declaration`) is a backend: found by reading the package's files
for that line (no list here names a kernel), imported when first asked for. Importing a
backend module never imports tpu-inference (:mod:`rpa_bench.kernels.loader` loads it on
first use).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rpa_bench.kernels.base import KernelBackend
from rpa_bench.kernels.declaration import KernelDeclaration

DECLARATION_LINE = re.compile(r"^DECLARATION = KernelDeclaration\(\s*name=\"([a-z0-9_]+)\"", re.MULTILINE)
# the paper's kernel first, the older ones and the reference, then the others by name
_ORDER = ("rpa_v3", "rpa_v2", "jax_rpa", "reference")


@functools.cache
def _modules() -> dict[str, str]:
    """kernel name -> module, from the package's files (read as text: nothing is imported)."""
    found = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        m = DECLARATION_LINE.search(path.read_text(encoding="utf-8"))
        if m:
            found[m.group(1)] = f"{__package__}.{path.stem}"
    first = [n for n in _ORDER if n in found]
    return {n: found[n] for n in first + sorted(set(found) - set(first))}


def declaration(name: str) -> KernelDeclaration:
    """The kernel's own declaration (imports its module)."""
    decl = importlib.import_module(_modules()[_check_name(name)]).DECLARATION
    assert decl.name == name, (decl.name, name)
    return decl


def declarations() -> tuple[KernelDeclaration, ...]:
    return tuple(declaration(n) for n in _modules())


INTERPRET_CHOICES = ("auto", True, False)
KERNEL_KEYS = ("name", "source", "options", "interpret", "label", "compiler_options")
SAFE_LABEL = re.compile(r"[A-Za-z0-9_.=-]{1,120}")


def _check_name(name: str) -> str:
    if name not in _modules():
        raise ValueError(f"kernel={name!r} unknown; allowed: {', '.join(BACKENDS)}")
    return name


BACKENDS = tuple(_modules())
PALLAS_BACKENDS = tuple(d.name for d in declarations() if d.pallas)  # interpret mode off TPU
SOURCE_BACKENDS = tuple(d.name for d in declarations() if d.takes_source)  # take kernel.source
# kernels whose block sizes `rpa-bench tune` searches (their backend class declares `tuning`)
TUNABLE_BACKENDS = tuple(d.name for d in declarations() if getattr(d.backend, "tuning", None) is not None)


def tuning(name: str):
    """The :class:`rpa_bench.kernels.tuning.Tuning` a kernel declares; refused naming the tunable ones."""
    if name not in TUNABLE_BACKENDS:
        raise ValueError(f"kernel={name}: no tunable knobs declared; allowed: {', '.join(TUNABLE_BACKENDS)}")
    return declaration(name).backend.tuning


def get_backend(name: str, *, source: str | None = None, options: Mapping[str, Any] | None = None) -> KernelBackend:
    """A backend instance. ``source``: tpu-inference checkout path or ``path@ref`` (rpa_v3, rpa_v2)."""
    _check_name(name)
    if source is not None and name not in SOURCE_BACKENDS:
        raise ValueError(
            f"kernel={name}: kernel.source={source!r} unsupported; allowed for {', '.join(SOURCE_BACKENDS)} only"
        )
    backend_cls = declaration(name).backend
    kwargs: dict[str, Any] = {"options": dict(options or {})}
    if name in SOURCE_BACKENDS:
        kwargs["source"] = source
    return backend_cls(**kwargs)


def fitting(names, model: Any, attn: Any, batch: Any = None) -> tuple[list[str], dict[str, str]]:
    """Of ``names``, those whose declared capabilities take ``model``, ``attn`` (and ``batch``),
    and the refusal of each of the others (e.g. head_dim 64 only, or no attention sinks)."""
    fit, refused = [], {}
    for name in names:
        try:
            get_backend(name).validate(model, attn, batch)
            fit.append(name)
        except ValueError as exc:
            refused[name] = str(exc)
    return fit, refused


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
    """One kernel entry: a ``conf/kernel/<name>.yaml`` (backend name, code source, options,
    interpret choice) and, in a run's ``run.kernels`` list, what rows call it (``label``)
    and the XLA compiler options of every executable it compiles (``compiler_options``)."""

    name: str
    source: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    interpret: Any = "auto"  # "auto": interpret Pallas kernels off TPU; True / False: force
    label: str = ""  # default: name; two entries of one backend in a run need two labels
    compiler_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # per executable

    def __post_init__(self) -> None:
        _check_name(self.name)
        object.__setattr__(self, "options", _freeze(dict(self.options or {})))
        if self.interpret not in INTERPRET_CHOICES:
            raise ValueError(f"kernel={self.name}: interpret={self.interpret!r}; allowed: auto, true, false")
        label = str(self.label or self.name)
        if not SAFE_LABEL.fullmatch(label):
            raise ValueError(f"kernel entry {self.name}: label={label!r}; allowed: letters, digits and . _ = -")
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "compiler_options",
                           _freeze(compiler_options(self.compiler_options, f"kernel entry {label}")))
        self.backend()  # validates source and option names (imports nothing heavy)

    def backend(self) -> KernelBackend:
        return get_backend(self.name, source=self.source, options=_thaw(self.options))

    def to_dict(self) -> dict:
        out = {"name": self.name, "source": self.source, "interpret": self.interpret, "options": _thaw(self.options)}
        if self.label != self.name:
            out["label"] = self.label
        if self.compiler_options:
            out["compiler_options"] = _thaw(self.compiler_options)
        return out


def compiler_options(value: Any, where: str) -> dict:
    """Per-executable XLA compiler options (``compile(compiler_options=...)``): flag -> scalar."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: compiler_options={value!r} must be a mapping of flag -> value")
    out = {}
    for k, v in value.items():
        if not isinstance(v, (str, int, float, bool)):
            raise ValueError(f"{where}: compiler_options.{k}={v!r} must be a string, number or bool")
        out[str(k)] = v
    return out


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def kernel_config_from_dict(d: Mapping[str, Any]) -> KernelConfig:
    """Validate a kernel config mapping (a resolved ``cfg.kernel`` or a ``run.kernels`` entry);
    unknown keys are refused."""
    d = dict(d)
    name = d.get("name")
    if not name:
        raise ValueError(f"kernel.name is missing; allowed: {', '.join(BACKENDS)}")
    unknown = sorted(set(d) - set(KERNEL_KEYS))
    if unknown:
        raise ValueError(f"kernel entry {name}: unknown key(s) {unknown}; allowed: {', '.join(KERNEL_KEYS)} "
                         "(options go under options:)")
    source = d.get("source")
    return KernelConfig(
        name=str(name),
        source=None if source is None else str(source),
        options=dict(d.get("options") or {}),
        interpret=d.get("interpret", "auto"),
        label=str(d.get("label") or ""),
        compiler_options=d.get("compiler_options") or {},
    )
