"""The device mesh a kernel call is sharded over: shape as data, JAX meshes from it.

Two axes, named as serving engines name them:
- ``data``: the sequences of one ragged batch are split across these devices (each runs
  its own sub-batch with its own metadata and its own cache shard);
- ``model``: tensor parallel over KV heads (each device holds ``h_kv / model`` KV heads
  and their query heads), as vLLM splits attention.

Devices are laid out chip-major (the devices of one chip are adjacent) with ``model``
the innermost axis, so a tensor-parallel group stays on one chip where it fits and a
``data=2`` mesh on TPU7x is exactly the two TensorCores of one chip.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rpa_bench.roofline.specs import spec_for_device_kind
from rpa_bench.workloads.model import ModelSpec

DATA, MODEL = "data", "model"
AXES = (DATA, MODEL)


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """Mesh shape: ``data`` x ``model`` devices."""

    data: int = 1
    model: int = 1

    def __post_init__(self) -> None:
        for field in AXES:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"mesh.{field}={value!r} must be a positive integer")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.data, self.model)

    @property
    def num_devices(self) -> int:
        return self.data * self.model

    @property
    def label(self) -> str:
        """The schema's ``mesh`` column: ``data=2,model=1``."""
        return f"{DATA}={self.data},{MODEL}={self.model}"

    @classmethod
    def parse(cls, label: str) -> "MeshSpec":
        """Inverse of :attr:`label`."""
        try:
            parts = dict(item.split("=") for item in label.split(","))
            return cls(**{k.strip(): int(v) for k, v in parts.items()})
        except (ValueError, TypeError) as e:
            raise ValueError(f"mesh={label!r}; expected 'data=<int>,model=<int>'") from e

    def check_model(self, model: ModelSpec) -> None:
        """Refuse a ``model`` split that does not divide the KV heads."""
        if model.num_kv_heads % self.model:
            raise ValueError(
                f"mesh.model={self.model} must divide model.num_kv_heads={model.num_kv_heads} "
                f"(tensor parallel splits KV heads; allowed: divisors of {model.num_kv_heads})"
            )

    def local_model(self, model: ModelSpec) -> ModelSpec:
        """The attention shape one device sees: ``h_q / model`` and ``h_kv / model`` heads."""
        self.check_model(model)
        if self.model == 1:
            return model
        return dataclasses.replace(
            model,
            num_q_heads=model.num_q_heads // self.model,
            num_kv_heads=model.num_kv_heads // self.model,
        )


def devices_per_chip_for(device_kind: str) -> int:
    """JAX devices one chip of this kind shows (TPU7x: 2, one per TensorCore); 1 if unknown."""

    try:
        return spec_for_device_kind(device_kind).devices_per_chip
    except ValueError:
        return 1


def default_mesh_for(device_kind: str, num_devices: int) -> MeshSpec:
    """The mesh a run uses when none is configured: one whole chip.

    TPU7x shows its two TensorCores as two JAX devices (no megacore), and the paper's
    figures are per chip, so the default there is ``data=2`` over both TensorCores.
    Every other kind: one device.
    """
    if num_devices < 1:
        raise ValueError(f"num_devices={num_devices} must be >= 1")
    return MeshSpec(data=max(1, min(devices_per_chip_for(device_kind), num_devices)), model=1)


def mesh_spec_from_config(cfg: Mapping[str, Any] | None, *, device_kind: str | None = None,
                          num_devices: int | None = None) -> MeshSpec:
    """``MeshSpec`` from a ``mesh`` config mapping (``{data, model}``).

    A null axis fills one chip of the device kind (:func:`default_mesh_for`) together
    with the other axis: ``data: null`` (conf/mesh/auto.yaml: sequences split over the
    chip's devices; with both null, or ``model`` absent, model is 1) and ``data: <n>,
    model: null`` (conf/mesh/auto_tp.yaml: heads split over the chip's devices). On a
    kind with one device per chip both give one device. Unknown keys are refused.
    """
    cfg = dict(cfg or {})
    unknown = set(cfg) - set(AXES)
    if unknown:
        raise ValueError(f"mesh: unknown key(s) {sorted(unknown)}; allowed: {', '.join(AXES)}")
    data, model = cfg.get(DATA), cfg.get(MODEL)
    if data is not None and model is not None:
        return MeshSpec(data=data, model=model)
    if device_kind is None or num_devices is None:
        axis = DATA if data is None else MODEL
        raise ValueError(f"mesh.{axis}=null (auto) needs the device kind and device count")
    chip = default_mesh_for(device_kind, num_devices).num_devices  # one whole chip
    if data is None:
        model = 1 if model is None else model
        return MeshSpec(data=max(1, chip // max(1, int(model))), model=model)
    return MeshSpec(data=data, model=max(1, chip // max(1, int(data))))


# --- devices ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What accounting needs to know about one JAX device (plain data, testable)."""

    id: int
    process_index: int
    platform: str
    device_kind: str
    coords: tuple[int, ...] | None = None  # TPU: the chip's coordinates in the slice
    core_on_chip: int | None = None  # TPU: which TensorCore of the chip
    local_hardware_id: int | None = None  # ordinal on its host (profiler plane /device:X:N)

    @classmethod
    def of(cls, device: Any) -> "DeviceInfo":
        coords = getattr(device, "coords", None)
        core = getattr(device, "core_on_chip", None)
        local = getattr(device, "local_hardware_id", None)
        return cls(
            id=int(device.id),
            process_index=int(getattr(device, "process_index", 0)),
            platform=str(device.platform),
            device_kind=str(device.device_kind),
            coords=None if coords is None else tuple(int(c) for c in coords),
            core_on_chip=None if core is None else int(core),
            local_hardware_id=None if local is None else int(local),
        )


def chip_major_order(devices: Sequence[Any]) -> list[Any]:
    """Devices sorted so the devices of one chip are adjacent (process, coords, core, id)."""

    def key(d: Any):
        info = DeviceInfo.of(d)
        return (info.process_index, info.coords or (), info.core_on_chip or 0, info.id)

    return sorted(devices, key=key)


def make_mesh(spec: MeshSpec, devices: Sequence[Any] | None = None):
    """A ``jax.sharding.Mesh`` of ``spec.num_devices`` devices, chip-major, ``model`` innermost."""
    import jax
    from jax.sharding import Mesh

    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < spec.num_devices:
        kind = devices[0].device_kind if devices else "none"
        raise ValueError(
            f"mesh {spec.label} needs {spec.num_devices} devices; {len(devices)} available ({kind})"
        )
    chosen = chip_major_order(devices)[: spec.num_devices]
    return Mesh(np.array(chosen, dtype=object).reshape(spec.shape), AXES)


def abstract_mesh(spec: MeshSpec, device_kind: str, *, platform: str = "tpu"):
    """An ``AbstractMesh`` of ``spec`` abstract devices of ``device_kind``, for lowering
    a sharded program for TPU on a machine without one (see kernels/lowering.py)."""
    from jax.sharding import AbstractDevice, AbstractMesh

    device = AbstractDevice(device_kind=device_kind, num_cores=1, platform=platform)
    return AbstractMesh(spec.shape, AXES, abstract_device=device)


def mesh_devices(mesh: Any) -> tuple[DeviceInfo, ...]:
    """The mesh's devices in mesh order (row-major over ``data``, ``model``)."""
    return tuple(DeviceInfo.of(d) for d in np.asarray(mesh.devices).reshape(-1))
