"""Sharded runs on 8 forced host CPU devices match the unsharded run.

The parent pytest process has already initialised JAX with one CPU device, so the
scenarios run in one subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (this file run as a script);
each scenario reports its numbers (or its error) as JSON, and the tests check them.
"""

from __future__ import annotations

import json
import sys

import pytest
from forced_devices import NUM_HOST_DEVICES, run_cases, run_in_subprocess, v3_available
# name -> (kernel, mesh "DxM", batch, dtype, attention)
BATCHES = {
    # decode, fixed-size prefill chunks (8) and mixed sequences, kv < 100, page 4
    "mixed": dict(q=[1, 1, 1, 8, 8, 5, 3], kv=[30, 7, 61, 8, 40, 20, 3], page_size=4, chunk_prefill_size=8),
    "decode": dict(q=[1] * 6, kv=[17, 33, 5, 64, 2, 48], page_size=16, chunk_prefill_size=None),
    "prefill1": dict(q=[24], kv=[40], page_size=16, chunk_prefill_size=None),
}
REFERENCE_CASES = {
    "ref-mixed-1x1": ("reference", "1x1", "mixed", "float32", {}),
    "ref-mixed-2x1": ("reference", "2x1", "mixed", "float32", {}),
    "ref-mixed-8x1": ("reference", "8x1", "mixed", "float32", {}),  # one device idle
    "ref-mixed-1x2": ("reference", "1x2", "mixed", "float32", {}),
    "ref-mixed-2x2": ("reference", "2x2", "mixed", "float32", {}),
    "ref-decode-bf16-2x2": ("reference", "2x2", "decode", "bfloat16", {}),
    "ref-prefill1-2x1": ("reference", "2x1", "prefill1", "float32", {}),  # one sequence, two devices
    "ref-window-softcap-2x2": ("reference", "2x2", "mixed", "float32", {"sliding_window": 12, "soft_cap": 20.0}),
}
KERNEL_CASES = {  # both axes at once: sequences over data, heads over model
    "rpa_v3-mixed-2x2": ("rpa_v3", "2x2", "decode_mixed", "float32", {}),
}
SLOW_KERNEL_CASES = {
    "rpa_v3-mixed-2x1": ("rpa_v3", "2x1", "decode_mixed", "float32", {}),
    "rpa_v3-small-1x2": ("rpa_v3", "1x2", "small", "float32", {}),
    "rpa_v3-mixed-2x2-bf16": ("rpa_v3", "2x2", "decode_mixed", "bfloat16", {}),
    "rpa_v3-prefill1-2x1": ("rpa_v3", "2x1", "prefill1", "float32", {}),
}
BATCHES["decode_mixed"] = dict(q=[1, 1, 5, 12], kv=[20, 7, 9, 40], page_size=16, chunk_prefill_size=None)
BATCHES["small"] = dict(q=[1, 5], kv=[9, 20], page_size=16, chunk_prefill_size=None)
# ShardedBackend through the pipeline's own check (kernels/checking.py): name -> (kernel, mesh, batch, dtype)
CHECK_CASES = {
    "check-reference-2x2": ("reference", "2x2", "mixed", "bfloat16"),
    "check-jax_rpa-2x2": ("jax_rpa", "2x2", "decode_mixed", "float32"),
    "check-rpa_v2-2x1": ("rpa_v2", "2x1", "decode_mixed", "float32"),
    "check-rpa_v3-2x2": ("rpa_v3", "2x2", "decode_mixed", "bfloat16"),
}
TOLERANCE = {"float32": 1e-5, "bfloat16": 3e-2}
V3_OPTIONS = dict(d_block_sizes=[8, 16, 8, 16], m_block_sizes=[8, 16, 8, 16], vmem_limit_bytes=64 * 2**20)


# --- the subprocess side -------------------------------------------------------------------
def _setup(kernel, mesh_str, batch_name, dtype, attn_kw):
    from rpa_bench.parallel.layout import plan_for
    from rpa_bench.parallel.mesh import MeshSpec
    from rpa_bench.roofline.specs import get_device_spec
    from rpa_bench.workloads.batch import RaggedBatch
    from rpa_bench.workloads.model import AttentionSpec, ModelSpec

    b = BATCHES[batch_name]
    batch = RaggedBatch.ordered(b["q"], b["kv"], page_size=b["page_size"], chunk_prefill_size=b["chunk_prefill_size"])
    head_dim = 32 if kernel == "reference" else 128
    model = ModelSpec("tiny", 8, 4, head_dim, dtype, dtype)
    attn = AttentionSpec(**attn_kw)
    mesh = MeshSpec(*map(int, mesh_str.split("x")))
    plan = plan_for(batch, model, attn, mesh, get_device_spec("tpu7x"))
    return batch, model, attn, mesh, plan


