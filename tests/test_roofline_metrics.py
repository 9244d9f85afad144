"""MBU / MFU conventions, phases, the roofline bound and the above-roof flag."""

from __future__ import annotations

import json

import pytest

from rpa_bench.roofline.calibration import Calibration
from rpa_bench.roofline.cost import batch_cost
from rpa_bench.roofline.metrics import compute_metrics
from rpa_bench.roofline.specs import get_device_spec
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import ModelSpec

LLAMA = ModelSpec("llama3_8b", num_q_heads=32, num_kv_heads=8, head_dim=128)
HD256 = ModelSpec("hd256", num_q_heads=16, num_kv_heads=4, head_dim=256)
TPU7X = get_device_spec("tpu7x")
DECODE = batch_cost(RaggedBatch((1,) * 128, (32769,) * 128, page_size=256), LLAMA)
PREFILL = batch_cost(RaggedBatch((32768,), (32768,), page_size=256), LLAMA, causal=False)
MIXED = batch_cost(RaggedBatch((1, 1, 512), (4096, 2048, 1024), page_size=16), LLAMA, ckv=256)


def _cal(bw: float, flops: float, dtype: str = "bfloat16") -> Calibration:
    return Calibration(hostname="h", device_kind="TPU7x", platform="tpu", num_devices=2, hbm_bw_bytes_per_s=bw,
                       matmul_flops_per_s=flops, matmul_dtype=dtype, copy_bytes=1, matmul_m=1, trials=1,
                       copy_samples_s=(1.0,), matmul_samples_s=(1.0,), method="test", jax_version="0",
                       timestamp="2026-01-01T00:00:00Z")


def test_decode_paper_convention_matches_hand_check():
    m = compute_metrics(DECODE, 2527, TPU7X, convention="paper")
    assert m.throughput_gib_per_s == pytest.approx(6332.58, abs=0.01)
    assert m.mbu_pct == pytest.approx(6332.58 / 7380 * 100, abs=1e-3)
    assert m.mfu_pct is None and m.phase == "decode"
    assert m.bound_by == "memory" and not m.above_roof


def test_si_mbu_is_paper_mbu_times_gib_over_gb():
    paper = compute_metrics(DECODE, 2527, TPU7X, convention="paper")
    si = compute_metrics(DECODE, 2527, TPU7X, convention="si")
    assert si.mbu_pct / paper.mbu_pct == pytest.approx(1024**3 / 1e9)  # 1.0737...
    assert si.bound_time_us == paper.bound_time_us  # the bound is convention-free


@pytest.mark.parametrize("model, device, cap", [(LLAMA, "tpu7x", 0.5), (HD256, "tpu7x", 1.0),
                                                (LLAMA, "tpu_v5e", 1.0), (LLAMA, "h100_sxm", 1.0),
                                                (LLAMA, "tpu_v6e", 0.5)])
def test_prefill_mfu_cap_derived_from_mxu_width_and_head_dim(model, device, cap):
    cost = batch_cost(RaggedBatch((8192,), (8192,)), model, causal=False)
    spec = get_device_spec(device)
    paper = compute_metrics(cost, 5000, spec, convention="paper")
    si = compute_metrics(cost, 5000, spec, convention="si")
    assert paper.max_mxu_utilization == cap
    assert si.mfu_pct == pytest.approx(paper.mfu_pct * cap)
    assert paper.mbu_pct is None


def test_paper_prefill_mfu_hand_check():
    m = compute_metrics(PREFILL, 20614, TPU7X, convention="paper")
    assert m.tflops == pytest.approx(853.41, abs=0.01)
    assert m.mfu_pct == pytest.approx(73.98, abs=0.01)
    assert m.bound_by == "compute"
    assert m.roofline_efficiency_pct == pytest.approx(m.mfu_pct)  # compute-bound at cap


def test_mixed_batch_reports_both_and_efficiency():
    m = compute_metrics(MIXED, 50, TPU7X)
    assert m.phase == "mixed" and m.mbu_pct is not None and m.mfu_pct is not None
    assert m.roofline_efficiency_pct == pytest.approx(m.bound_time_us / 50 * 100)


def test_phase_override_and_json():
    m = compute_metrics(MIXED, 50, TPU7X, phase="decode")
    assert m.mfu_pct is None
    data = json.loads(json.dumps(m.to_dict()))
    assert data["mfu_pct"] is None and data["convention"] == "paper" and data["device"] == "tpu7x"


def test_point_above_datasheet_roof_is_flagged():
    fast = DECODE.hbm_bytes / TPU7X.hbm_bw_bytes_per_s * 1e6 * 0.9  # 10% faster than the bound
    m = compute_metrics(DECODE, fast, TPU7X, convention="paper")
    assert m.above_roof and "hbm_bw_bytes_per_s" in m.above_roof_reason and m.roof_source == "datasheet"
    # the paper-convention MBU of this impossible point is still below 100%: only si catches it
    assert m.mbu_pct < 105 and m.memory_roof_pct > 100


def test_point_above_calibrated_roof_is_flagged_even_below_datasheet():
    cal = _cal(bw=5e12, flops=2.0e15)
    m = compute_metrics(DECODE, 2527, TPU7X, calibration=cal)  # 6.8e12 B/s > measured 5e12
    assert m.above_roof and m.roof_source == "calibrated" and m.memory_roof_pct > 100
    ok = compute_metrics(DECODE, 2527, TPU7X)
    assert not ok.above_roof


def test_calibrated_peaks_change_mbu():
    cal = _cal(bw=7.0e12, flops=2.0e15)
    m = compute_metrics(DECODE, 2527, TPU7X, peak_source="calibrated", calibration=cal)
    assert m.peak_hbm_bw_bytes_per_s == 7.0e12 and m.peak_source == "calibrated"
    assert m.mbu_pct == pytest.approx(6332.58 / 7000 * 100, abs=1e-3)


def test_calibrated_without_calibration_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="rpa-bench calibrate"):
        compute_metrics(DECODE, 2527, TPU7X, peak_source="calibrated")


@pytest.mark.parametrize("kwargs, field", [({"convention": "gib"}, "convention"), ({"phase": "train"}, "phase"),
                                           ({"peak_source": "vendor"}, "peak_source")])
def test_bad_options_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        compute_metrics(DECODE, 10, TPU7X, **kwargs)
    with pytest.raises(ValueError, match="latency_us"):
        compute_metrics(DECODE, 0, TPU7X)


def test_one_tensorcore_of_tpu7x_halves_the_roof():
    one_tc = TPU7X.for_devices(1)
    chip = compute_metrics(DECODE, 2527, TPU7X, convention="si")
    core = compute_metrics(DECODE, 2527, one_tc, convention="si")
    assert core.mbu_pct == pytest.approx(2 * chip.mbu_pct)
    assert core.above_roof  # one TensorCore cannot move the chip's bytes that fast
