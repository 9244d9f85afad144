"""Per-device time of a sharded call from one capture; wall fallback marked as such."""

from __future__ import annotations

import jax
import pytest

from rpa_bench.measure.devtime import per_device_timing, plane_ordinal, wall_timing
from rpa_bench.parallel.mesh import DeviceInfo

MODULE = "jit_rpa_bench_sharded"


def _tpu_plane(pid: int, ordinal: int, durations_us: list[float]) -> str:
    # XLA Modules events of MODULE (one per call) with a Pallas RPA op inside each
    mods, ops, t = [], [], 50
    for d in durations_us:
        mods.append(f"events {{ metadata_id: 1 offset_ps: {t * 10**6} duration_ps: {int(d * 10**6)} }}")
        ops.append(f"events {{ metadata_id: 2 offset_ps: {(t + 1) * 10**6} duration_ps: {int((d - 2) * 10**6)} }}")
        t += 300
    return f"""
planes {{
  id: {pid} name: "/device:TPU:{ordinal}"
  lines {{ id: 1 name: "XLA Modules" timestamp_ns: 0 {' '.join(mods)} }}
  lines {{ id: 2 name: "XLA Ops" timestamp_ns: 0 {' '.join(ops)} }}
  event_metadata {{ key: 1 value {{ id: 1 name: "{MODULE}(1)" }} }}
  event_metadata {{ key: 2 value {{ id: 2 name: "RPAD-p_256-bq_1_1-bkv_2048_1024" }} }}
}}"""


HOST = """
planes {
  id: 1 name: "/host:CPU"
  lines { id: 1 name: "python" timestamp_ns: 0
    events { metadata_id: 10 offset_ps: 0 duration_ps: 250000000 }
    events { metadata_id: 10 offset_ps: 300000000 duration_ps: 250000000 } }
  event_metadata { key: 10 value { id: 10 name: "rpa_bench.call" } }
}"""


def _tpu7x_pair():
    return [DeviceInfo(id=i, process_index=0, platform="tpu", device_kind="TPU7x", coords=(0, 0, 0),
                       core_on_chip=i, local_hardware_id=i) for i in range(2)]


def test_two_tensorcores_get_their_own_times_and_the_step_is_the_slowest():
    space = jax.profiler.ProfileData.from_text_proto(
        HOST + _tpu_plane(2, 0, [100.0, 110.0]) + _tpu_plane(3, 1, [130.0, 90.0]))
    t = per_device_timing(space, module_name=MODULE, num_calls=2, devices=_tpu7x_pair())
    assert t.timing_source == "device"
    assert t.planes == ("/device:TPU:0", "/device:TPU:1")
    assert t.per_call_us == ((100.0, 110.0), (130.0, 90.0))
    assert t.step_per_call_us == (130.0, 110.0)
    assert t.step_latency_us == pytest.approx(120.0)
    assert t.per_device_latency_us == (105.0, 110.0)
    assert t.kernel_per_call_us == ((98.0, 108.0), (128.0, 88.0))


def test_a_missing_device_plane_falls_back_to_wall_with_the_reason():
    space = jax.profiler.ProfileData.from_text_proto(HOST + _tpu_plane(2, 0, [100.0, 110.0]))
    t = per_device_timing(space, module_name=MODULE, num_calls=2, devices=_tpu7x_pair(), wall_latency_us=150.0)
    assert t.timing_source == "wall" and t.per_device_latency_us == (150.0, 150.0)
    assert any("no plane for ordinal 1" in w for w in t.warnings)
    with pytest.raises(ValueError, match="no plane for ordinal 1"):
        per_device_timing(space, module_name=MODULE, num_calls=2, devices=_tpu7x_pair())


def test_a_call_count_mismatch_is_not_attributed():
    space = jax.profiler.ProfileData.from_text_proto(
        HOST + _tpu_plane(2, 0, [100.0, 110.0]) + _tpu_plane(3, 1, [130.0, 90.0]))
    t = per_device_timing(space, module_name=MODULE, num_calls=3, devices=_tpu7x_pair(), wall_latency_us=1.0)
    assert t.timing_source == "wall"
    assert any("found 2 executions" in w for w in t.warnings)


def test_wall_timing_is_marked():
    t = wall_timing(_tpu7x_pair(), 42.0)
    assert t.timing_source == "wall" and t.step_latency_us == 42.0
    assert "timing_source=wall" in t.warnings[-1]


@pytest.mark.parametrize("name,ordinal", [("/device:TPU:3", 3), ("/device:GPU:0", 0), ("/host:CPU", None)])
def test_plane_ordinal(name, ordinal):
    assert plane_ordinal(name) == ordinal


def test_step_timing_has_the_capture_parsers_shape_with_the_slowest_device_per_call():
    from rpa_bench.measure.devtime import step_device_timing

    space = jax.profiler.ProfileData.from_text_proto(
        HOST + _tpu_plane(2, 0, [100.0, 110.0]) + _tpu_plane(3, 1, [130.0, 90.0]))
    t = step_device_timing(space, module_name=MODULE, num_calls=2, devices=_tpu7x_pair())
    assert t.available and t.per_call_us == (130.0, 110.0)
    assert t.kernel_per_call_us == (128.0, 108.0) and t.plane == "/device:TPU:0"
    missing = step_device_timing(jax.profiler.ProfileData.from_text_proto(HOST + _tpu_plane(2, 0, [1.0, 2.0])),
                                 module_name=MODULE, num_calls=2, devices=_tpu7x_pair())
    assert not missing.available and "no plane for ordinal 1" in missing.warnings[0]
