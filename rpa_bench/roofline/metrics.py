"""MBU / MFU / roofline bound of one measured call, under a named convention.

Conventions (``Metrics.convention`` says which one a number uses):

``paper`` — as arXiv:2604.15464 computes its tables:
  MBU = (hbm_bytes / 1024**3 / latency_s) / (bandwidth / 1e9) * 100  (GiB/s over GB/s)
  MFU = (flops / 1e12 / latency_s) / (peak / 1e12 * cap) * 100, where ``cap`` is the
  largest matrix-unit utilisation attention can reach (DeviceSpec.max_mxu_utilization:
  0.5 for head_dim 128 on TPU7x's 256-wide MXU).
``si`` — unit-consistent: MBU = (bytes/s) / (bytes/s); MFU = (FLOP/s) / plain peak.
  For the same point, si MBU = paper MBU * 1024**3 / 1e9 (1.0737...), si MFU = paper MFU * cap.

MBU is the decode metric and MFU the prefill metric; a mixed batch gets both. The other
is ``None`` (JSON null). The roofline bound is physical and convention-free:
``max(hbm_bytes / bandwidth, flops / (peak * cap))``; ``roofline_efficiency_pct`` is
bound / measured.

Sanity: ``memory_roof_pct`` / ``compute_roof_pct`` are si utilisations against the
*ceilings* — the calibration when one is given (or ``peak_source="calibrated"``), else
the datasheet. Either above 100% sets ``above_roof`` with a reason: the point is a
measurement or accounting error, never a result.
"""

from __future__ import annotations

import dataclasses

from rpa_bench.roofline.calibration import Calibration, apply_calibration
from rpa_bench.roofline.cost import Cost, roofline_terms_s
from rpa_bench.roofline.specs import DeviceSpec

CONVENTIONS = ("paper", "si")
PHASES = ("decode", "prefill", "mixed")
PEAK_SOURCES = ("datasheet", "calibrated")
GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Metrics:
    """Throughput and utilisation of one call. JSON-ready via :meth:`to_dict`."""

    convention: str
    device: str
    num_devices: int
    phase: str
    latency_us: float
    hbm_bytes: int
    flops: int
    flops_kind: str  # noncausal | causal_executed | causal_useful
    throughput_gib_per_s: float
    throughput_gb_per_s: float
    tflops: float  # 1e12 FLOP/s
    mbu_pct: float | None  # decode and mixed
    mfu_pct: float | None  # prefill and mixed
    peak_source: str  # datasheet | calibrated
    peak_hbm_bw_bytes_per_s: float
    peak_flops_per_s: float
    peak_flops_dtype: str
    max_mxu_utilization: float
    memory_time_us: float
    compute_time_us: float
    bound_time_us: float
    bound_by: str  # memory | compute
    roofline_efficiency_pct: float
    memory_roof_pct: float  # si, against the ceiling used for the roof check
    compute_roof_pct: float
    roof_source: str  # datasheet | calibrated
    above_roof: bool
    above_roof_reason: str | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _peak_dtype(device: DeviceSpec, dtype: str) -> str:
    """The compute dtype whose peak applies; falls back to bfloat16 when unpublished."""
    try:
        device.peak_flops_per_s(dtype)
        return dtype
    except ValueError:
        return "bfloat16"


def _ceilings(device: DeviceSpec, calibration: Calibration | None) -> DeviceSpec:
    if calibration is None:
        return device
    return apply_calibration(device, calibration).for_devices(device.num_devices)


