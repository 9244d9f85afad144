"""Per-device / per-chip accounting of sharded calls: pure functions of costs and times."""

from __future__ import annotations

import json

import pytest

from rpa_bench.parallel.accounting import DeviceCost, account, chip_labels, device_costs, load_imbalance
from rpa_bench.parallel.layout import plan_for
from rpa_bench.parallel.mesh import DeviceInfo, MeshSpec
from rpa_bench.roofline.cost import batch_cost
from rpa_bench.roofline.specs import get_device_spec
from rpa_bench.store.rows import mesh_columns
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

LLAMA = ModelSpec("llama3_8b", 32, 8, 128)
TPU7X = get_device_spec("tpu7x")
ONE_TC = TPU7X.per_device_spec()


def _tpu7x_chip_devices(num_chips=1):
    return [DeviceInfo(id=2 * c + k, process_index=0, platform="tpu", device_kind="TPU7x",
                       coords=(c, 0, 0), core_on_chip=k) for c in range(num_chips) for k in range(2)]


@pytest.mark.parametrize("mesh", [MeshSpec(2, 1), MeshSpec(1, 2), MeshSpec(2, 2), MeshSpec(4, 1)])
@pytest.mark.parametrize("causal", [True, False])
def test_device_costs_sum_to_the_unsharded_cost(mesh, causal):
    batch = RaggedBatch.ordered([1, 1, 1, 17, 300], [900, 4000, 33, 17, 1200], page_size=16)
    attn = AttentionSpec(causal=causal)
    plan = plan_for(batch, LLAMA, attn, mesh, TPU7X)
    costs = device_costs(plan, attn, ckv=128)
    whole = batch_cost(batch, LLAMA, causal=causal, ckv=128)
    assert len(costs) == mesh.num_devices
    assert sum(c.hbm_bytes for c in costs) == whole.hbm_bytes
    assert sum(c.flops for c in costs) == whole.flops
    assert sum(c.num_seqs for c in costs) == batch.num_seqs * mesh.model


def test_paper_decode_on_both_tensorcores_is_accounted_against_the_chip():
    # 128 x 8K decode split 64/64 over a TPU7x chip's two TensorCores, each at 3000 us
    batch = RaggedBatch((1,) * 128, (8193,) * 128, page_size=256)
    plan = plan_for(batch, LLAMA, AttentionSpec(), MeshSpec(2, 1), TPU7X)
    assert plan.partition.seqs_per_part == (64, 64)
    costs = device_costs(plan, AttentionSpec())
    acc = account(costs, _tpu7x_chip_devices(), [3000.0, 3000.0], timing_source="device", mesh="data=2,model=1",
                  device_bw_bytes_per_s=ONE_TC.hbm_bw_bytes_per_s, device_peak_flops_per_s=ONE_TC.peak_bf16_flops_per_s,
                  devices_per_chip=2)
    total = batch_cost(batch, LLAMA).hbm_bytes
    expect = total / 3000e-6 / TPU7X.hbm_bw_bytes_per_s * 100
    assert acc.mbu_pct == pytest.approx(expect)
    assert len(acc.per_chip) == 1 and acc.per_chip[0].mbu_pct == pytest.approx(expect)
    assert acc.per_device_mbu_pct[0] == pytest.approx(expect)  # each TC moves half at half the bandwidth
    assert acc.load_imbalance == pytest.approx(1.0) and acc.step_time_us == 3000.0


def test_one_tensorcore_alone_reaches_at_most_half_the_chip_roof():
    batch = RaggedBatch((1,) * 8, (4096,) * 8, page_size=256)
    plan = plan_for(batch, LLAMA, AttentionSpec(), MeshSpec(1, 1), TPU7X)
    (cost,) = device_costs(plan, AttentionSpec())
    fastest_us = cost.hbm_bytes / ONE_TC.hbm_bw_bytes_per_s * 1e6  # at one TC's full bandwidth
    acc = account([cost], _tpu7x_chip_devices()[:1], [fastest_us], timing_source="device", mesh="data=1,model=1",
                  device_bw_bytes_per_s=ONE_TC.hbm_bw_bytes_per_s,
                  device_peak_flops_per_s=ONE_TC.peak_bf16_flops_per_s, devices_per_chip=2)
    assert acc.mbu_pct == pytest.approx(100.0)  # against the device used
    assert acc.per_chip[0].mbu_pct == pytest.approx(50.0)  # against the whole chip
    assert acc.load_imbalance is None


