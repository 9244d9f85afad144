"""``rpa-bench calibrate`` on this machine (tiny sizes) and the device config group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rpa_bench.commands._hydra import compose, conf_dir
from rpa_bench.commands.calibrate import main as calibrate_main
from rpa_bench.measure.calibrate import CalibrationPlan, measure
from rpa_bench.roofline.calibration import latest_calibration, resolve_roofline
from rpa_bench.roofline.specs import device_names, listed_device_spec

DEVICE_FILES = sorted(p.stem for p in (conf_dir() / "device").glob("*.yaml"))


def _missing_group_deletions() -> list[str]:
    """``~group`` for root defaults whose file is not there yet (other groups may lag)."""
    root = yaml.safe_load((conf_dir() / "config.yaml").read_text())
    out = []
    for item in root["defaults"]:
        if isinstance(item, dict):
            (group, name), = item.items()
            if group.startswith("optional ") or name is None or group == "device":
                continue
            if not (conf_dir() / group / f"{name}.yaml").is_file():
                out.append(f"~{group}")
    return out


def test_measure_small_sizes_gives_positive_labelled_figures():
    cal = measure(CalibrationPlan(copy_mib=4, matmul_m=128, matmul_dtype="float32", trials=3, warmup=1))
    assert cal.hbm_bw_bytes_per_s > 0 and cal.matmul_flops_per_s > 0
    assert cal.copy_bytes == 2 * 4 * 2**20 and cal.matmul_dtype == "float32"
    assert len(cal.copy_samples_s) == 3 == len(cal.matmul_samples_s)
    assert cal.jax_version and cal.timestamp and "donated" in cal.method


def test_calibrate_command_writes_a_file_the_cpu_spec_uses(tmp_path, capsys):
    argv = [*_missing_group_deletions(), "device.calibration.copy_mib=4", "device.calibration.matmul_m=128",
            "device.calibration.trials=3", f"run.results_dir={tmp_path}"]
    assert calibrate_main(["--json", *argv]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    path = Path(summary["path"])
    assert path.is_file() and path.parent == tmp_path / "calibration"
    import jax

    kind = jax.devices()[0].device_kind
    cal = latest_calibration(kind, results_dir=tmp_path)
    assert cal is not None and cal.copy_bytes == 2 * 4 * 2**20 and cal.matmul_m == 128
    if kind == "cpu":
        spec = resolve_roofline("cpu", results_dir=tmp_path).device
        assert spec.hbm_bw_bytes_per_s == cal.hbm_bw_bytes_per_s
        assert spec.source_for("hbm_bw_bytes_per_s").startswith("measured")
        assert spec.hbm_bw_bytes_per_s != listed_device_spec("cpu").hbm_bw_bytes_per_s


def test_platform_defaults_and_validation():
    cpu = CalibrationPlan.for_platform("cpu", {"trials": 2, "copy_mib": None})
    assert (cpu.copy_mib, cpu.matmul_m, cpu.matmul_dtype, cpu.trials) == (256, 1024, "float32", 2)
    assert CalibrationPlan.for_platform("tpu", {}).matmul_dtype == "bfloat16"
    with pytest.raises(ValueError, match="matmul_dtype"):
        CalibrationPlan.for_platform("cpu", {"matmul_dtype": "int8"})
    with pytest.raises(ValueError, match="copy_mib"):
        CalibrationPlan.for_platform("cpu", {"copy_mib": 0})


def test_one_device_config_per_listed_device():
    assert set(DEVICE_FILES) == set(device_names()) | {"auto"}


@pytest.mark.parametrize("name", DEVICE_FILES)
def test_every_device_config_composes_and_resolves(name, tmp_path):
    cfg = compose([f"device={name}", *_missing_group_deletions()])
    assert cfg.device.name == name and cfg.device.peak_source in ("datasheet", "calibrated")
    assert cfg.device.calibration.trials >= 1
    spec = resolve_roofline(cfg.device.name, num_devices=cfg.device.num_devices, results_dir=tmp_path).device
    assert spec.hbm_bw_bytes_per_s > 0
    if name == "tpu7x":
        assert resolve_roofline(name, num_devices=1).device.hbm_bw_bytes_per_s == 3690e9


def test_calibrate_says_what_it_measured_in_words(tmp_path, capsys):
    argv = [*_missing_group_deletions(), "device.calibration.copy_mib=4", "device.calibration.matmul_m=128",
            "device.calibration.trials=2", f"run.results_dir={tmp_path}"]
    assert calibrate_main(argv) == 0
    out = capsys.readouterr().out
    assert "copy bandwidth" in out and "TFLOP/s" in out and "saved:" in out and not out.lstrip().startswith("{")
