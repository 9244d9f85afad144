"""Two processes on this machine join one JAX runtime: one sharded call spans both, only
process 0 is the writer, and per-device times are gathered everywhere (slow: two JAX
start-ups and a gloo handshake)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

WORKER = r"""
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from rpa_bench.parallel.distributed import (DistributedConfig, allgather_device_times, describe, initialize,
                                            is_writer)
pid, port = int(sys.argv[1]), sys.argv[2]
initialize(DistributedConfig.from_config({"enabled": True, "coordinator_address": f"localhost:{port}",
                                          "num_processes": 2, "process_id": pid}))
import numpy as np
from rpa_bench.kernels.reference import ReferenceBackend, reference_attention
from rpa_bench.parallel.layout import gather_output, plan_for, shard_inputs
from rpa_bench.parallel.mesh import MeshSpec, make_mesh
from rpa_bench.parallel.sharded import build_sharded
from rpa_bench.roofline.specs import get_device_spec
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.materialize import materialize
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

batch = RaggedBatch.ordered([1, 1, 1, 5, 12, 3], [20, 7, 33, 9, 40, 3], page_size=4)
model, attn = ModelSpec("tiny", 8, 4, 32, "float32", "float32"), AttentionSpec()
inputs = materialize(batch, model, seed=1, device=jax.local_devices()[0])  # same data on every host
want = np.asarray(reference_attention(inputs, attn).output)[: batch.num_tokens]
spec = MeshSpec(2, 2)  # data over the two processes' devices, heads within each
plan = plan_for(batch, model, attn, spec, get_device_spec("tpu7x"))
mesh = make_mesh(spec)
sharded = shard_inputs(inputs, plan, mesh)
call = build_sharded(ReferenceBackend(), plan, attn, mesh)
got = gather_output(call.finish(call.kernel(*call.prepare(call.state(sharded)))), sharded).output
local = [d.id for d in jax.local_devices()]
times = allgather_device_times(local, [[1000.0 * pid + 0.123456789 + i] for i in range(len(local))])
print(json.dumps({"writer": is_writer(), "info": describe(), "err": float(np.abs(got[: batch.num_tokens] - want).max()),
                  "times": {str(k): v for k, v in times.items()}}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_share_one_sharded_call_and_one_writer(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(i), port], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert [o["writer"] for o in outs] == [True, False]
    for o in outs:
        assert o["info"]["process_count"] == 2 and o["info"]["device_count"] == 4
        assert o["err"] <= 1e-5
        assert len(o["times"]) == 4
        assert sorted(round(t[0], 9) for t in o["times"].values()) == [0.123456789, 1.123456789, 1000.123456789,
                                                                        1001.123456789]


def _two_processes(tmp_path, name: str, mesh: str) -> list[tuple[int, str, str]]:
    """``rpa-bench run`` as process 0 and 1 of one run (2 forced host devices each): (rc, out, err)."""
    port = str(_free_port())
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    args = [sys.executable, "-m", "rpa_bench.cli", "run", "workload=batch_spec", "workload.page_size=16",
            "workload.spec=[2q1s40_q24]", "model.num_q_heads=8", "model.num_kv_heads=4", "scale=cpu_smoke",
            "timing=quick", "timing.num_samples=3", "timing.capture_calls=2", "run.progress=false",
            "run.kernels=[reference]", f"mesh={mesh}", f"run.results_dir={tmp_path}", f"run.name={name}",
            "distributed.enabled=true", f"distributed.coordinator_address=localhost:{port}",
            "distributed.num_processes=2"]
    procs = [subprocess.Popen([*args, f"distributed.process_id={i}"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        results.append((p.returncode, out, err))
    return results


@pytest.mark.slow
def test_rpa_bench_run_on_two_processes_measures_everywhere_and_stores_once(tmp_path):
    outs = []
    for rc, out, err in _two_processes(tmp_path, "two", "dp2_tp2"):
        assert rc == 0, err[-3000:]
        outs.append(out)
    assert f"results: {tmp_path / 'two'}" in outs[0]
    assert "process 1 measured 2 rows; process 0 stores them" in outs[1] and "results:" not in outs[1]
    run = tmp_path / "two"
    assert len(list((run / "parts").glob("*.parquet"))) == 1  # one writer: one part for one (point, kernel)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["processes"]["process_count"] == 2
    import pandas as pd

    df = pd.read_parquet(run / "measurements.parquet")
    assert list(df.status) == ["ok", "ok"] and set(df.num_devices) == {4} and set(df["mesh"]) == {"data=2,model=2"}
    assert (df.max_abs_err <= 3e-2).all()  # the sharded output gathered from both hosts matches the reference
    assert all(len(x) == 4 for x in df.per_device_hbm_bytes)


@pytest.mark.slow
def test_a_mesh_that_leaves_a_process_idle_is_refused_by_every_process(tmp_path):
    for rc, _, err in _two_processes(tmp_path, "idle", "dp2"):
        assert rc == 2 and "leaves process(es) [1] without one" in err, err[-2000:]
    assert not (tmp_path / "idle" / "manifest.json").exists()
