"""Device peak figures as data: :class:`DeviceSpec`, lookup by name and by JAX device kind.

The figures live in ``devices.yaml`` beside this module, each with its source. They are
per chip unless ``per_device`` is true; :meth:`DeviceSpec.for_devices` rescales them to
the JAX devices a measurement actually used (TPU7x shows its two TensorCores as two JAX
devices, each with half the chip's bandwidth and FLOP/s).

The ``cpu`` entry is a placeholder marked ``measured``: :func:`get_device_spec` replaces
its peaks with the latest ``rpa-bench calibrate`` result for this machine when one exists.
"""

from __future__ import annotations

import dataclasses
import functools
from importlib import resources

import yaml

from rpa_bench.workloads.scheduler_spec import SchedulerSpec

VENDORS = ("google", "nvidia", "cpu")
ONCHIP_MEM_KINDS = ("VMEM", "L2", "LLC")
# Numeric fields of a spec; each non-null one must name its source.
NUMERIC_FIELDS = (
    "peak_bf16_flops_per_s",
    "peak_fp8_flops_per_s",
    "peak_int8_ops_per_s",
    "peak_f32_flops_per_s",
    "hbm_bw_bytes_per_s",
    "hbm_capacity_bytes",
    "onchip_mem_bytes",
    "matrix_unit_width",
)
# Fields that scale with the number of devices (everything but the per-core ones).
_SCALED_FIELDS = NUMERIC_FIELDS[:6]
# Compute dtype -> spec field holding its peak.
PEAK_FIELD_BY_DTYPE = {
    "bfloat16": "peak_bf16_flops_per_s",
    "float16": "peak_bf16_flops_per_s",
    "float8_e4m3fn": "peak_fp8_flops_per_s",
    "float8_e5m2": "peak_fp8_flops_per_s",
    "int8": "peak_int8_ops_per_s",
    "float32": "peak_f32_flops_per_s",
}