def compute_metrics(
    cost: Cost,
    latency_us: float,
    device: DeviceSpec,
    *,
    convention: str = "paper",
    phase: str | None = None,
    peak_source: str = "datasheet",
    calibration: Calibration | None = None,
    dtype: str | None = None,
) -> Metrics:
    """Metrics of a call with analytic ``cost`` that took ``latency_us`` on ``device``.

    ``device`` must cover the JAX devices the call ran on (``DeviceSpec.for_devices``).
    ``phase``: defaults to ``cost.phase``. ``peak_source="calibrated"`` divides by the
    measured ceilings in ``calibration`` (resolved by
    :func:`rpa_bench.roofline.calibration.resolve_roofline`; metrics read no files).
    ``dtype``: the matmul dtype for the FLOP/s peak (default ``cost.dtype``).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r}; allowed: {', '.join(CONVENTIONS)}")
    if peak_source not in PEAK_SOURCES:
        raise ValueError(f"peak_source={peak_source!r}; allowed: {', '.join(PEAK_SOURCES)}")
    phase = phase or cost.phase
    if phase not in PHASES:
        raise ValueError(f"phase={phase!r}; allowed: {', '.join(PHASES)}")
    if not latency_us > 0:
        raise ValueError(f"latency_us={latency_us!r} must be > 0")
    if peak_source == "calibrated" and calibration is None:
        raise ValueError(f"peak_source='calibrated' but no calibration for device {device.name}; "
                         "run `rpa-bench calibrate` on this machine, then pass its calibration=")
    ceilings = _ceilings(device, calibration)
    peaks = ceilings if peak_source == "calibrated" else device
    pdtype = _peak_dtype(peaks, dtype or cost.dtype)
    peak_flops = peaks.peak_flops_per_s(pdtype)
    bw = peaks.hbm_bw_bytes_per_s
    cap = device.max_mxu_utilization(cost.head_dim) if cost.head_dim else 1.0

    latency_s = latency_us * 1e-6
    hbm, flops = int(cost.hbm_bytes), int(cost.flops)
    gib_s = hbm / GIB / latency_s
    gb_s = hbm / 1e9 / latency_s
    flop_s = flops / latency_s
    if convention == "paper":
        mbu = gib_s / (bw / 1e9) * 100
        mfu = flop_s / (peak_flops * cap) * 100
    else:
        mbu = gb_s / (bw / 1e9) * 100
        mfu = flop_s / peak_flops * 100

    mem_s, comp_s = roofline_terms_s(hbm, flops, peaks, dtype=pdtype, max_mxu_utilization=cap)
    mem_us, comp_us = mem_s * 1e6, comp_s * 1e6
    bound_us = max(mem_us, comp_us)

    roof_dtype = _peak_dtype(ceilings, dtype or cost.dtype)
    mem_roof = hbm / latency_s / ceilings.hbm_bw_bytes_per_s * 100
    comp_roof = flop_s / ceilings.peak_flops_per_s(roof_dtype) * 100
    roof_source = "calibrated" if calibration is not None else "datasheet"
    reasons = []
    if mem_roof > 100:
        reasons.append(f"HBM traffic at {mem_roof:.1f}% of the {roof_source} "
                       f"hbm_bw_bytes_per_s={ceilings.hbm_bw_bytes_per_s:.4g}")
    if comp_roof > 100:
        reasons.append(f"FLOP/s at {comp_roof:.1f}% of the {roof_source} "
                       f"{roof_dtype} peak={ceilings.peak_flops_per_s(roof_dtype):.4g}")
    return Metrics(
        convention=convention,
        device=device.name,
        num_devices=device.num_devices,
        phase=phase,
        latency_us=float(latency_us),
        hbm_bytes=hbm,
        flops=flops,
        flops_kind=cost.flops_kind,
        throughput_gib_per_s=gib_s,
        throughput_gb_per_s=gb_s,
        tflops=flop_s / 1e12,
        mbu_pct=mbu if phase in ("decode", "mixed") else None,
        mfu_pct=mfu if phase in ("prefill", "mixed") else None,
        peak_source=peak_source,
        peak_hbm_bw_bytes_per_s=float(bw),
        peak_flops_per_s=float(peak_flops),
        peak_flops_dtype=pdtype,
        max_mxu_utilization=float(cap),
        memory_time_us=mem_us,
        compute_time_us=comp_us,
        bound_time_us=bound_us,
        bound_by="memory" if mem_us >= comp_us else "compute",
        roofline_efficiency_pct=bound_us / latency_us * 100,
        memory_roof_pct=mem_roof,
        compute_roof_pct=comp_roof,
        roof_source=roof_source,
        above_roof=bool(reasons),
        above_roof_reason="; ".join(reasons) or None,
    )
