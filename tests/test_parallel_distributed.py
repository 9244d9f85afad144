"""Multi-host setup: config from Hydra values and the environment, the one writer."""

from __future__ import annotations

import pytest

from rpa_bench.parallel.distributed import (
    DistributedConfig,
    allgather_device_times,
    describe,
    from_writer,
    initialize,
    is_writer,
)


def test_config_values_win_over_the_environment():
    env = {"RPA_BENCH_DISTRIBUTED": "1", "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
           "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    cfg = DistributedConfig.from_config({"enabled": None, "process_id": 1}, env)
    assert cfg == DistributedConfig(True, "10.0.0.1:1234", 4, 1)


def test_nothing_configured_means_single_process():
    assert DistributedConfig.from_config(None, {}) == DistributedConfig()
    assert DistributedConfig.from_config({"enabled": False}, {}).enabled is False


@pytest.mark.parametrize("cfg,env,match", [
    ({"num_processes": 2, "process_id": 2}, {}, r"process_id=2 must be < distributed.num_processes=2"),
    ({"coordinator_address": "host-without-port"}, {}, "must be host:port"),
    ({"workers": 2}, {}, r"unknown key\(s\) \['workers'\]"),
    ({}, {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two' must be an integer"),
])
def test_bad_settings_are_refused_by_name(cfg, env, match):
    with pytest.raises(ValueError, match=match):
        DistributedConfig.from_config(cfg, env)


def test_single_process_run_is_its_own_writer():
    assert initialize(DistributedConfig(enabled=False)) is False
    assert is_writer()
    info = describe()
    assert info["process_count"] == 1 and info["distributed"] is False


def test_allgather_in_one_process_returns_local_times():
    got = allgather_device_times([0, 1], [[1.0, 2.0], [3.0, 4.0]])
    assert got == {0: (1.0, 2.0), 1: (3.0, 4.0)}


def test_one_process_takes_its_own_decisions():
    decision = {"error": None, "done": [["paper_decode", "ctx=256", "reference"]]}
    assert from_writer(decision) == decision and from_writer(0.5) == 0.5