def _backend(kernel):
    if kernel == "reference":
        from rpa_bench.kernels.reference import ReferenceBackend

        return ReferenceBackend()
    from rpa_bench.kernels.rpa_v3 import RpaV3Backend

    return RpaV3Backend(options=V3_OPTIONS)


def _compare(case):
    import numpy as np

    from rpa_bench.kernels.reference import reference_attention
    from rpa_bench.parallel.layout import gather_output, shard_inputs
    from rpa_bench.parallel.mesh import make_mesh
    from rpa_bench.parallel.sharded import build_sharded
    from rpa_bench.workloads.materialize import materialize

    kernel, mesh_str, batch_name, dtype, attn_kw = case
    batch, model, attn, mesh_spec, plan = _setup(*case)
    inputs = materialize(batch, model, max_num_batched_tokens=batch.num_tokens + 3,
                         max_num_seqs=batch.num_seqs + 1, num_pages=batch.num_pages + 5, seed=3)
    unsharded = reference_attention(inputs, attn)
    mesh = make_mesh(mesh_spec)
    sharded = shard_inputs(inputs, plan, mesh, seed=5)
    call = build_sharded(_backend(kernel), plan, attn, mesh, interpret=kernel != "reference")
    raw = call.kernel(*call.prepare(call.state(sharded.copy() if call.donates else sharded)))
    out = gather_output(call.finish(raw), sharded)
    t = batch.num_tokens
    got, want = np.asarray(out.output[:t], np.float32), np.asarray(unsharded.output[:t], np.float32)
    caches_equal = all(
        np.array_equal(np.asarray(getattr(out, c), np.float32), np.asarray(getattr(unsharded, c), np.float32),
                       equal_nan=True)
        for c in ("k_cache", "v_cache"))
    return {
        "max_abs_err": float(np.max(np.abs(got - want))),
        "finite": bool(np.isfinite(got).all()),
        "bitwise_equal": bool(np.array_equal(got, want)),
        "caches_equal": caches_equal,
        "seq_ids": [list(p) for p in plan.partition.seq_ids],
        "sharding": str(sharded.queries.sharding.spec),
        "num_devices_used": len(sharded.queries.sharding.device_set),
    }


def _check(case):
    from rpa_bench.kernels.checking import check_on_inputs
    from rpa_bench.kernels.registry import get_backend
    from rpa_bench.parallel.backend import ShardedBackend
    from rpa_bench.roofline.specs import get_device_spec
    from rpa_bench.workloads.materialize import materialize

    kernel, mesh_str, batch_name, dtype = case
    batch, model, attn, mesh_spec, _ = _setup(kernel, mesh_str, batch_name, dtype, {})
    options = V3_OPTIONS if kernel == "rpa_v3" else None
    sharded = ShardedBackend(get_backend(kernel, options=options), mesh_spec,
                             device_spec=get_device_spec("tpu7x"))
    inputs = materialize(batch, model, max_num_batched_tokens=batch.num_tokens + 2, seed=7)
    rec = check_on_inputs(sharded, inputs, attn, interpret=kernel != "reference")
    return {"status": rec.status, "message": rec.message, "max_abs_err": rec.max_abs_err,
            "cache_err": rec.cache_err, "seq_ids": [list(p) for p in sharded.last_plan.partition.seq_ids]}


