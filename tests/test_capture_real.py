"""The capture parser on real TPU and GPU captures: the per-call figures xprof gives for them.

Expected values (tests/fixtures/captures/real/README.md has provenance): per-device medians of
the per-call time and means against xprof's device totals (within 0.1%), plus the regressions
found on these captures (substring module matching, planes without the module, lost events,
non-device planes, device ordering).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from rpa_bench.measure import capture as cap
from rpa_bench.measure import xspace
from rpa_bench.measure.capture_summary import summarize_capture

REAL = Path(__file__).parent / "fixtures" / "captures" / "real"
CAPTURES = REAL


@pytest.fixture(scope="module")
def tpu():
    return xspace.read(REAL / "tpu_v6e_4chips_jit_f.xplane.pb")


@pytest.fixture(scope="module")
def mi300x():
    return xspace.read(REAL / "gpu_mi300x_8gpus_jax_conv.xplane.pb")


@pytest.fixture(scope="module")
def mi355x():
    return xspace.read(REAL / "gpu_mi355x_jax_te_fused_attn.xplane.pb")


def test_tpu_per_chip_median_of_the_module_event_matches_xprof(tpu):
    timings = cap.module_timings(tpu, "jit_f")
    assert [t.plane for t in timings] == [f"/device:TPU:{i}" for i in range(4)]
    medians = [statistics.median(t.busy_us) for t in timings]
    assert medians == pytest.approx([784122.78, 784093.64, 783958.69, 783856.90], abs=0.01)
    every = [b for t in timings for b in t.busy_us]
    assert len(every) == 400
    # xprof op_profile: total for jit_f / 400 executions
    assert statistics.fmean(every) == pytest.approx(784132.8, rel=1e-3)


def test_tpu_module_names_match_by_equality_not_substring(tpu):
    none = cap.parse(tpu, module_name="jit", num_calls=None)
    assert not none.available and "hold no events of jit" in none.warnings[-1]
    psum = cap.module_timings(tpu, "jit__psum")
    assert [len(t.executions) for t in psum] == [3, 3, 3, 3]


def test_tpu_op_short_names_come_from_the_hlo_text(tpu):
    ops = tpu.planes[0].lines["XLA Ops"]
    assert ops[0].name.startswith("%broadcast.2 = f32[5,1024,1024,256]")
    assert ops[0].display == "broadcast.2"
    # a regex on the short name finds the op; the whole module's time is not used instead
    t = cap.parse(tpu, module_name="jit_broadcast_in_dim", num_calls=1, kernel_regex=r"^broadcast\.2$")
    assert t.kernel_per_call_us == pytest.approx((4443.766,), abs=1e-3)


def test_a_regex_that_matches_nothing_inside_a_present_module_is_said(tpu):
    t = cap.parse(tpu, module_name="jit_f", num_calls=100, kernel_regex=cap.DEFAULT_KERNEL_REGEX)
    assert t.available and t.kernel_per_call_us is None
    assert any("matched none" in w for w in t.warnings)
    assert any("4 device planes hold executions of jit_f" in w for w in t.warnings)


def test_gpu_busy_time_per_call_per_gpu_matches_xprof(mi300x):
    timings = cap.module_timings(mi300x, "jit_forward_3d_conv")
    assert [t.plane for t in timings] == [f"/device:GPU:{i}" for i in range(8)]
    medians = [statistics.median(t.busy_us) for t in timings]
    assert medians == pytest.approx([675.6, 671.0, 700.6, 686.1, 702.3, 685.9, 668.8, 701.3], abs=0.05)
    every = [b for t in timings for b in t.busy_us]
    assert statistics.fmean(every) == pytest.approx(27550.7 / 40, rel=1e-3)  # xprof's device total / 40
    ratios = [s / b for t in timings for s, b in zip(t.span_us, t.busy_us)]
    assert 1.0 < min(ratios) and max(ratios) < 2.8  # span = busy + launch gaps (up to 2.7x here)


def test_gpu_lost_kernel_events_are_flagged(mi300x):
    gpu0 = cap.module_timings(mi300x, "jit_forward_3d_conv")[0]
    assert sorted(e.num_events for e in gpu0.executions) == [3, 5, 5, 5, 5]
    assert any("3 of 5" in w and "lost" in w for w in gpu0.warnings)


def test_gpu_plane_is_the_device_the_call_ran_on_and_never_one_without_the_module(mi300x):
    on7 = cap.parse(mi300x, module_name="jit_forward_3d_conv", num_calls=5, device=("gpu", 7))
    assert on7.plane == "/device:GPU:7" and statistics.median(on7.per_call_us) == pytest.approx(701.3, abs=0.05)
    absent = cap.parse(mi300x, module_name="jit_not_in_capture", num_calls=5)
    assert not absent.available and absent.per_call_us == ()
    prefix = cap.parse(mi300x, module_name="jit_f", num_calls=5)  # not jit_forward_3d_conv
    assert not prefix.available


def test_gpu_single_device_busy_and_span_per_call(mi355x):
    t = cap.parse(mi355x, module_name="jit_loss_fn", num_calls=5, kernel_regex=None)
    assert t.plane == "/device:GPU:0" and t.basis == "kernel_busy"
    assert t.per_call_us == pytest.approx((2747.9, 2391.1, 2357.8, 2321.4, 2315.3), rel=1e-3)
    assert t.span_per_call_us == pytest.approx((2871.7, 2424.9, 2387.9, 2349.6, 2346.8), abs=0.05)
    assert statistics.fmean(t.per_call_us) == pytest.approx(12133.6 / 5, rel=1e-3)
    assert t.warnings == ()  # 30 kernels in every call


def test_non_device_planes_are_ignored(mi355x):
    assert "/device:CUSTOM:Megascale Trace" in mi355x.ignored_planes
    assert all(p.kind == "gpu" for p in mi355x.device_planes)


def test_device_planes_in_natural_order():
    planes = tuple(xspace.Plane(f"/device:GPU:{i}", "gpu", i, {}, {}) for i in (10, 2, 1))
    assert [p.label for p in xspace.Space(planes).device_planes] == ["GPU:1", "GPU:2", "GPU:10"]


def test_summary_lists_every_program_on_every_device(tpu, mi355x):
    s = summarize_capture(tpu)
    progs = {(p.device, p.program) for p in s.programs}
    assert {("TPU:0", "jit_f"), ("TPU:3", "jit__psum"), ("TPU:0", "jit_broadcast_in_dim")} <= progs
    g = summarize_capture(mi355x, module="jit_loss_fn", kernel_regex="te_fused_attn")
    (p,) = g.programs
    assert p.calls == 5 and p.kernel_us is not None and all(0 < k < b for k, b in zip(p.kernel_us, p.per_call_us))
    missing = summarize_capture(mi355x, module="jit_nothing")
    assert missing.missing_module == "jit_nothing" and "jit_loss_fn" in missing.notes[0]


def test_capture_command_lists_the_programs_when_the_module_is_missing(tmp_path, capsys):
    from rpa_bench import cli

    path = CAPTURES / "gpu_mi355x_jax_te_fused_attn.xplane.pb"
    if not path.is_file():
        pytest.skip("shared capture not present")
    assert cli.main(["capture", str(path), "--module", "jit_typo"]) == 1
    err = capsys.readouterr().err
    assert "--module jit_typo not found; programs there: jit_loss_fn" in err


def test_an_empty_or_cut_short_capture_is_not_reported_as_whole(tmp_path, capsys):
    import json as _json

    from rpa_bench import cli

    empty = tmp_path / "empty.xplane.pb"
    empty.write_bytes(b"")
    assert cli.main(["capture", str(empty)]) == 2
    assert "empty file" in capsys.readouterr().err
    assert cli.main(["capture", "--json", str(empty)]) == 2
    doc = _json.loads(capsys.readouterr().out)
    assert doc["exit"] == 2 and "empty file" in doc["error"]
    assert cli.main(["capture", "--json", str(tmp_path / "nope")]) == 2
    assert "does not exist" in _json.loads(capsys.readouterr().out)["error"]
    src = CAPTURES / "tpu_v6e_4chips_jit_f.xplane.pb"
    if not src.is_file():
        pytest.skip("shared capture not present")
    blob = src.read_bytes()
    # cut at the boundary after the third device plane (top-level field 1 records)
    i, n_planes = 0, 0
    while n_planes < 3:
        tag, i = _varint(blob, i)
        size, i = _varint(blob, i)
        i += size
        n_planes += 1
    cut = tmp_path / "cut.xplane.pb"
    cut.write_bytes(blob[:i])
    assert cli.main(["capture", str(cut)]) == 1
    captured = capsys.readouterr()
    assert "cut short" in captured.err and "TPU:3" not in captured.out


def _varint(b: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        x = b[i]
        i += 1
        result |= (x & 0x7F) << shift
        shift += 7
        if x < 0x80:
            return result, i