@dataclasses.dataclass(frozen=True)
class FieldSource:
    """Where one number of a spec comes from (URL, document or "measured: <file>")."""

    field: str
    source: str


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """Peak figures of one accelerator (or of the CPU, measured).

    Figures cover ``num_devices`` JAX devices: a whole chip as listed (``per_device``
    false, ``num_devices == devices_per_chip``) or one device after ``for_devices(1)``.
    ``onchip_mem_bytes`` and ``matrix_unit_width`` are per core and never rescaled.
    """

    name: str  # "tpu7x", "h100_sxm", "cpu", ...
    device_kinds: tuple[str, ...]  # jax.devices()[0].device_kind strings matched exactly
    vendor: str  # google | nvidia | cpu
    peak_bf16_flops_per_s: float
    peak_fp8_flops_per_s: float | None
    peak_int8_ops_per_s: float | None
    peak_f32_flops_per_s: float | None
    hbm_bw_bytes_per_s: float
    hbm_capacity_bytes: float | None
    onchip_mem_bytes: int | None  # VMEM per TensorCore / L2 per GPU
    onchip_mem_kind: str  # VMEM | L2 | LLC
    matrix_unit_width: int | None  # TPU MXU width (128 / 256); None: GPU / CPU
    cores_per_chip: int  # TensorCores per chip (1 for GPUs / CPU)
    devices_per_chip: int  # JAX devices one chip shows
    per_device: bool  # True: figures are per JAX device; False: per chip
    sources: tuple[FieldSource, ...]
    measured: bool = False  # True: peaks come from (or await) a calibration
    num_devices: int = 0  # JAX devices these figures cover (0: filled in from the above)

    def __post_init__(self) -> None:
        if self.vendor not in VENDORS:
            raise ValueError(f"device {self.name}: vendor={self.vendor!r}; allowed: {', '.join(VENDORS)}")
        if self.onchip_mem_kind not in ONCHIP_MEM_KINDS:
            raise ValueError(
                f"device {self.name}: onchip_mem_kind={self.onchip_mem_kind!r}; "
                f"allowed: {', '.join(ONCHIP_MEM_KINDS)}"
            )
        for field in ("peak_bf16_flops_per_s", "hbm_bw_bytes_per_s"):
            if not getattr(self, field) or getattr(self, field) <= 0:
                raise ValueError(f"device {self.name}: {field}={getattr(self, field)!r} must be > 0")
        for field in ("cores_per_chip", "devices_per_chip"):
            if getattr(self, field) < 1:
                raise ValueError(f"device {self.name}: {field}={getattr(self, field)} must be >= 1")
        if self.matrix_unit_width is not None and self.matrix_unit_width < 1:
            raise ValueError(f"device {self.name}: matrix_unit_width={self.matrix_unit_width} must be >= 1 or null")
        if self.num_devices == 0:
            object.__setattr__(self, "num_devices", 1 if self.per_device else self.devices_per_chip)
        if self.num_devices < 1:
            raise ValueError(f"device {self.name}: num_devices={self.num_devices} must be >= 1")

    # --- lookups -----------------------------------------------------------------------
    def source_for(self, field: str) -> str | None:
        """The source of one numeric field (None when the field has none)."""
        for s in self.sources:
            if s.field == field:
                return s.source
        return None

    def peak_flops_per_s(self, dtype: str = "bfloat16") -> float:
        """Dense matmul peak for a compute dtype; ``ValueError`` when unpublished."""
        if dtype not in PEAK_FIELD_BY_DTYPE:
            raise ValueError(f"dtype={dtype!r}; allowed: {', '.join(PEAK_FIELD_BY_DTYPE)}")
        value = getattr(self, PEAK_FIELD_BY_DTYPE[dtype])
        if value is None:
            raise ValueError(f"device {self.name} has no {PEAK_FIELD_BY_DTYPE[dtype]} (dtype={dtype!r})")
        return float(value)

    def max_mxu_utilization(self, head_dim: int) -> float:
        """Largest fraction of the matrix unit attention's two matmuls can keep busy.

        QK^T contracts over ``head_dim`` and PV produces ``head_dim`` columns, so on a
        ``W``-wide systolic array one pass covers ``min(head_dim, W)`` of ``W`` rows or
        columns: the cap is ``head_dim / (ceil(head_dim / W) * W)``. TPU7x (W=256):
        head_dim 128 -> 0.5, 256 -> 1.0; v5e (W=128): 128 -> 1.0. GPUs/CPU -> 1.0.
        """
        if head_dim < 1:
            raise ValueError(f"head_dim={head_dim} must be >= 1")
        w = self.matrix_unit_width
        if w is None:
            return 1.0
        return head_dim / (-(-head_dim // w) * w)

    # --- rescaling ---------------------------------------------------------------------
    def per_device_spec(self) -> "DeviceSpec":
        """Figures of one JAX device (TPU7x: one TensorCore, half the chip)."""
        return self.for_devices(1)

    def for_devices(self, num_devices: int) -> "DeviceSpec":
        """Figures for ``num_devices`` JAX devices of this kind (bandwidth, FLOP/s, HBM)."""
        if num_devices < 1:
            raise ValueError(f"num_devices={num_devices} must be >= 1")
        scale = num_devices / self.num_devices
        changes = {
            f: (None if getattr(self, f) is None else getattr(self, f) * scale) for f in _SCALED_FIELDS
        }
        return dataclasses.replace(self, **changes, num_devices=num_devices, per_device=num_devices == 1)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["sources"] = {s.field: s.source for s in self.sources}
        out["device_kinds"] = list(self.device_kinds)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "DeviceSpec":
        """The inverse of :meth:`to_dict` (e.g. a run manifest's ``device_spec``)."""
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        sources = tuple(FieldSource(str(k), str(v)) for k, v in (d.pop("sources", None) or {}).items())
        d["device_kinds"] = tuple(d.get("device_kinds") or ())
        return cls(**{k: v for k, v in d.items() if k in names}, sources=sources)


# --- loading ---------------------------------------------------------------------------
def _parse(entry: dict) -> DeviceSpec:
    entry = dict(entry)
    sources = []
    for field in NUMERIC_FIELDS:
        item = entry.get(field)
        if item is None:
            entry[field] = None
            continue
        if not isinstance(item, dict) or "value" not in item or not item.get("source"):
            raise ValueError(f"devices.yaml: {entry.get('name')}.{field} needs {{value, source}}; got {item!r}")
        value = float(item["value"])
        entry[field] = int(value) if field in ("matrix_unit_width", "onchip_mem_bytes") else value
        sources.append(FieldSource(field, str(item["source"])))
    entry["device_kinds"] = tuple(entry["device_kinds"])
    return DeviceSpec(**entry, sources=tuple(sources))


@functools.cache
def _table() -> tuple[DeviceSpec, ...]:
    text = resources.files("rpa_bench.roofline").joinpath("devices.yaml").read_text()
    return tuple(_parse(e) for e in yaml.safe_load(text)["devices"])


def device_names() -> tuple[str, ...]:
    """Names accepted by :func:`get_device_spec`."""
    return tuple(s.name for s in _table())


def listed_device_spec(name: str) -> DeviceSpec:
    """The spec exactly as listed in devices.yaml (no calibration applied)."""
    key = name.lower().replace("-", "_")
    aliases = {"v4": "tpu_v4", "v5e": "tpu_v5e", "v5p": "tpu_v5p", "v6e": "tpu_v6e", "tpu_7x": "tpu7x",
               "h100": "h100_sxm", "tpu_v7x": "tpu7x"}
    key = aliases.get(key, key)
    for spec in _table():
        if spec.name == key:
            return spec
    raise ValueError(f"device={name!r}; allowed: {', '.join(device_names())} (or auto)")


def get_device_spec(name: str) -> DeviceSpec:
    """Spec by name (``tpu7x``, ``tpu_v6e``, ``h100_sxm``, ``cpu``), as listed.

    Pure data: a ``measured`` spec (the CPU) keeps its placeholder peaks here. ``auto``
    (the attached device) and this machine's calibration are resolved by
    :func:`rpa_bench.roofline.calibration.resolve_roofline`.
    """
    if name == "auto":
        raise ValueError("device=auto is resolved against this machine: use roofline.calibration.resolve_roofline")
    return listed_device_spec(name)


def spec_for_device_kind(device_kind: str) -> DeviceSpec:
    """The listed spec whose ``device_kinds`` contains ``device_kind`` (exact, case-insensitive)."""
    for spec in _table():
        if device_kind.lower() in (k.lower() for k in spec.device_kinds):
            return spec
    kinds = [k for s in _table() for k in s.device_kinds]
    raise ValueError(f"device_kind={device_kind!r} is not in devices.yaml; known: {', '.join(kinds)}")


def with_device_peaks(scheduler: SchedulerSpec) -> SchedulerSpec:
    """``scheduler`` with its unset step-time peaks taken from ``scheduler.device`` (as listed:
    the simulated server's datasheet, whatever machine runs the simulation)."""
    if scheduler.hbm_bw_bytes_per_s is not None and scheduler.peak_flops_per_s is not None:
        return scheduler
    try:
        spec = listed_device_spec(scheduler.device)
    except ValueError as e:
        raise ValueError(f"scheduler.device: {e}") from None
    return dataclasses.replace(
        scheduler,
        hbm_bw_bytes_per_s=float(scheduler.hbm_bw_bytes_per_s or spec.hbm_bw_bytes_per_s),
        peak_flops_per_s=float(scheduler.peak_flops_per_s or spec.peak_bf16_flops_per_s))