def _per_device_capture(tmp):
    from pathlib import Path

    from rpa_bench.measure import capture
    from rpa_bench.measure.devtime import per_device_timing
    from rpa_bench.parallel.layout import shard_inputs
    from rpa_bench.parallel.mesh import make_mesh, mesh_devices
    from rpa_bench.parallel.sharded import build_sharded
    from rpa_bench.workloads.materialize import materialize

    batch, model, attn, mesh_spec, plan = _setup("reference", "2x1", "mixed", "float32", {})
    mesh = make_mesh(mesh_spec)
    sharded = shard_inputs(materialize(batch, model, seed=1), plan, mesh)
    call = build_sharded(_backend("reference"), plan, attn, mesh)
    args = call.prepare(call.state(sharded))
    compiled = call.kernel_jit.lower(args).compile()
    path = capture.capture(lambda i: compiled(args), 3, Path(tmp) / "sharded.xplane.pb")
    t = per_device_timing(path, module_name=capture.module_name_of(compiled), num_calls=3,
                          devices=mesh_devices(mesh), wall_latency_us=1.0)
    return {"timing_source": t.timing_source, "planes": list(t.planes), "num_series": len(t.per_call_us),
            "calls": t.num_calls, "step_ok": all(s >= max(d[i] for d in t.per_call_us) for i, s in
                                                  enumerate(t.step_per_call_us)), "warnings": list(t.warnings)}


def _pipeline(tmp):
    """ShardedBackend through the run pipeline's timed calls, then per-device accounting."""
    from pathlib import Path

    from rpa_bench.kernels.checking import compare_outputs
    from rpa_bench.kernels.registry import get_backend
    from rpa_bench.measure import capture
    from rpa_bench.measure.calls import build_timed_calls
    from rpa_bench.kernels.reference import reference_attention
    from rpa_bench.parallel.accounting import device_costs
    from rpa_bench.parallel.backend import ShardedBackend
    from rpa_bench.measure.devtime import per_device_timing
    from rpa_bench.parallel.columns import mesh_row_columns
    from rpa_bench.roofline.cost import batch_cost
    from rpa_bench.roofline.specs import get_device_spec
    from rpa_bench.workloads.materialize import materialize

    batch, model, attn, mesh_spec, _ = _setup("reference", "2x1", "mixed", "float32", {})
    spec = get_device_spec("tpu7x")
    backend = ShardedBackend(get_backend("reference"), mesh_spec, device_spec=spec)
    inputs = materialize(batch, model, seed=2)
    want = reference_attention(inputs, attn)
    prepared = backend.build(model, attn, batch, interpret=False)
    calls = build_timed_calls(prepared, inputs)
    errs = {v: compare_outputs(prepared.finish(c(*c.fresh_args())), want, inputs, tolerance=1e-5)[1]
            for v, c in calls.items()}
    call = calls["excl_prep"]
    path = capture.capture(lambda i: call(*call.fresh_args()), 3, Path(tmp) / "pipeline.xplane.pb")
    timing = per_device_timing(path, module_name=call.module_name, num_calls=3, devices=prepared.devices,
                               wall_latency_us=1.0)
    mc = mesh_row_columns(prepared.plan, attn, timing, prepared.devices, wall_latency_us=1.0, device_spec=spec)
    acc = mc.accounting
    return {"ok": errs, "columns": mc.columns.columns(), "step_us": mc.step_latency_us, "source": mc.timing_source,
            "on_device_planes": mc.on_device_planes, "max_device_us": max(acc.time_us),
            "total_bytes_match": acc.total_hbm_bytes == batch_cost(batch, model).hbm_bytes
            == sum(c.hbm_bytes for c in device_costs(backend.last_plan, attn))}


def _run_one(name: str, tmp: str) -> dict:
    cases = {**REFERENCE_CASES, **KERNEL_CASES, **SLOW_KERNEL_CASES}
    if name in cases:
        return _compare(cases[name])
    if name.startswith("check-"):
        return _check(CHECK_CASES[name])
    if name == "capture":
        return _per_device_capture(tmp)
    if name == "pipeline":
        return _pipeline(tmp)
    raise KeyError(name)


# --- the pytest side ---------------------------------------------------------------------
def _run(names: list[str], tmp_path) -> dict:
    return run_in_subprocess(__file__, names, tmp_path)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    names = [*REFERENCE_CASES, "capture", "check-reference-2x2", "pipeline"]
    if v3_available():
        names += [*KERNEL_CASES]
    return _run(names, tmp_path_factory.mktemp("sharded"))


def _ok(results, name):
    if name not in results:
        pytest.skip(f"{name}: not run (kernel unavailable)")
    res = results[name]
    assert "error" not in res, res.get("error")
    return res


def test_subprocess_sees_eight_devices(results):
    assert results["num_devices"] == NUM_HOST_DEVICES


