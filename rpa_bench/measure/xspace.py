"""A profiler capture (XSpace ``*.xplane.pb``) read into plain, typed records.

``jax.profiler.ProfileData`` parses the protobuf (the supported reader: no hand-written
decoder here); this module turns its planes into :class:`Plane` records the parsers work
on, and knows the naming rules of real captures:

- **device planes** are ``/device:TPU:N`` and ``/device:GPU:N`` only (``N`` the device's
  ordinal on its host); other ``/device:`` planes such as ``/device:CUSTOM:Megascale Trace``
  hold no device time and are set aside. Device planes are ordered by ordinal
  (``GPU:2`` before ``GPU:10``).
- **op display names.** On TPU the ``XLA Ops`` event *name* is the whole HLO instruction
  text (``%RPAd-p_256-bq_1_1-bkv_1024_1024.1 = bf16[...] custom-call(...), ...``); the short
  name xprof shows lives in the event metadata's ``display_name``, which ProfileData does
  not expose. :func:`display_name` recovers it from the instruction text (``%name = ...``),
  which is how HLO prints every instruction.
- **program names.** ``XLA Modules`` events are named ``<module>(<program id>)``;
  :func:`module_of` returns ``<module>`` so modules are compared by equality, never by
  substring (``jit_f`` is not ``jit_forward_3d_conv``).
- **clock scaling.** A ``time_scale_multiplier`` stat (any spelling: ``Time Scale
  Multiplier``) on a TPU event scales its duration; :attr:`Event.scale` carries it.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path
from typing import Any

ANNOTATION = "rpa_bench.call"
DEVICE_PLANE_RE = re.compile(r"^/device:(TPU|GPU):(\d+)$")
HOST_PLANE = "/host:CPU"
# A printed HLO instruction: optional ROOT, optional %, the name, " = ".
_HLO_TEXT_RE = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[A-Za-z_][\w.\-]*)\s+=\s")
_MODULE_RE = re.compile(r"^(?P<name>.+)\((?P<id>-?\d+)\)$")
DERIVED_LINES = frozenset({
    "Steps", "XLA Modules", "XLA Ops", "Async XLA Ops", "XLA TraceMe", "Framework Ops",
    "Framework Name Scope", "TensorFlow Ops", "TensorFlow Name Scope", "Launch Stats",
    "Source code", "Host Offload Ops", "_counters_", "Sparse Core Steps", "Sparse Core Modules",
    "Sparse Core Ops", "Overlay", "SparseCore Ops", "SparseCore Modules", "SparseCore Steps",
})


def display_name(name: str) -> str:
    """The short op name of an event: ``%RPAd-p_256.1 = bf16[..] custom-call(..)`` -> ``RPAd-p_256.1``."""
    m = _HLO_TEXT_RE.match(name)
    return m.group("name") if m else name


def module_of(name: str) -> tuple[str, int | None]:
    """``jit_f(12190760917235803885)`` -> (``jit_f``, 12190760917235803885); a bare name -> (name, None)."""
    m = _MODULE_RE.match(name)
    if m:
        return m.group("name"), int(m.group("id"))
    return name, None


def _scale_of(stats: dict) -> float | None:
    for key, value in stats.items():
        if re.sub(r"[\s_]", "", str(key)).lower() == "timescalemultiplier":
            try:
                v = float(value)
            except (TypeError, ValueError):
                return None
            return v if v > 0 else None
    return None


@dataclasses.dataclass(frozen=True)
class Event:
    name: str  # as captured (on TPU ops: the whole HLO instruction text)
    display: str  # short name (see display_name)
    start_ns: float
    end_ns: float
    stats: dict

    @property
    def duration_ns(self) -> float:
        return self.end_ns - self.start_ns

    @property
    def scale(self) -> float | None:
        """The event's clock-scaling multiplier (``time_scale_multiplier``), if recorded."""
        return _scale_of(self.stats)

    def texts(self) -> tuple[str, ...]:
        """Every name this event goes by: display name, full name, string stats (tf_op, hlo_op, ...)."""
        return (self.display, self.name, *(v for v in self.stats.values() if isinstance(v, str)))


