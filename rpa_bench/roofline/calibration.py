"""Measured ceilings of one machine: the record ``rpa-bench calibrate`` writes, and loaders.

Files live at ``<results_dir>/calibration/<hostname>-<device_kind>.json`` (one per machine
and device kind, overwritten by a newer calibration). Metrics use them for MBU / MFU
against achievable ceilings (``peak_source="calibrated"``) and for the above-roof check.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import warnings

from rpa_bench.names import slug
from rpa_bench.roofline.jax_tpu_table import compare_with_jax
from rpa_bench.roofline.specs import PEAK_FIELD_BY_DTYPE, DeviceSpec, FieldSource, listed_device_spec, spec_for_device_kind
from rpa_bench.typed import from_dict


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Achievable HBM bandwidth and dense matmul FLOP/s measured on one device.

    ``hbm_bw_bytes_per_s`` counts bytes read + written by a device copy; the matmul
    figure is for ``matmul_dtype`` (on CPU often float32: the label says which).
    Medians over ``trials``; raw samples are kept.
    """

    hostname: str
    device_kind: str
    platform: str
    num_devices: int  # JAX devices the measurement ran on (1: one device)
    hbm_bw_bytes_per_s: float
    matmul_flops_per_s: float
    matmul_dtype: str
    copy_bytes: int  # bytes read + written per copy
    matmul_m: int  # square matmul size (m x m @ m x m)
    trials: int
    copy_samples_s: tuple[float, ...]
    matmul_samples_s: tuple[float, ...]
    method: str
    jax_version: str
    timestamp: str  # ISO 8601, UTC

    def __post_init__(self) -> None:
        object.__setattr__(self, "copy_samples_s", tuple(float(x) for x in self.copy_samples_s))
        object.__setattr__(self, "matmul_samples_s", tuple(float(x) for x in self.matmul_samples_s))
        for field in ("hbm_bw_bytes_per_s", "matmul_flops_per_s"):
            if getattr(self, field) <= 0:
                raise ValueError(f"calibration.{field}={getattr(self, field)!r} must be > 0")
        if self.matmul_dtype not in PEAK_FIELD_BY_DTYPE:
            raise ValueError(
                f"calibration.matmul_dtype={self.matmul_dtype!r}; allowed: {', '.join(PEAK_FIELD_BY_DTYPE)}"
            )

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["copy_samples_s"] = list(self.copy_samples_s)
        out["matmul_samples_s"] = list(self.matmul_samples_s)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        return from_dict(cls, data, section="calibration")



def calibration_path(device_kind: str, *, results_dir: str | Path = "results",
                     hostname: str | None = None) -> Path:
    host = hostname or socket.gethostname()
    return Path(results_dir) / "calibration" / f"{slug(host, keep='', max_len=200)}-{slug(device_kind, keep='', max_len=200)}.json"


def save_calibration(cal: Calibration, *, results_dir: str | Path = "results") -> Path:
    path = calibration_path(cal.device_kind, results_dir=results_dir, hostname=cal.hostname)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cal.to_dict(), indent=2) + "\n")
    return path


def load_calibration(path: str | Path) -> Calibration:
    return Calibration.from_dict(json.loads(Path(path).read_text()))


def latest_calibration(device_kind: str, *, results_dir: str | Path = "results",
                       hostname: str | None = None) -> Calibration | None:
    """This machine's calibration for ``device_kind``, or None when there is none."""
    path = calibration_path(device_kind, results_dir=results_dir, hostname=hostname)
    if not path.is_file():
        return None
    return load_calibration(path)


def apply_calibration(spec: DeviceSpec, cal: Calibration) -> DeviceSpec:
    """``spec`` with bandwidth and the matmul dtype's peak replaced by measured values.

    For a ``measured`` spec (the CPU) the bf16 peak is also set to the measured matmul
    figure when no bf16 matmul was measured, so FLOP/s ratios stay defined; the source
    says so. The result covers the ``num_devices`` the calibration ran on.
    """
    spec = spec.for_devices(cal.num_devices)
    note = f"measured: rpa-bench calibrate on {cal.hostname} at {cal.timestamp}"
    field = PEAK_FIELD_BY_DTYPE[cal.matmul_dtype]
    changes: dict = {"hbm_bw_bytes_per_s": cal.hbm_bw_bytes_per_s, field: cal.matmul_flops_per_s}
    srcs = {"hbm_bw_bytes_per_s": note, field: f"{note} ({cal.matmul_dtype} matmul)"}
    if spec.measured and field != "peak_bf16_flops_per_s":
        changes["peak_bf16_flops_per_s"] = cal.matmul_flops_per_s
        srcs["peak_bf16_flops_per_s"] = f"{note} ({cal.matmul_dtype} matmul, standing in for bf16)"
    sources = tuple(s for s in spec.sources if s.field not in srcs) + tuple(
        FieldSource(f, s) for f, s in srcs.items()
    )
    return dataclasses.replace(spec, **changes, sources=sources, measured=True)


def detect_device_spec(*, check_jax: bool = True) -> DeviceSpec:
    """The listed spec of ``jax.devices()[0]`` (per chip; see :meth:`DeviceSpec.for_devices`).

    On TPU, cross-checks with ``pltpu.get_tpu_info()`` (JAX's table for the attached
    chip) and warns where the two disagree (e.g. v5p bandwidth: 2765 vs 2460 GB/s).
    """
    import jax  # the attached device: JAX is imported only when a spec is resolved against it

    device = jax.devices()[0]
    spec = spec_for_device_kind(device.device_kind)
    if check_jax and device.platform == "tpu":
        from jax.experimental.pallas.tpu import get_tpu_info

        for d in compare_with_jax(spec, info=get_tpu_info()):
            warnings.warn(f"devices.yaml vs JAX's TPU table: {d}", stacklevel=2)
    return spec


@dataclasses.dataclass(frozen=True)
class Roofline:
    """What metrics need: the spec covering the devices used, and this machine's calibration.

    ``device``: a ``measured`` spec (the CPU) already carries the calibrated peaks;
    ``calibration``: the latest one for the device kind (the roof's measured ceilings), or None.
    """

    device: DeviceSpec
    calibration: Calibration | None


def resolve_roofline(name: str = "auto", *, num_devices: int | None = None, results_dir: str | Path = "results",
                     calibrated: bool = True, compile_only: str | None = None) -> Roofline:
    """The one place a device name becomes the roofline a run divides by.

    ``name``: a listed device or ``auto`` (the attached device); ``num_devices``: the
    devices the figures cover (None: a whole chip as listed); ``compile_only``: a TPU
    device kind compiled for and not run here (its datasheet, no calibration).
    Forced CPU host devices share one host's cores and memory, so the host's (calibrated)
    figures cover all of them: the host is their one "chip".
    """
    if compile_only is not None:
        spec = spec_for_device_kind(compile_only)
        return Roofline(spec if num_devices is None else spec.for_devices(num_devices), None)
    spec = detect_device_spec() if name == "auto" else listed_device_spec(name)
    cal = latest_calibration(spec.device_kinds[0], results_dir=results_dir) if calibrated else None
    if spec.measured and cal is not None:
        spec = apply_calibration(spec, cal)
    if num_devices is not None:
        if spec.vendor == "cpu" and num_devices > 1:
            spec = dataclasses.replace(spec, num_devices=num_devices, devices_per_chip=num_devices, per_device=False)
        else:
            spec = spec.for_devices(num_devices)
    return Roofline(spec, cal)