def test_one_device_mesh_is_bitwise_the_unsharded_run(results):
    res = _ok(results, "ref-mixed-1x1")
    assert res["bitwise_equal"] and res["caches_equal"] and res["num_devices_used"] == 1


@pytest.mark.parametrize("name", [n for n in REFERENCE_CASES if n != "ref-mixed-1x1"])
def test_reference_sharded_matches_unsharded(results, name):
    res = _ok(results, name)
    dtype = REFERENCE_CASES[name][3]
    assert res["finite"] and res["max_abs_err"] <= TOLERANCE[dtype]
    assert res["caches_equal"]  # the KV update lands at the same slots, exactly
    d, m = map(int, REFERENCE_CASES[name][1].split("x"))
    assert res["num_devices_used"] == d * m


def test_data_axis_spreads_sequences_and_model_axis_splits_heads(results):
    dp = _ok(results, "ref-mixed-2x2")
    assert len(dp["seq_ids"]) == 2 and all(dp["seq_ids"])
    assert "'data'" in dp["sharding"] and "'model'" in dp["sharding"]
    tp = _ok(results, "ref-mixed-1x2")
    assert tp["seq_ids"] == [list(range(7))]
    idle = _ok(results, "ref-mixed-8x1")
    assert sum(1 for p in idle["seq_ids"] if not p) == 1  # 7 sequences, 8 devices
    one = _ok(results, "ref-prefill1-2x1")
    assert one["seq_ids"] == [[0], []]


@pytest.mark.parametrize("name", list(KERNEL_CASES))
def test_rpa_v3_interpret_sharded_matches_unsharded_reference(results, name):
    res = _ok(results, name)
    assert res["finite"] and res["max_abs_err"] <= TOLERANCE[KERNEL_CASES[name][3]]
    assert res["caches_equal"]


def test_sharded_backend_passes_the_pipeline_check(results):
    res = _ok(results, "check-reference-2x2")
    assert res["status"] == "ok" and res["cache_err"] == 0.0


def test_sharded_backend_in_the_pipelines_timed_calls_with_mesh_columns(results):
    res = _ok(results, "pipeline")
    assert res["ok"] == {"excl_prep": True, "incl_prep": True}
    cols = res["columns"]
    assert cols["num_devices"] == 2 and cols["mesh"] == "data=2,model=1"
    assert not res["on_device_planes"]  # CPU: host-op spans at best, never accelerator planes
    if res["source"] == "device":  # attributed per device_ordinal
        assert len(cols["per_device_latency_us"]) == 2 and cols["load_imbalance"] >= 1.0
        assert res["step_us"] >= res["max_device_us"]  # median of per-call maxima >= max of medians
    assert res["total_bytes_match"]


def test_cpu_capture_gives_per_device_times_from_host_ops(results):
    res = _ok(results, "capture")
    assert res["num_series"] == 2 and res["calls"] == 3 and res["step_ok"]
    if res["timing_source"] == "device":
        assert res["planes"] == ["/host:CPU#device_ordinal=0", "/host:CPU#device_ordinal=1"]
        assert any("not accelerator time" in w for w in res["warnings"])
    else:  # the CPU runtime did not tag ops with device_ordinal: marked, not guessed
        assert any("timing_source=wall" in w for w in res["warnings"])


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CHECK_CASES if n != "check-reference-2x2"])
def test_every_rpa_kernel_sharded_passes_the_pipeline_check(name, tmp_path):
    kernel = CHECK_CASES[name][0]
    from rpa_bench.kernels.registry import get_backend

    available, reason = get_backend(kernel).availability()
    if not available:
        pytest.skip(reason)
    res = _run([name], tmp_path)[name]
    assert "error" not in res, res.get("error")
    assert res["status"] == "ok", res


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_KERNEL_CASES))
def test_rpa_v3_interpret_sharded_slow_cases(name, tmp_path):
    if not v3_available():
        pytest.skip("rpa_v3 unavailable")
    res = _run([name], tmp_path)[name]
    assert "error" not in res, res.get("error")
    assert res["finite"] and res["max_abs_err"] <= TOLERANCE[SLOW_KERNEL_CASES[name][3]]
    assert res["caches_equal"]


if __name__ == "__main__":
    print(json.dumps(run_cases(sys.argv[2:], sys.argv[1], _run_one)))
