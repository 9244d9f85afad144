"""On an accelerator a row's latency and CI rest on the profiled calls: as many as
timing.num_samples by default, and a row says so when fewer were profiled (TPU-style capture)."""

from __future__ import annotations

import contextlib
import types

import jax
import pytest

from rpa_bench.measure.compare import CompareOptions, compare_point
from rpa_bench.measure.stats import summarize
from rpa_bench.measure.timing import TimingConfig
from rpa_bench.parallel.mesh import DeviceInfo
from rpa_bench.pipeline.point import Captured, _time_variant

MODULE = "jit_rpa_bench_excl_prep"


def _tpu_space(n: int):
    mods, ops, t = [], [], 50
    for i in range(n):
        d = 100.0 + i
        mods.append(f"events {{ metadata_id: 1 offset_ps: {t * 10**6} duration_ps: {int(d * 10**6)} }}")
        ops.append(f"events {{ metadata_id: 2 offset_ps: {(t + 1) * 10**6} duration_ps: {int((d - 2) * 10**6)} }}")
        t += 300
    return jax.profiler.ProfileData.from_text_proto(f"""
planes {{
  id: 2 name: "/device:TPU:0"
  lines {{ id: 1 name: "XLA Modules" timestamp_ns: 0 {' '.join(mods)} }}
  lines {{ id: 2 name: "XLA Ops" timestamp_ns: 0 {' '.join(ops)} }}
  event_metadata {{ key: 1 value {{ id: 1 name: "{MODULE}(1)" }} }}
  event_metadata {{ key: 2 value {{ id: 2 name: "RPAD-p_256-bq_1_1-bkv_2048_1024" }} }}
}}""")


def _call():
    return types.SimpleNamespace(context=contextlib.nullcontext, module_name=MODULE, variant="excl_prep",
                                 compile_time_s=1.0)


def _wall(cfg):
    samples = [150.0 + i for i in range(cfg.num_samples)]
    return types.SimpleNamespace(warnings=[], samples_us=samples, loops_per_sample=1,
                                 summary=summarize(samples, cfg.stats, label="wall"))


DEVICE = [DeviceInfo(id=0, process_index=0, platform="tpu", device_kind="TPU7x", coords=(0, 0, 0),
                     core_on_chip=0, local_hardware_id=0)]


def test_device_latency_rests_on_num_samples_profiled_calls_by_default():
    cfg = TimingConfig(num_samples=8, min_samples=3)
    assert cfg.capture_calls is None and cfg.profiled_calls == 8
    cols, notes, _ = _time_variant(_call(), cfg, captured=Captured(None, _tpu_space(cfg.profiled_calls)),
                                   kernel_regex="^RPA", clock=lambda: 0.0, devices=DEVICE, wall=_wall(cfg))
    assert cols.timing_source == "device"
    assert len(cols.samples_us) == len(cols.device_samples_us) == cfg.num_samples
    assert not any("profiled calls" in n for n in notes)


def test_fewer_profiled_calls_than_samples_are_named_with_the_setting():
    cfg = TimingConfig(num_samples=8, min_samples=3, capture_calls=3)
    cols, notes, _ = _time_variant(_call(), cfg, captured=Captured(None, _tpu_space(3)),
                                   kernel_regex="^RPA", clock=lambda: 0.0, devices=DEVICE, wall=_wall(cfg))
    assert cols.timing_source == "device" and len(cols.samples_us) == 3
    assert any("rests on 3 profiled calls (timing.capture_calls=3) < timing.num_samples=8" in n for n in notes)


def test_too_few_device_samples_in_a_comparison_name_capture_calls():
    import pandas as pd

    a = pd.Series({"status": "ok", "timing_source": "device", "samples_us": [1.0, 1.1, 0.9], "latency_us": 1.0,
                   "workload_hash": "h", "variant": "excl_prep"})
    b = a.copy()
    out = compare_point(a, b, CompareOptions())
    assert "timing.capture_calls" in (out.get("note") or "")


@pytest.mark.parametrize("bad", [-1])
def test_negative_capture_calls_is_refused(bad):
    with pytest.raises(ValueError, match="timing.capture_calls"):
        TimingConfig(capture_calls=bad)
