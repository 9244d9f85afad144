"""Device spec table: completeness, sources, detection, rescaling and JAX's own TPU table."""

from __future__ import annotations

import dataclasses

import pytest

from rpa_bench.roofline.calibration import Calibration, latest_calibration, save_calibration
from rpa_bench.roofline.jax_tpu_table import (
    CHIP_VERSION_BY_SPEC,
    KNOWN_DISAGREEMENTS,
    compare_with_jax,
    jax_tpu_figures,
)
from rpa_bench.roofline.calibration import detect_device_spec, resolve_roofline
from rpa_bench.roofline.specs import (
    NUMERIC_FIELDS,
    device_names,
    get_device_spec,
    listed_device_spec,
    spec_for_device_kind,
)

REQUIRED = {"tpu_v4", "tpu_v5e", "tpu_v5p", "tpu_v6e", "tpu7x", "h100_sxm", "h200", "b200", "cpu"}


def test_every_required_device_is_listed():
    assert REQUIRED <= set(device_names())


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_number_has_a_source(name):
    spec = listed_device_spec(name)
    for field in NUMERIC_FIELDS:
        if getattr(spec, field) is not None:
            assert spec.source_for(field), f"{name}.{field} has no source"
    assert spec.hbm_bw_bytes_per_s > 0 and spec.peak_bf16_flops_per_s > 0


def test_paper_table3_figures_for_tpu7x():
    spec = listed_device_spec("tpu7x")
    assert spec.hbm_bw_bytes_per_s == 7380e9 and spec.peak_bf16_flops_per_s == 2307e12
    assert "2604.15464" in spec.source_for("hbm_bw_bytes_per_s")
    assert spec.cores_per_chip == 2 and spec.devices_per_chip == 2 and not spec.per_device
    assert spec.matrix_unit_width == 256 and spec.onchip_mem_kind == "VMEM"


def test_one_tpu7x_device_is_half_a_chip_and_matches_jax_per_core():
    core = listed_device_spec("tpu7x").for_devices(1)
    assert core.per_device and core.num_devices == 1
    assert core.hbm_bw_bytes_per_s == 3690e9 and core.peak_bf16_flops_per_s == 1153.5e12
    assert core.matrix_unit_width == 256 and core.onchip_mem_bytes == 64 * 2**20  # per-core fields kept
    jax_fig = jax_tpu_figures("tpu7x")
    assert core.peak_bf16_flops_per_s == pytest.approx(jax_fig.peak_bf16_flops_per_s / 2, rel=0.002)


@pytest.mark.parametrize(
    "kind, name",
    [("TPU v6 lite", "tpu_v6e"), ("TPU7x", "tpu7x"), ("TPU v5 lite", "tpu_v5e"), ("TPU v5p", "tpu_v5p"),
     ("TPU v4", "tpu_v4"), ("NVIDIA H100 80GB HBM3", "h100_sxm"), ("NVIDIA H200", "h200"),
     ("NVIDIA B200", "b200"), ("cpu", "cpu")],
)
def test_device_kind_maps_to_spec(kind, name):
    assert spec_for_device_kind(kind).name == name


def test_unknown_device_kind_and_name_list_the_allowed():
    with pytest.raises(ValueError, match="device_kind='TPU v9'"):
        spec_for_device_kind("TPU v9")
    with pytest.raises(ValueError, match="allowed: .*tpu7x"):
        get_device_spec("tpu9")
    assert get_device_spec("v6e").name == "tpu_v6e" and get_device_spec("H100").name == "h100_sxm"


@pytest.mark.parametrize("name", sorted(CHIP_VERSION_BY_SPEC))
def test_listed_tpu_figures_agree_with_jax_except_documented(name):
    found = {(d.spec, d.field) for d in compare_with_jax(listed_device_spec(name))}
    assert found == {k for k in KNOWN_DISAGREEMENTS if k[0] == name}


