"""Every conf/workload, conf/model and conf/scheduler file composes and builds."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from rpa_bench.commands._hydra import compose, conf_dir
from rpa_bench.roofline.specs import with_device_peaks
from rpa_bench.workloads.model import ModelSpec
from rpa_bench.workloads.points import build_workload, workload_spec_from_dict
from rpa_bench.workloads.scheduler_spec import SchedulerSpec

WORKLOADS = sorted(p.stem for p in (conf_dir() / "workload").glob("*.yaml"))
MODELS = sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))


def missing_group_deletions() -> list[str]:
    """``~group`` for root defaults whose file is not there yet (other groups may lag)."""
    root = yaml.safe_load((conf_dir() / "config.yaml").read_text())
    out = []
    for item in root["defaults"]:
        if isinstance(item, dict):
            (group, name), = item.items()
            if group.startswith("optional ") or name is None or group in ("workload", "model", "scheduler"):
                continue
            if not (conf_dir() / group / f"{name}.yaml").is_file():
                out.append(f"~{group}")
    return out


def composed(*overrides: str) -> dict:
    return OmegaConf.to_container(compose([*overrides, *missing_group_deletions()]), resolve=True)


def test_the_groups_hold_what_the_project_promises():
    assert {"paper_decode", "paper_prefill_noncausal", "paper_prefill_causal", "synthetic_uniform",
            "synthetic_zipf", "batch_spec", "azure_code", "azure_conv", "mooncake_conversation",
            "mooncake_synthetic", "sharegpt", "arxiv", "generic_csv"} <= set(WORKLOADS)
    assert {"llama3_8b", "llama3_8b_hd256", "llama3_70b", "llama3_2_1b"} <= set(MODELS)


@pytest.mark.parametrize("name", WORKLOADS)
def test_every_workload_composes_and_builds(name):
    cfg = composed(f"workload={name}")
    spec = workload_spec_from_dict(cfg["workload"])
    if spec.kind == "trace":  # the whole traces are simulated in the simulate and speed runs
        spec = workload_spec_from_dict({**cfg["workload"], "max_requests": 400})
    wl = build_workload(spec, ModelSpec.from_dict(cfg["model"]), with_device_peaks(SchedulerSpec.from_dict(cfg["scheduler"])),
                        seed=cfg["seed"])
    assert wl.name == name and wl.points
    assert all(p.batch.num_tokens <= p.max_num_batched_tokens and p.batch.num_seqs <= p.max_num_seqs
               for p in wl.points)
    total = sum(p.weight for p in wl.points)
    if spec.kind == "trace":
        assert wl.summary["requests_completed"] == 400 and list(wl.sources.values())[0]
        assert total == pytest.approx(wl.summary["sample"]["represented_time_fraction"])
    else:
        assert total == pytest.approx(1.0)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_composes_with_step_time_figures(name):
    model = ModelSpec.from_dict(composed(f"model={name}")["model"])
    assert model.num_layers > 1 and model.model_weight_bytes > 10**9 and model.model_flops_per_token > 10**9


def test_scheduler_default_matches_the_documented_settings():
    s = SchedulerSpec.from_dict(composed()["scheduler"])
    assert (s.max_num_batched_tokens, s.max_num_seqs, s.chunked_prefill) == (8192, 256, True)
    assert s.sampling.method == "stratified"


def test_unknown_scheduler_field_is_named():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['max_batch'\]"):
        SchedulerSpec.from_dict({"max_batch": 3})
