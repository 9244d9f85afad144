"""Mesh shape: validation, defaults per device kind, config files, device ordering."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import jax
import pytest
import yaml

from rpa_bench.parallel.mesh import (
    DeviceInfo,
    MeshSpec,
    abstract_mesh,
    chip_major_order,
    default_mesh_for,
    make_mesh,
    mesh_devices,
    mesh_spec_from_config,
)
from rpa_bench.workloads.model import ModelSpec

MESH_DIR = Path(__file__).resolve().parents[1] / "conf" / "mesh"
LLAMA = ModelSpec("llama3_8b", 32, 8, 128)


@pytest.mark.parametrize("kind,n,expected", [
    ("TPU7x", 8, MeshSpec(2, 1)),  # both TensorCores of one chip
    ("TPU7x", 1, MeshSpec(1, 1)),  # only one visible
    ("TPU v6 lite", 8, MeshSpec(1, 1)),
    ("TPU v5p", 4, MeshSpec(1, 1)),  # megacore: one device per chip already
    ("NVIDIA H100 80GB HBM3", 8, MeshSpec(1, 1)),
    ("cpu", 8, MeshSpec(1, 1)),
    ("some future chip", 4, MeshSpec(1, 1)),
])
def test_default_mesh_is_one_whole_chip(kind, n, expected):
    assert default_mesh_for(kind, n) == expected


def test_tensor_parallel_split_must_divide_kv_heads_and_names_the_numbers():
    with pytest.raises(ValueError, match=r"mesh.model=3 must divide model.num_kv_heads=8"):
        MeshSpec(1, 3).local_model(LLAMA)
    local = MeshSpec(2, 4).local_model(LLAMA)
    assert (local.num_q_heads, local.num_kv_heads, local.head_dim) == (8, 2, 128)
    assert MeshSpec(4, 1).local_model(LLAMA) is LLAMA


@pytest.mark.parametrize("bad", [{"data": 0}, {"model": -1}, {"data": 1.5}, {"data": True}])
def test_bad_axis_sizes_are_refused_by_field(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=f"mesh.{field}="):
        MeshSpec(**bad)


def test_label_round_trips_and_bad_labels_are_refused():
    spec = MeshSpec(2, 4)
    assert spec.label == "data=2,model=4" and spec.num_devices == 8
    assert MeshSpec.parse(spec.label) == spec
    with pytest.raises(ValueError, match="expected 'data=<int>,model=<int>'"):
        MeshSpec.parse("dp=2")


@pytest.mark.parametrize("path", sorted(MESH_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_mesh_config_resolves(path):
    cfg = yaml.safe_load(path.read_text())
    spec = mesh_spec_from_config(cfg, device_kind="TPU7x", num_devices=8)
    assert 1 <= spec.num_devices <= 8
    spec.check_model(LLAMA)


def test_auto_mesh_fills_one_chip_together_with_the_model_axis():
    assert mesh_spec_from_config({"data": None, "model": 1}, device_kind="TPU7x", num_devices=8) == MeshSpec(2, 1)
    assert mesh_spec_from_config({"data": None, "model": 2}, device_kind="TPU7x", num_devices=8) == MeshSpec(1, 2)
    assert mesh_spec_from_config({"data": None}, device_kind="cpu", num_devices=8) == MeshSpec(1, 1)
    # model: null with data set: heads split over the chip's devices (conf/mesh/auto_tp.yaml)
    assert mesh_spec_from_config({"data": 1, "model": None}, device_kind="TPU7x", num_devices=8) == MeshSpec(1, 2)
    assert mesh_spec_from_config({"data": 2, "model": None}, device_kind="TPU7x", num_devices=8) == MeshSpec(2, 1)
    assert mesh_spec_from_config({"data": 1, "model": None}, device_kind="cpu", num_devices=8) == MeshSpec(1, 1)
    with pytest.raises(ValueError, match=r"mesh.model=null \(auto\) needs the device kind"):
        mesh_spec_from_config({"data": 1, "model": None})
    with pytest.raises(ValueError, match="needs the device kind"):
        mesh_spec_from_config({"data": None})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['tp'\]"):
        mesh_spec_from_config({"data": 1, "tp": 2})


def _dev(i, coords=None, core=None, process=0):
    return SimpleNamespace(id=i, process_index=process, platform="tpu", device_kind="TPU7x",
                           coords=coords, core_on_chip=core, local_hardware_id=i)


def test_devices_of_one_chip_are_adjacent_so_data2_is_one_tpu7x_chip():
    # ids interleave chips on purpose: 0,1 on chip (0,0,0) cores 0/1 would be natural,
    # here chip (1,0,0) holds ids 0 and 2.
    devs = [_dev(0, (1, 0, 0), 0), _dev(1, (0, 0, 0), 0), _dev(2, (1, 0, 0), 1), _dev(3, (0, 0, 0), 1)]
    ordered = chip_major_order(devs)
    assert [d.id for d in ordered] == [1, 3, 0, 2]
    info = DeviceInfo.of(devs[2])
    assert info.coords == (1, 0, 0) and info.core_on_chip == 1


def test_one_device_mesh_and_too_few_devices():
    mesh = make_mesh(MeshSpec(1, 1))
    assert dict(mesh.shape) == {"data": 1, "model": 1}
    assert mesh_devices(mesh)[0].id == jax.devices()[0].id
    n = len(jax.devices())
    with pytest.raises(ValueError, match=f"needs {n + 1} devices; {n} available"):
        make_mesh(MeshSpec(n + 1, 1))


def test_abstract_mesh_carries_the_tpu_kind():
    am = abstract_mesh(MeshSpec(2, 2), "TPU7x")
    assert dict(am.shape) == {"data": 2, "model": 2}
    assert am.abstract_device.device_kind == "TPU7x"
