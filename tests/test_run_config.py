"""rpa-bench run: every experiment composes and plans; bad configs are refused up front."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rpa_bench.commands._hydra import compose, compose_entries, compose_root, conf_dir
from rpa_bench.kernels.registry import BACKENDS
from rpa_bench.pipeline import prepare as sweep
from rpa_bench.pipeline.plan import plan_from_config
from rpa_bench.parallel.mesh import MeshSpec, mesh_spec_from_config

EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))


def _plan(overrides: list[str]):
    cfg = compose(overrides)
    container = OmegaConf.to_container(cfg, resolve=True)

    def entries(group: str) -> list[dict]:  # as `rpa-bench run` composes each listed entry
        return compose_entries(group, cfg.run.get(f"{group}s"), cfg[group], overrides, compose_root)

    return plan_from_config(container, workloads=entries("workload"), kernels=entries("kernel"), experiment="t")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_into_a_valid_plan(name):
    plan = _plan([f"experiment={name}"])
    assert plan.workloads and plan.kernels
    assert plan.run_name.startswith(name)


def test_main_cpu_is_reduced_and_lists_the_paper_sweeps_and_a_trace():
    plan = _plan(["experiment=main_cpu"])
    assert plan.scale.name == "cpu_smoke" and plan.scale.reduced
    kinds = {w.kind for w in plan.workloads}
    assert {"paper_decode", "paper_prefill", "trace"} <= kinds
    decode = next(w for w in plan.workloads if w.kind == "paper_decode")
    assert max(decode.config["context_lens"]) <= 4096  # scale overrides applied


def test_the_kernel_family_runs_every_declared_kernel():
    plan = _plan(["experiment=kernel_family", "scale=cpu_smoke"])
    assert [k.name for k in plan.kernels] == list(BACKENDS) and "rpa_v3_cp" in BACKENDS
    with pytest.raises(ValueError, match=r"run.kernels='most'; allowed: a list of conf/kernel names or 'all'"):
        _plan(["experiment=kernel_family", "run.kernels=most"])


def test_unknown_kernel_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="rpa_v9.*allowed"):
        _plan(["experiment=main_cpu", "run.kernels=[reference]", "kernel.name=rpa_v9"])


def test_bad_workload_field_is_refused_in_the_plan_naming_the_field():
    with pytest.raises(ValueError, match="context_lens"):  # typed and validated with the plan, before prepare
        _plan(["workload=paper_decode", "workload.context_lens=[0]", "run.kernels=[reference]"])


def test_unsupported_head_dim_is_refused_before_any_allocation():
    plan = _plan(["workload=paper_decode", "model.head_dim=96", "run.kernels=[rpa_v2]", "scale=cpu_smoke"])
    with pytest.raises(ValueError, match="head_dim=96"):
        sweep.prepare_run(plan)


def test_full_scale_on_cpu_refuses_and_suggests_cpu_smoke():
    plan = _plan(["experiment=paper_decode", "run.kernels=[reference]"])
    with pytest.raises(ValueError, match="scale=cpu_smoke"):
        sweep.prepare_run(plan)


def test_scale_and_timing_fields_are_validated():
    with pytest.raises(ValueError, match="timing.num_samples"):
        _plan(["timing.num_samples=0"])
    with pytest.raises(ValueError, match="scale.cpu_max_call_flops"):
        _plan(["scale.cpu_max_call_flops=0"])


def test_experiment_files_hold_overrides_only():
    for path in (Path(conf_dir()) / "experiment").glob("*.yaml"):
        assert path.read_text().startswith("# @package _global_"), path.name


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if e.startswith("paper_")])
def test_paper_experiments_use_both_tpu7x_tensorcores_and_one_device_elsewhere(name):
    mesh = OmegaConf.to_container(compose([f"experiment={name}"]).mesh, resolve=True)
    # decode: sequences over the two TensorCores; one-sequence prefill: heads over them
    want = MeshSpec(1, 2) if "prefill" in name else MeshSpec(2, 1)
    assert mesh_spec_from_config(mesh, device_kind="TPU7x", num_devices=8) == want
    for kind, n in (("cpu", 1), ("cpu", 8), ("NVIDIA H100 80GB HBM3", 8), ("TPU v6 lite", 4), ("TPU7x", 1)):
        assert mesh_spec_from_config(mesh, device_kind=kind, num_devices=n) == MeshSpec(1, 1), kind


def test_a_mesh_on_the_command_line_wins_over_the_experiments():
    mesh = OmegaConf.to_container(compose(["experiment=paper_decode", "mesh=dp8"]).mesh, resolve=True)
    assert mesh_spec_from_config(mesh, device_kind="cpu", num_devices=8) == MeshSpec(8, 1)


def test_forced_host_devices_share_the_hosts_roofline():
    plan = _plan(["device=cpu"])
    one, eight = sweep._roofline(plan, 1), sweep._roofline(plan, 8)
    assert eight.device.hbm_bw_bytes_per_s == one.device.hbm_bw_bytes_per_s  # one host, not eight
    assert eight.device.num_devices == eight.device.devices_per_chip == 8  # the host is their one chip
    assert eight.device.per_device_spec().hbm_bw_bytes_per_s == pytest.approx(one.device.hbm_bw_bytes_per_s / 8)


@pytest.mark.parametrize("name", ["..", "../../x", ".", "", "/tmp/abs", "a/../../b"])
def test_run_name_cannot_escape_the_results_folder(name, tmp_path, capsys, monkeypatch):
    from rpa_bench import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "experiment=paper_decode", "scale=cpu_smoke", f"run.name={name}",
                     f"run.results_dir={tmp_path / 'results'}"]) == 2
    err = capsys.readouterr().err
    assert "run.name=" in err and "Traceback" not in err
    assert not (tmp_path / "manifest.json").exists() and not (tmp_path / "hydra").exists()
    assert not (tmp_path / "results" / "manifest.json").exists()


def test_tune_run_name_cannot_escape_either(capsys):
    from rpa_bench import cli

    assert cli.main(["tune", "kernel=reference", "scale=cpu_smoke", "run.name=../../../x"]) == 2
    assert "run.name='../../../x'" in capsys.readouterr().err


def test_compiler_options_take_a_dict_without_a_plus():
    cfg = compose(["experiment=paper_decode", "timing.compiler_options={xla_cpu_enable_fast_math: false}"])
    assert dict(cfg.timing.compiler_options) == {"xla_cpu_enable_fast_math": False}


def test_aa_check_adds_no_twin_for_a_kernel_that_is_only_checked(capsys):
    from rpa_bench.pipeline.prepare import prepare_run

    prep = prepare_run(_plan(["experiment=paper_decode", "scale=cpu_smoke", "run.kernels=[reference,rpa_v3]",
                              "run.aa_check=true", "run.max_points=1"]))
    labels = [s.entry.label for s in prep.kernels]
    assert labels == ["reference", "rpa_v3", "reference.aa"]  # rpa_v3 is checked in interpret mode on CPU
    assert "no A/A twin for rpa_v3" in capsys.readouterr().err


def test_a_kernel_the_model_does_not_fit_refuses_the_run_unless_asked_to_skip():
    from rpa_bench.pipeline.prepare import prepare_run

    base = ["experiment=paper_decode", "scale=cpu_smoke", "run.kernels=[reference,rpa_v3_hd64]", "run.max_points=1"]
    with pytest.raises(ValueError, match=r"kernel=rpa_v3_hd64: model.head_dim=128 unsupported; allowed: 64"):
        prepare_run(_plan(base))
    with pytest.raises(ValueError, match=r"run.unfit_kernels='maybe'; allowed: refuse, skip"):
        _plan([*base, "run.unfit_kernels=maybe"])
    prep = prepare_run(_plan([*base, "run.unfit_kernels=skip"]))
    reasons = {k: v for k, v in prep.unsupported.items() if k[2] == "rpa_v3_hd64"}
    assert reasons and all("head_dim=128 unsupported" in v for v in reasons.values())
    assert not any(k[2] == "reference" for k in prep.unsupported)
