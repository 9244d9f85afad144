"""The Ray path on a real (local, loopback-only) Ray: a compile fan-out, a 2-job Hydra sweep,
a worker killed mid-task, and a compile resumed after its driver was killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from rpa_bench import cli, engine  # noqa: E402
from rpa_bench.kernels import compiling  # noqa: E402
from rpa_bench.workloads.batch import RaggedBatch  # noqa: E402
from rpa_bench.workloads.model import AttentionSpec, ModelSpec  # noqa: E402

RAY = engine.EngineConfig(kind="ray", task_memory_gib=None)
TINY = ["workload=batch_spec", "workload.page_size=16", "model.num_q_heads=4", "model.num_kv_heads=2",
        "scale=cpu_smoke", "timing=quick", "timing.warmup_calls=0", "timing.num_samples=1", "timing.min_samples=1",
        "timing.min_sample_s=0", "timing.capture=false", "run.progress=false"]


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if not ray.is_initialized():
        # two stand-in accelerators, so timed work can be spread as on a cluster with two
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2, log_to_driver=False,
                 resources={"test_accelerator": 2})
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test file
    yield
    ray.shutdown()


def test_engine_config_refuses_bad_values_naming_the_field():
    with pytest.raises(ValueError, match=r"engine.kind='slurm'; allowed: local, ray"):
        engine.EngineConfig(kind="slurm")
    with pytest.raises(ValueError, match=r"engine.address='somewhere'; allowed: null"):
        engine.EngineConfig(kind="ray", address="somewhere")
    with pytest.raises(ValueError, match=r"with engine.address='auto' the cluster has its own"):
        engine.EngineConfig(kind="ray", address="auto", object_store_memory=10**8)


def test_a_compile_fan_out_runs_as_ray_tasks(local_ray):
    ok, why = compiling.libtpu_status()
    if not ok:
        pytest.skip(why)
    model = ModelSpec(name="tiny", num_q_heads=4, num_kv_heads=2, head_dim=128)
    batch = RaggedBatch.ordered([1, 1], [300, 500], page_size=16)
    jobs = [compiling.CompileJob({"name": "reference"}, "reference", model, AttentionSpec(), batch, g, "two")
            for g in ("tpu7x", "v6e")]
    seen = []
    results = compiling.compile_many(jobs, timeout_s=300, progress=seen.append, engine=RAY)
    assert [r.status for r in results] == ["ok", "ok"]
    assert [r.generation for r in results] == ["TPU7x", "TPU v6 lite"] and len(seen) == 2
    assert all(r.hbm for r in results)  # the compiler's memory analysis came back from the workers


def _die_once(item):
    """Kill this worker the first time item 1 is tried (Ray retries the task)."""
    index, marker = item
    if index == 1 and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return {"index": index, "pid": os.getpid()}


def test_a_killed_worker_is_retried_and_every_row_lands_once(local_ray, tmp_path):
    marker = str(tmp_path / "killed")
    rows = {}
    for index, res in engine.map_as_completed(_die_once, [(i, marker) for i in range(4)], RAY):
        assert not isinstance(res, engine.TaskFailure), res
        assert index not in rows  # the driver writes each result once
        rows[index] = res
    assert sorted(rows) == [0, 1, 2, 3]
    assert Path(marker).exists() and int(Path(marker).read_text()) != rows[1]["pid"]  # retried in a new worker


def _sleep(seconds):
    time.sleep(seconds)
    return seconds


def test_a_task_past_its_time_limit_is_cancelled(local_ray):
    out = dict(engine.map_as_completed(_sleep, [0.1, 60], RAY, timeout_s=3))
    assert out[0] == 0.1
    assert isinstance(out[1], engine.TaskFailure) and out[1].timed_out


def test_a_two_job_hydra_sweep_runs_through_the_ray_launcher(local_ray, tmp_path, capsys):
    # the launcher would add object_store_memory, which joining a running Ray refuses: null it
    rc = cli.main(["run", "-m", "hydra/launcher=ray", "+hydra.launcher.ray.init.object_store_memory=null",
                   *TINY, "workload.spec=[2q1s40]", "kernel=reference", "seed=0,1",
                   f"run.results_dir={tmp_path}", "run.name=sweep"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if (p / "manifest.json").is_file())
    assert len(jobs) == 2
    assert {json.loads((j / "manifest.json").read_text())["config"]["seed"] for j in jobs} == {0, 1}
    assert all(json.loads((j / "manifest.json").read_text())["status"] == "complete" for j in jobs)


def test_a_tune_rung_spreads_its_candidates_over_accelerators_each_timed_with_the_heuristic(local_ray, tmp_path,
                                                                                             capsys):
    """Two (stand-in) accelerators: each contender is one Ray task declaring one, timed interleaved
    with the heuristic on it; scores are paired ratios; the store holds each task's rows once."""
    code = cli.main(["tune", "kernel=reference", "workload=batch_spec", "workload.spec=[4q1s256,2q1s512]",
                     "scale=cpu_smoke", "timing=quick", "timing.capture=false", "tune.strategy=grid",
                     "tune.max_candidates=3", "run.progress=false", "tune.json=true", "engine=ray",
                     "engine.accelerator=test_accelerator", "engine.task_memory_gib=null",
                     f"run.results_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    summary = json.loads(out[out.index("{"):])
    (phase,) = summary["phases"].values()
    assert phase["spread_over"] == "test_accelerator"
    contenders = [c for c in phase["measured"] if c != phase["heuristic"]]
    assert len(contenders) == 2 and set(phase["answer"]["totals"]) == set(phase["measured"])
    rung = Path(summary["folder"]) / "decode" / "rung0"
    for label in contenders:  # each task's own run folder: its contender and the heuristic, each point once
        from rpa_bench.store.run_store import RunStore

        df = RunStore(rung / label).read()
        assert set(df["kernel"]) == {label, phase["heuristic"]}
        assert not df.duplicated(["kernel", "point_id", "variant"]).any()


def test_a_compile_resumes_after_its_driver_is_killed(tmp_path):
    ok, why = compiling.libtpu_status()
    if not ok:
        pytest.skip(why)
    out = tmp_path / "c"
    args = [sys.executable, "-m", "rpa_bench.cli", "compile", "kernel=reference", "compile.cases=[decode_8x1k]",
            "compile.generations=[tpu7x,v6e,v5e,v5p]", f"compile.out={out}", "engine=ray", "engine.num_cpus=1",
            "engine.task_memory_gib=null"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    log = out / "compile.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (log.exists() and log.read_text().count("\n") >= 1):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray head it started
    proc.wait()
    first = log.read_text().count("\n")
    assert 1 <= first < 4
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{first} of 4 already in" in done.stderr
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 4 and len({x["key"] for x in lines}) == 4  # each compile once