@dataclasses.dataclass(frozen=True)
class Plane:
    name: str
    kind: str  # tpu | gpu | host | other
    ordinal: int | None  # device planes: the device's ordinal on its host
    lines: dict  # line name -> tuple[Event, ...] (lines of the same name are merged)
    stats: dict

    @property
    def label(self) -> str:
        return self.name.removeprefix("/device:") if self.kind in ("tpu", "gpu") else self.name

    def events(self, *, derived: bool | None = None) -> list[Event]:
        """All events; ``derived=False``: stream lines only, ``True``: derived lines only."""
        out: list[Event] = []
        for name, evs in self.lines.items():
            if derived is None or (name in DERIVED_LINES) == derived:
                out.extend(evs)
        return out


TASK_ENVIRONMENT = "Task Environment"


@dataclasses.dataclass(frozen=True)
class Space:
    planes: tuple[Plane, ...]
    source: str | None = None  # file path, when read from one

    @property
    def device_planes(self) -> tuple[Plane, ...]:
        devs = [p for p in self.planes if p.kind in ("tpu", "gpu")]
        return tuple(sorted(devs, key=lambda p: (p.kind, p.ordinal)))

    @property
    def complete(self) -> bool:
        """The profiler writes the ``Task Environment`` plane last (TPU, GPU and CPU captures
        alike): a capture without it was cut short (e.g. truncated at a plane boundary, which
        still parses) and may lack devices."""
        return any(p.name == TASK_ENVIRONMENT for p in self.planes)

    @property
    def ignored_planes(self) -> tuple[str, ...]:
        """``/device:`` planes that are not TPU/GPU devices (e.g. ``/device:CUSTOM:Megascale Trace``)."""
        return tuple(p.name for p in self.planes if p.kind == "other" and p.name.startswith("/device:"))

    @property
    def host_planes(self) -> tuple[Plane, ...]:
        return tuple(p for p in self.planes if p.kind == "host")

    def annotations(self) -> list[tuple[float, float]]:
        """The suite's call annotations (host time windows), in time order."""
        out = [(e.start_ns, e.end_ns) for p in self.host_planes for e in p.events() if e.name == ANNOTATION]
        return sorted(out)

    def plane(self, kind: str, ordinal: int) -> Plane | None:
        for p in self.device_planes:
            if p.kind == kind and p.ordinal == ordinal:
                return p
        return None


def _kind(name: str) -> tuple[str, int | None]:
    m = DEVICE_PLANE_RE.match(name)
    if m:
        return m.group(1).lower(), int(m.group(2))
    if name.startswith("/host:"):
        return "host", None
    return "other", None


def _stats(obj: Any) -> dict:
    try:
        return dict(obj.stats)
    except Exception:  # noqa: BLE001 - a plane or event with unreadable stats has none for us
        return {}


def _read_plane(plane: Any) -> Plane:
    kind, ordinal = _kind(plane.name)
    lines: dict[str, list[Event]] = {}
    for line in plane.lines:
        evs = lines.setdefault(line.name, [])
        for e in line.events:
            name = e.name
            evs.append(Event(name, display_name(name), float(e.start_ns), float(e.start_ns) + float(e.duration_ns),
                             _stats(e)))
    return Plane(plane.name, kind, ordinal, {k: tuple(v) for k, v in lines.items()}, _stats(plane))


def read(path_or_data: Any) -> Space:
    """A capture file (``*.xplane.pb``), a ``ProfileData`` or a :class:`Space`, as a :class:`Space`."""
    if isinstance(path_or_data, Space):
        return path_or_data
    import jax

    source = None
    data = path_or_data
    if isinstance(path_or_data, (str, Path)):
        source = str(path_or_data)
        if Path(source).is_file() and Path(source).stat().st_size == 0:
            raise ValueError("empty file (0 bytes): not a profiler capture")
        data = jax.profiler.ProfileData.from_file(source)
    with warnings.catch_warnings():  # jaxlib's stats type warns once on first use (no __module__)
        warnings.simplefilter("ignore", DeprecationWarning)
        planes = tuple(_read_plane(p) for p in data.planes)
    if not planes:
        raise ValueError("no planes: an empty or foreign protobuf, not a profiler capture")
    return Space(planes, source)


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length (us) of the union of ``(start_ns, end_ns)`` intervals."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total / 1e3
