"""Device time from profiler captures: CPU captures made here, TPU/GPU structure fixtures."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from rpa_bench.measure import capture as cap
from rpa_bench.measure import xspace

FIXTURES = Path(__file__).parent / "fixtures" / "captures"


def _fixture(name: str):
    return jax.profiler.ProfileData.from_text_proto((FIXTURES / name).read_text())


def rpa_bench_prep(x):  # f32[4096] -> f32[64, 64]
    return (x * 2.0).reshape(64, 64)


def rpa_bench_kernel(y):  # f32[64, 64] -> f32[64]
    return jnp.tanh(y @ y.T).sum(0)


@pytest.fixture(scope="module")
def cpu_capture(tmp_path_factory):
    prep = jax.jit(rpa_bench_prep)
    kern = jax.jit(rpa_bench_kernel)
    x = jnp.arange(4096, dtype=jnp.float32) / 4096
    y = prep(x)
    kc = kern.lower(y).compile()
    pc = prep.lower(x).compile()
    path = tmp_path_factory.mktemp("cap") / "kernel.xplane.pb"

    def call(i):
        pc(x)  # another module in the same capture must not be attributed
        return kc(y)

    cap.capture(call, 3, path)
    return path, cap.module_name_of(kc), cap.module_name_of(pc)


def test_cpu_capture_attributes_each_call_to_its_own_module(cpu_capture):
    path, kmod, pmod = cpu_capture
    assert path.is_file() and path.stat().st_size < 200_000
    assert kmod == "jit_rpa_bench_kernel" and pmod == "jit_rpa_bench_prep"
    res = cap.parse(path, module_name=kmod, num_calls=3)
    assert res.available and res.plane == "/host:CPU"
    assert len(res.per_call_us) == 3 and all(t > 0 for t in res.per_call_us)
    assert res.kernel_per_call_us is None
    other = cap.parse(path, module_name=pmod, num_calls=3)
    assert other.available and other.per_call_us != res.per_call_us


def test_cpu_capture_without_the_module_falls_back_to_wall_with_a_reason(cpu_capture):
    path, _, _ = cpu_capture
    res = cap.parse(path, module_name="jit_not_there", num_calls=3)
    assert not res.available
    assert "timing_source=wall" in res.warnings[0] and "jit_not_there" in res.warnings[0]


def test_call_count_mismatch_is_not_guessed(cpu_capture):
    path, kmod, _ = cpu_capture
    res = cap.parse(path, module_name=kmod, num_calls=5)
    assert not res.available
    assert "found 3 executions" in res.warnings[0]


def test_tpu_structure_separates_prep_from_the_rpa_pallas_call():
    res = cap.parse(_fixture("tpu_synthetic.textproto"), module_name="jit_rpa_bench_incl_prep", num_calls=2)
    assert res.plane == "/device:TPU:0"
    assert res.per_call_us == pytest.approx((100.0, 110.0))  # incl. prep: the whole module
    assert res.kernel_per_call_us == pytest.approx((75.0, 80.0))  # excl. prep: RPAD-* only
    nothing = cap.parse(_fixture("tpu_synthetic.textproto"), module_name="jit_other", num_calls=2)
    assert not nothing.available and "timing_source=wall" in nothing.warnings[0]


def test_gpu_stream_structure_spans_the_module_kernels_of_each_call():
    res = cap.parse(_fixture("gpu_synthetic.textproto"), module_name="jit_rpa_bench_excl_prep", num_calls=2,
                    kernel_regex=None)
    assert res.plane == "/device:GPU:0"
    # busy time (union of the module's kernels) is the latency; the span keeps the gaps
    assert res.per_call_us == pytest.approx((45.0, 35.0))  # the unrelated copy kernel is excluded
    assert res.span_per_call_us == pytest.approx((50.0, 40.0))
    assert res.basis == "kernel_busy"
    assert res.warnings == ()


def test_union_of_overlapping_intervals():
    assert xspace.union_us([(0, 1000), (500, 1500), (3000, 4000)]) == pytest.approx(2.5)


@pytest.mark.gpu
def test_real_gpu_capture_has_device_time(tmp_path):
    f = jax.jit(rpa_bench_kernel)
    y = jnp.ones((64, 64), jnp.float32)
    c = f.lower(y).compile()
    path = cap.capture(lambda i: c(y), 3, tmp_path / "gpu.xplane.pb")
    res = cap.parse(path, module_name=cap.module_name_of(c), num_calls=3)
    assert res.available and res.plane.startswith("/device:GPU")


def test_tpu_kernel_only_time_matches_the_real_hlo_text_names_under_the_default_regex():
    space = _fixture("tpu_hlo_text.textproto")
    res = cap.parse(space, module_name="jit_rpa_bench_excl_prep", num_calls=2)
    assert res.plane == "/device:TPU:0"
    # the run outside the annotations and the prefix-sharing module are not counted
    assert res.per_call_us == pytest.approx((100.0, 110.0))
    assert res.kernel_per_call_us == pytest.approx((75.0, 80.0))
    assert res.warnings == ()


def test_a_module_sharing_a_prefix_is_a_different_module():
    space = _fixture("tpu_hlo_text.textproto")
    res = cap.parse(space, module_name="jit_rpa_bench_excl_prep_2", num_calls=1)
    assert res.per_call_us == pytest.approx((30.0,))
    assert cap.parse(space, module_name="jit_rpa_bench", num_calls=2).per_call_us == ()


def test_clock_scaling_multiplies_tpu_durations():
    text = (FIXTURES / "tpu_hlo_text.textproto").read_text().replace(
        "events { metadata_id: 1 offset_ps: 50000000 duration_ps: 100000000 }",
        "events { metadata_id: 1 offset_ps: 50000000 duration_ps: 100000000 stats { metadata_id: 9 double_value: 2.0 } }",
    ).replace('  event_metadata { key: 1 value', '  stat_metadata { key: 9 value { id: 9 name: "time_scale_multiplier" } }\n'
              '  event_metadata { key: 1 value', 1)
    res = cap.parse(jax.profiler.ProfileData.from_text_proto(text), module_name="jit_rpa_bench_excl_prep", num_calls=2)
    assert res.per_call_us == pytest.approx((200.0, 110.0))
    assert any("time_scale_multiplier" in w for w in res.warnings)


def test_captures_are_stored_as_sessions_xprof_itself_discovers(tmp_path, capsys):
    from rpa_bench import cli
    from rpa_bench.commands.xprof import sessions

    f = jax.jit(rpa_bench_kernel)
    y = jnp.ones((16, 16), jnp.float32)
    for variant in ("excl_prep", "incl_prep"):
        cap.capture(lambda i: f(y), 1, cap.session_path(tmp_path / "captures", f"w.ctx=1.reference.{variant}"))
    assert sessions(tmp_path / "captures") == ["w.ctx=1.reference.excl_prep", "w.ctx=1.reference.incl_prep"]
    assert cli.main(["xprof", str(tmp_path), "--list"]) == 0
    assert "xprof --logdir" in capsys.readouterr().out
    assert cli.main(["xprof", str(tmp_path / "nope"), "--list"]) == 2


def test_xprof_takes_a_relative_run_path(tmp_path, capsys, monkeypatch):
    from rpa_bench import cli

    f = jax.jit(rpa_bench_kernel)
    y = jnp.ones((16, 16), jnp.float32)
    cap.capture(lambda i: f(y), 1, cap.session_path(tmp_path / "results" / "r" / "captures", "w.ctx=1.reference"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["xprof", "results/r", "--list"]) == 0  # as the README and the report print it
    assert "1 sessions" in capsys.readouterr().out
