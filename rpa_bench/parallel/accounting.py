"""Accounting of a sharded call: per device, per chip, and for the whole mesh.

Conventions (all pure functions of numbers; nothing here runs a kernel):
- each device's bytes and FLOPs are the analytic roofline cost of *its* sub-batch with
  *its* heads (``mesh.local_model``); summed over devices they equal the unsharded cost;
- the step time is the slowest device's time (the call ends when every device is done);
- aggregate MBU / MFU divide the total bytes / FLOPs per step time by the *sum of the
  peaks of the devices used* (``DeviceSpec.for_devices(num_devices)``), so one TPU7x
  TensorCore alone can reach at most 50% of the paper's per-chip peak;
- per-chip figures group devices by chip (TPU: ``device.coords``; elsewhere the spec's
  ``devices_per_chip`` consecutive device ids) and divide by the whole chip's peak;
- load imbalance = max device time / mean device time (1.0 = balanced); it is only
  *measured* when per-device times come from the profiler's device planes, and is
  otherwise left null beside the *modelled* imbalance of roofline bound times.
Figures use SI units (bytes / 1e9 / s); the paper's GiB-over-GB convention is the
metrics module's business.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rpa_bench.parallel.mesh import DeviceInfo
from rpa_bench.roofline.cost import batch_cost
from rpa_bench.workloads.model import AttentionSpec

if TYPE_CHECKING:  # no JAX import here: reports can use these functions on stored rows
    from rpa_bench.parallel.layout import ShardPlan

TIMING_SOURCES = ("device", "wall")


@dataclasses.dataclass(frozen=True)
class DeviceCost:
    """Analytic cost of one device's share of the call."""

    data_index: int
    model_index: int
    num_seqs: int
    num_tokens: int
    hbm_bytes: int
    flops: int


def device_costs(plan: "ShardPlan", attn: AttentionSpec, *, count: str = "executed", ckv: int | None = None,
                 granularity: str = "token") -> tuple[DeviceCost, ...]:
    """Cost of every device of the plan's mesh, in mesh order (``data`` major, ``model`` minor)."""

    out = []
    for d in range(plan.mesh.data):
        sub = plan.partition.sub_batch(d)
        if sub is None:
            cost_bytes = cost_flops = 0
        else:
            c = batch_cost(sub, plan.local_model, causal=attn.causal,
                           sliding_window=attn.sliding_window if attn.causal else None,
                           ckv=ckv, count=count, granularity=granularity)
            cost_bytes, cost_flops = c.hbm_bytes, c.flops
        for m in range(plan.mesh.model):
            out.append(DeviceCost(d, m, 0 if sub is None else sub.num_seqs, 0 if sub is None else sub.num_tokens,
                                  int(cost_bytes), int(cost_flops)))
    return tuple(out)


def chip_labels(devices: Sequence[DeviceInfo], devices_per_chip: int) -> tuple[str, ...]:
    """Which chip each device sits on: TPU chip coordinates when known, else consecutive
    ids of the same process grouped by ``devices_per_chip``."""
    if devices_per_chip < 1:
        raise ValueError(f"devices_per_chip={devices_per_chip} must be >= 1")
    labels = []
    for info in devices:
        if info.coords is not None:
            labels.append("chip(" + ",".join(str(c) for c in info.coords) + ")")
        else:
            labels.append(f"chip{info.process_index}:{info.id // devices_per_chip}")
    return tuple(labels)


def load_imbalance(times_us: Sequence[float]) -> float | None:
    """max / mean of per-device times; None for fewer than two devices or no time."""
    times = [float(t) for t in times_us]
    if len(times) < 2:
        return None
    mean = sum(times) / len(times)
    return max(times) / mean if mean > 0 else None


def _pct(num: float, den: float) -> float | None:
    return None if den <= 0 else num / den * 100.0


@dataclasses.dataclass(frozen=True)
class ChipFigures:
    chip: str
    device_ids: tuple[int, ...]  # the chip's devices this call used
    hbm_bytes: int
    flops: int
    time_us: float  # slowest of its devices
    mbu_pct: float | None  # against the whole chip's bandwidth
    mfu_pct: float | None  # against the whole chip's peak FLOP/s


