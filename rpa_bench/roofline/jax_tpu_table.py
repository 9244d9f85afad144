"""JAX's own TPU figures, read offline, and where they disagree with ``devices.yaml``.

``jax.experimental.pallas.tpu.get_tpu_info_for_chip`` returns JAX's table for any TPU
generation on any machine, per TensorCore; :func:`jax_tpu_figures` turns it into per-chip
figures comparable with a listed :class:`DeviceSpec`. Known disagreements (as of JAX
0.11.2), kept in :data:`KNOWN_DISAGREEMENTS` and checked by a test:

- v4: HBM bandwidth 1200 GB/s (Cloud docs) vs 1230 GB/s (JAX).
- v5p: HBM bandwidth 2765 GB/s (Cloud docs) vs 2460 GB/s (JAX), 11% apart.
- HBM capacities agree once read as GiB (the Cloud TPU7x page lists 95 / 32 / 192 GiB for
  v5p / v6e / TPU7x; the paper writes "192 GB").
- TPU7x: JAX rounds to 7.40e12 B/s and 2.31e15 FLOP/s (paper: 7380 GB/s, 2307 TFLOP/s),
  within 0.3%, below the tolerance.
"""

from __future__ import annotations

import dataclasses

from rpa_bench.generations import GENERATIONS
from rpa_bench.roofline.specs import DeviceSpec

# spec name -> JAX ChipVersion value (from the one generation table)
CHIP_VERSION_BY_SPEC = {g.spec_name: g.jax_chip_version for g in GENERATIONS}
COMPARED_FIELDS = (
    "hbm_bw_bytes_per_s",
    "peak_bf16_flops_per_s",
    "peak_fp8_flops_per_s",
    "peak_int8_ops_per_s",
    "hbm_capacity_bytes",
    "onchip_mem_bytes",
    "matrix_unit_width",
)
REL_TOL = 0.02
# (spec name, field) pairs whose disagreement beyond REL_TOL is known and documented above.
KNOWN_DISAGREEMENTS = frozenset({
    ("tpu_v4", "hbm_bw_bytes_per_s"),
    ("tpu_v5p", "hbm_bw_bytes_per_s"),
})


@dataclasses.dataclass(frozen=True)
class JaxTpuFigures:
    """JAX's table scaled to a whole chip (per-core fields stay per TensorCore)."""

    chip_version: str
    tensor_cores_per_chip: int
    hbm_bw_bytes_per_s: float
    peak_bf16_flops_per_s: float
    peak_fp8_flops_per_s: float | None  # None where JAX says "not available" (0)
    peak_int8_ops_per_s: float | None
    hbm_capacity_bytes: float
    onchip_mem_bytes: int  # VMEM per TensorCore
    matrix_unit_width: int


@dataclasses.dataclass(frozen=True)
class Disagreement:
    spec: str
    field: str
    listed: float | None
    jax: float | None

    @property
    def rel_diff(self) -> float | None:
        if self.listed is None or self.jax is None:
            return None
        return abs(self.listed - self.jax) / self.jax

    def __str__(self) -> str:
        rel = "n/a" if self.rel_diff is None else f"{self.rel_diff:.1%}"
        return f"{self.spec}.{self.field}: listed {self.listed} vs JAX {self.jax} ({rel})"


def jax_tpu_figures(spec_name: str, info=None) -> JaxTpuFigures:
    """JAX's figures for a listed TPU spec name, per chip.

    ``info``: a ``TpuInfo`` (e.g. ``pltpu.get_tpu_info()`` on the attached TPU); default:
    ``get_tpu_info_for_chip(chip, 1)``, which needs no TPU.
    """
    if spec_name not in CHIP_VERSION_BY_SPEC:
        raise ValueError(f"spec_name={spec_name!r}; allowed: {', '.join(CHIP_VERSION_BY_SPEC)}")
    from jax._src.tpu_info import ChipVersion
    from jax.experimental.pallas.tpu import get_tpu_info_for_chip

    chip = ChipVersion(CHIP_VERSION_BY_SPEC[spec_name])
    info = info if info is not None else get_tpu_info_for_chip(chip, 1)
    cores = chip.num_physical_tensor_cores_per_chip

    def chip_total(x: int) -> float | None:
        return None if not x else float(x) * cores

    # single-core "lite" chips list whole-chip figures already (cores == 1)
    return JaxTpuFigures(
        chip_version=str(chip),
        tensor_cores_per_chip=cores,
        hbm_bw_bytes_per_s=chip_total(info.mem_bw_bytes_per_second),
        peak_bf16_flops_per_s=chip_total(info.bf16_ops_per_second),
        peak_fp8_flops_per_s=chip_total(info.fp8_ops_per_second),
        peak_int8_ops_per_s=chip_total(info.int8_ops_per_second),
        hbm_capacity_bytes=chip_total(info.hbm_capacity_bytes),
        onchip_mem_bytes=int(info.vmem_capacity_bytes),
        matrix_unit_width=int(info.mxu_column_size),
    )


def compare_with_jax(spec: DeviceSpec, *, rel_tol: float = REL_TOL, info=None) -> list[Disagreement]:
    """Fields where ``spec`` (per chip) and JAX's table differ by more than ``rel_tol``.

    ``info``: JAX's ``TpuInfo`` to compare with (default: its offline table). A field
    published on one side only is not a disagreement.
    """
    if spec.name not in CHIP_VERSION_BY_SPEC:
        return []
    chip_spec = spec.for_devices(spec.devices_per_chip)
    jax_fig = jax_tpu_figures(spec.name, info)
    out = []
    for field in COMPARED_FIELDS:
        listed, theirs = getattr(chip_spec, field), getattr(jax_fig, field)
        if listed is None or theirs is None:
            continue
        if abs(listed - theirs) > rel_tol * abs(theirs):
            out.append(Disagreement(spec.name, field, listed, theirs))
    return out
