"""The backend registry and the kernel config the commands hand to it."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rpa_bench.kernels.registry import (
    BACKENDS,
    KernelConfig,
    availability_report,
    available_backends,
    get_backend,
    kernel_config_from_dict,
)

CONF = Path(__file__).resolve().parents[2] / "conf" / "kernel"


def test_every_named_backend_is_built_with_its_name_and_capabilities():
    # every conf/kernel entry names a registered backend and every backend has its entry
    assert set(BACKENDS) == {p.stem for p in CONF.glob("*.yaml")}
    assert "reference" in BACKENDS and len(set(BACKENDS)) == len(BACKENDS)
    for name in BACKENDS:
        backend = get_backend(name)
        assert backend.name == name
        assert backend.capabilities.dtypes


def test_unknown_backend_is_refused_listing_the_allowed_names():
    with pytest.raises(ValueError, match=r"kernel='rpa_v9' unknown; allowed: rpa_v3, rpa_v2, jax_rpa, reference, batched_rpa"):
        get_backend("rpa_v9")


def test_all_backends_are_available_with_tpu_inference_installed():
    report = availability_report()
    assert set(report) == set(BACKENDS)
    assert available_backends() == BACKENDS, report


@pytest.mark.parametrize("name", BACKENDS)
def test_conf_kernel_yaml_validates_into_a_kernel_config(name):
    cfg = kernel_config_from_dict(OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml")))
    assert cfg.name == name and cfg.source is None
    assert cfg.backend().name == name
    assert cfg.to_dict()["options"] == dict(cfg.options)


def test_options_are_checked_by_name_and_value():
    with pytest.raises(ValueError, match=r"kernel=rpa_v3: option\(s\) \['bq'\] unknown; allowed: d_block_sizes"):
        kernel_config_from_dict({"name": "rpa_v3", "options": {"bq": 8}})
    with pytest.raises(ValueError, match=r"m_block_sizes=\[16, 32\] must be \[bq_sz, bkv_sz, bq_csz, bkv_csz\]"):
        KernelConfig("rpa_v3", options={"m_block_sizes": [16, 32]})
    with pytest.raises(ValueError, match=r"num_queries_per_block=0 must be a positive integer"):
        get_backend("jax_rpa", options={"num_queries_per_block": 0})
    with pytest.raises(ValueError, match=r"generation='TPU v9' unknown; allowed: v5e"):
        get_backend("rpa_v2", options={"generation": "TPU v9"})
    with pytest.raises(ValueError, match=r"interpret='sometimes'; allowed: auto, true, false"):
        kernel_config_from_dict({"name": "rpa_v2", "interpret": "sometimes"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['bkv'\]"):
        kernel_config_from_dict({"name": "rpa_v2", "bkv": 1})


def test_source_is_only_for_tpu_inference_kernels():
    with pytest.raises(ValueError, match=r"kernel=jax_rpa: kernel.source='/x' unsupported"):
        get_backend("jax_rpa", source="/x")
    with pytest.raises(ValueError, match=r"kernel=reference: kernel.source='/x' unsupported"):
        get_backend("reference", source="/x")
    assert get_backend("rpa_v2", source="/x").source == "/x"  # checked when loaded, not when named


def test_kernel_config_is_frozen():
    cfg = KernelConfig("rpa_v3", options={"m_block_sizes": [16, 32, 16, 32]})
    assert cfg.options["m_block_sizes"] == (16, 32, 16, 32)
    with pytest.raises(Exception):
        cfg.name = "rpa_v2"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.options["x"] = 1  # type: ignore[index]