@dataclasses.dataclass(frozen=True)
class MeshAccounting:
    """Everything the run store and the reports need about one sharded call."""

    mesh: str  # "data=2,model=1"
    num_devices: int
    timing_source: str  # device | wall
    device_ids: tuple[int, ...]
    chips: tuple[str, ...]  # per device
    hbm_bytes: tuple[int, ...]  # per device
    flops: tuple[int, ...]  # per device
    time_us: tuple[float, ...]  # per device (wall: the same step time for all)
    bound_time_us: tuple[float, ...]  # per device roofline lower bound
    per_device_mbu_pct: tuple[float | None, ...]
    per_device_mfu_pct: tuple[float | None, ...]
    step_time_us: float  # max over devices
    total_hbm_bytes: int
    total_flops: int
    mbu_pct: float | None  # total bytes / step time / sum of used devices' bandwidth
    mfu_pct: float | None  # total FLOPs / step time / sum of used devices' peak
    load_imbalance: float | None  # measured: max / mean device time (device timing only)
    modelled_imbalance: float | None  # max / mean of per-device roofline bound times
    per_chip: tuple[ChipFigures, ...]
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.timing_source not in TIMING_SOURCES:
            raise ValueError(f"timing_source={self.timing_source!r}; allowed: {', '.join(TIMING_SOURCES)}")
        n = self.num_devices
        for field in ("device_ids", "chips", "hbm_bytes", "flops", "time_us", "bound_time_us"):
            if len(getattr(self, field)) != n:
                raise ValueError(f"len({field})={len(getattr(self, field))} must equal num_devices={n}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["per_chip"] = [dataclasses.asdict(c) for c in self.per_chip]
        return out


def account(costs: Sequence[DeviceCost], devices: Sequence[DeviceInfo], time_us: Sequence[float], *,
            timing_source: str, mesh: str, device_bw_bytes_per_s: float, device_peak_flops_per_s: float,
            devices_per_chip: int = 1, max_mxu_utilization: float = 1.0) -> MeshAccounting:
    """Per-device, per-chip and mesh figures of one call.

    ``costs``, ``devices``, ``time_us``: one entry per device, in the same (mesh) order;
    ``time_us``: per-device device time (``timing_source="device"``) or the step's wall
    time repeated (``"wall"``: no per-device figure can be told apart then);
    ``device_bw_bytes_per_s`` / ``device_peak_flops_per_s``: peaks of *one* device
    (``DeviceSpec.per_device_spec()``); ``max_mxu_utilization`` caps the FLOP roof of
    the bound time only (see ``DeviceSpec.max_mxu_utilization``).
    """
    n = len(costs)
    if not (n == len(devices) == len(time_us)) or n == 0:
        raise ValueError(f"costs ({n}), devices ({len(devices)}) and time_us ({len(time_us)}) need one entry per device")
    if device_bw_bytes_per_s <= 0 or device_peak_flops_per_s <= 0:
        raise ValueError(
            f"device_bw_bytes_per_s={device_bw_bytes_per_s} and device_peak_flops_per_s="
            f"{device_peak_flops_per_s} must be > 0"
        )
    if timing_source not in TIMING_SOURCES:
        raise ValueError(f"timing_source={timing_source!r}; allowed: {', '.join(TIMING_SOURCES)}")
    times = tuple(float(t) for t in time_us)
    if any(t < 0 for t in times):
        raise ValueError(f"time_us={list(times)} must be >= 0")
    warnings = []
    idle = [d.id for d, c in zip(devices, costs) if c.num_seqs == 0]
    if idle:
        warnings.append(f"device(s) {idle} had no sequence to run; their peaks still count in MBU/MFU "
                        "(for fewer sequences than devices, split heads with mesh.model instead)")
    bw, peak = float(device_bw_bytes_per_s), float(device_peak_flops_per_s)
    hbm = tuple(int(c.hbm_bytes) for c in costs)
    flops = tuple(int(c.flops) for c in costs)
    bound = tuple(max(b / bw, f / (peak * max_mxu_utilization)) * 1e6 for b, f in zip(hbm, flops))
    step = max(times)
    total_b, total_f = sum(hbm), sum(flops)
    step_s = step * 1e-6
    if timing_source == "device":
        dev_mbu = tuple(_pct(b / (t * 1e-6), bw) if t > 0 else None for b, t in zip(hbm, times))
        dev_mfu = tuple(_pct(f / (t * 1e-6), peak) if t > 0 else None for f, t in zip(flops, times))
        measured = load_imbalance(times)
    else:
        dev_mbu = dev_mfu = (None,) * n
        measured = None
        if n > 1:
            warnings.append("per-device times are the step's wall time (no device planes in the capture): "
                            "per-device figures and the measured load imbalance are unavailable")
    chips = chip_labels(devices, devices_per_chip)
    per_chip = []
    for chip in dict.fromkeys(chips):
        idx = [i for i, c in enumerate(chips) if c == chip]
        cb, cf = sum(hbm[i] for i in idx), sum(flops[i] for i in idx)
        ct = max(times[i] for i in idx)
        chip_s = ct * 1e-6
        per_chip.append(ChipFigures(
            chip=chip, device_ids=tuple(devices[i].id for i in idx), hbm_bytes=cb, flops=cf, time_us=ct,
            mbu_pct=_pct(cb / chip_s, bw * devices_per_chip) if ct > 0 else None,
            mfu_pct=_pct(cf / chip_s, peak * devices_per_chip) if ct > 0 else None,
        ))
    return MeshAccounting(
        mesh=mesh, num_devices=n, timing_source=timing_source,
        device_ids=tuple(d.id for d in devices), chips=chips, hbm_bytes=hbm, flops=flops, time_us=times,
        bound_time_us=bound, per_device_mbu_pct=dev_mbu, per_device_mfu_pct=dev_mfu, step_time_us=step,
        total_hbm_bytes=total_b, total_flops=total_f,
        mbu_pct=_pct(total_b / step_s, bw * n) if step > 0 else None,
        mfu_pct=_pct(total_f / step_s, peak * n) if step > 0 else None,
        load_imbalance=measured, modelled_imbalance=load_imbalance(bound) if n > 1 else None,
        per_chip=tuple(per_chip), warnings=tuple(warnings),
    )