def test_v5p_bandwidth_disagreement_is_the_documented_one():
    (d,) = [d for d in compare_with_jax(listed_device_spec("tpu_v5p")) if d.field == "hbm_bw_bytes_per_s"]
    assert d.listed == 2765e9 and d.jax == 2460e9 and d.rel_diff > 0.1


def test_detect_on_this_machine_gives_a_spec(tmp_path):
    spec = detect_device_spec()
    assert spec.name in device_names()


def test_cpu_placeholder_takes_calibrated_peaks(tmp_path):
    listed = listed_device_spec("cpu")
    assert listed.measured and "placeholder" in listed.source_for("hbm_bw_bytes_per_s")
    cal = Calibration(hostname="testhost", device_kind="cpu", platform="cpu", num_devices=1,
                      hbm_bw_bytes_per_s=12.5e9, matmul_flops_per_s=80e9, matmul_dtype="float32",
                      copy_bytes=2**28, matmul_m=1024, trials=3, copy_samples_s=(0.1, 0.1, 0.1),
                      matmul_samples_s=(0.02,) * 3, method="test", jax_version="0", timestamp="t")
    save_calibration(cal, results_dir=tmp_path)
    assert latest_calibration("cpu", results_dir=tmp_path, hostname="testhost") == cal
    import rpa_bench.roofline.calibration as calmod

    spec = calmod.apply_calibration(listed, cal)
    assert resolve_roofline("cpu", results_dir=tmp_path, calibrated=False).device == listed
    assert spec.hbm_bw_bytes_per_s == 12.5e9 and spec.peak_f32_flops_per_s == 80e9
    assert spec.peak_bf16_flops_per_s == 80e9 and "standing in for bf16" in spec.source_for("peak_bf16_flops_per_s")
    assert spec.source_for("hbm_bw_bytes_per_s").startswith("measured")


def test_spec_validation_names_the_field():
    spec = listed_device_spec("h100_sxm")
    with pytest.raises(ValueError, match="vendor"):
        dataclasses.replace(spec, vendor="amd")
    with pytest.raises(ValueError, match="num_devices"):
        spec.for_devices(0)
    with pytest.raises(ValueError, match="dtype="):
        spec.peak_flops_per_s("int4")
    with pytest.raises(ValueError, match="peak_fp8_flops_per_s"):
        listed_device_spec("tpu_v5e").peak_flops_per_s("float8_e4m3fn")


@pytest.mark.parametrize("kind, name, cores", [("TPU v5p", "tpu_v5p", 2), ("TPU7x", "tpu7x", 1),
                                               ("TPU v6 lite", "tpu_v6e", 1)])
def test_attached_chip_info_path_via_abstract_mesh(kind, name, cores):
    # what detect_device_spec does on a TPU, with the chip faked by an abstract mesh
    import jax
    from jax.experimental.pallas.tpu import get_tpu_info
    from jax.sharding import AbstractDevice, AbstractMesh

    mesh = AbstractMesh((), (), abstract_device=AbstractDevice(device_kind=kind, num_cores=cores, platform="tpu"))
    with jax.sharding.use_abstract_mesh(mesh):
        info = get_tpu_info()
    found = {(d.spec, d.field) for d in compare_with_jax(listed_device_spec(name), info=info)}
    assert found == {k for k in KNOWN_DISAGREEMENTS if k[0] == name}


@pytest.mark.tpu
def test_detect_on_tpu_cross_checks_the_attached_chip():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = detect_device_spec()
    assert spec.name in CHIP_VERSION_BY_SPEC
    expected = {f for (n, f) in KNOWN_DISAGREEMENTS if n == spec.name}
    assert all(any(f in str(w.message) for w in caught) for f in expected)


@pytest.mark.gpu
def test_detect_on_gpu_gives_an_nvidia_spec():
    spec = detect_device_spec()
    assert spec.vendor == "nvidia" and spec.matrix_unit_width is None