def test_imbalance_and_step_time_follow_the_slowest_device():
    costs = [DeviceCost(d, 0, 1, 1, 1000, 0) for d in range(4)]
    devs = _tpu7x_chip_devices(2)
    acc = account(costs, devs, [10.0, 10.0, 10.0, 30.0], timing_source="device", mesh="data=4,model=1",
                  device_bw_bytes_per_s=1e9, device_peak_flops_per_s=1e12, devices_per_chip=2)
    assert acc.step_time_us == 30.0
    assert acc.load_imbalance == pytest.approx(30.0 / 15.0)
    assert [c.time_us for c in acc.per_chip] == [10.0, 30.0]
    assert acc.chips == ("chip(0,0,0)", "chip(0,0,0)", "chip(1,0,0)", "chip(1,0,0)")
    cols = mesh_columns(acc).columns()
    chips = json.loads(cols.pop("per_chip"))
    assert cols == {"num_devices": 4, "mesh": "data=4,model=1", "per_device_latency_us": [10.0, 10.0, 10.0, 30.0],
                    "load_imbalance": pytest.approx(2.0), "modelled_load_imbalance": pytest.approx(1.0),
                    "per_device_hbm_bytes": [1000] * 4, "per_device_flops": [0] * 4}
    assert [(c["chip"], c["device_ids"], c["latency_us"], c["hbm_bytes"]) for c in chips] == [
        ("chip(0,0,0)", [0, 1], 10.0, 2000), ("chip(1,0,0)", [2, 3], 30.0, 2000)]
    assert chips[1]["mbu_si_pct"] == pytest.approx(2000 / 30e-6 / 2e9 * 100)  # against the whole chip


def test_wall_time_gives_no_per_device_figures_and_says_so():
    costs = [DeviceCost(d, 0, 1, 1, 1000, 10) for d in range(2)]
    devs = [DeviceInfo(id=i, process_index=0, platform="cpu", device_kind="cpu") for i in range(2)]
    acc = account(costs, devs, [50.0, 50.0], timing_source="wall", mesh="data=2,model=1",
                  device_bw_bytes_per_s=1e9, device_peak_flops_per_s=1e12)
    assert acc.load_imbalance is None and acc.per_device_mbu_pct == (None, None)
    assert acc.mbu_pct == pytest.approx(2000 / 50e-6 / 2e9 * 100)
    assert any("wall" in w for w in acc.warnings)
    assert mesh_columns(acc)["per_device_latency_us"] is None


def test_an_idle_device_is_named_in_a_warning():
    batch = RaggedBatch((512,), (512,), page_size=16)  # one prefill, two TensorCores
    plan = plan_for(batch, LLAMA, AttentionSpec(), MeshSpec(2, 1), TPU7X)
    acc = account(device_costs(plan, AttentionSpec()), _tpu7x_chip_devices(), [100.0, 1.0], timing_source="device",
                  mesh="data=2,model=1", device_bw_bytes_per_s=ONE_TC.hbm_bw_bytes_per_s,
                  device_peak_flops_per_s=ONE_TC.peak_bf16_flops_per_s, devices_per_chip=2)
    assert any("device(s) [1] had no sequence" in w for w in acc.warnings)


def test_chips_without_coordinates_group_consecutive_ids():
    devs = [DeviceInfo(id=i, process_index=p, platform="gpu", device_kind="x") for p in (0, 1) for i in range(2)]
    assert chip_labels(devs, 2) == ("chip0:0", "chip0:0", "chip1:0", "chip1:0")
    # ids repeat across processes here; labels keep the process apart: 4 one-device chips
    assert len(set(chip_labels(devs, 1))) == 4


def test_load_imbalance_edge_cases():
    assert load_imbalance([5.0]) is None
    assert load_imbalance([0.0, 0.0]) is None
    assert load_imbalance([1.0, 3.0]) == pytest.approx(1.5)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="one entry per device"):
        account([DeviceCost(0, 0, 1, 1, 1, 1)], [], [1.0], timing_source="device", mesh="data=1,model=1",
                device_bw_bytes_per_s=1.0, device_peak_flops_per_s=1.0)
    with pytest.raises(ValueError, match="timing_source='profiler'"):
        account([DeviceCost(0, 0, 1, 1, 1, 1)], _tpu7x_chip_devices()[:1], [1.0], timing_source="profiler",
                mesh="data=1,model=1", device_bw_bytes_per_s=1.0, device_peak_flops_per_s=1.0)
