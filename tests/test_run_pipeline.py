"""rpa-bench run end to end on CPU at tiny scale, and resume after a crash (SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from rpa_bench import cli
from rpa_bench.store.schema import COLUMNS, MANIFEST_KEYS
from rpa_bench.store.run_store import RunStore

FAST = ["timing.warmup_calls=0", "timing.num_samples=1", "timing.min_samples=1", "timing.min_sample_s=0",
        "timing.capture=false"]
TINY = [
    "workload=batch_spec", "workload.page_size=16", "model.num_q_heads=4", "model.num_kv_heads=2",
    "scale=cpu_smoke", "timing=quick", "timing.num_samples=3", "timing.capture_calls=2",
    "run.progress=false",
]


def test_run_end_to_end_reference_timed_and_rpa_v3_checked_in_interpret_mode(tmp_path, capsys):
    rc = cli.main(["run", *TINY, "workload.spec=[2q1s40_q24]", "run.kernels=[reference,rpa_v3]",
                   f"run.results_dir={tmp_path}", "run.name=e2e"])
    out = capsys.readouterr().out
    assert rc == 0, out
    run = tmp_path / "e2e"
    assert f"results: {run}" in out and "MBU%(paper)" in out

    manifest = json.loads((run / "manifest.json").read_text())
    assert set(MANIFEST_KEYS) <= set(manifest)
    assert manifest["status"] == "complete" and manifest["scale"] == {"name": "cpu_smoke", "reduced": True}
    assert manifest["git"]["commit"] and manifest["environment"]["packages"]["jax"]
    assert manifest["kernels"]["rpa_v3"]["interpret"] is True
    assert manifest["processes"]["process_count"] == 1 and not manifest["processes"]["distributed"]

    df = pd.read_parquet(run / "measurements.parquet")
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 1 * 2 * 2  # points x kernels x variants
    assert set(df.phase) == {"mixed"}
    assert set(df["scale"]) == {"cpu_smoke"}
    assert df["figures_per"].isna().all()  # a CPU host: "per device or per chip" means nothing
    assert df.per_chip.isna().all() and df.per_device_flops.isna().all()  # one device: no split
    ref = df[df.kernel == "reference"]
    assert set(ref.status) == {"ok"} and set(ref.variant) == {"excl_prep", "incl_prep"}
    assert (ref.latency_us > 0).all() and (ref.max_abs_err == 0).all()
    assert set(ref.timing_source) == {"wall"}  # CPU: no device plane, said so in warnings
    assert all(any("no device plane" in w for w in ws) for ws in ref.warnings)
    assert ref.device_samples_us.map(len).eq(2).all()  # host-side op times kept beside
    assert ref.mbu_pct.notna().all() and ref.mfu_pct.notna().all()  # mixed: both metrics
    for path in ref.capture_path:
        assert (run / path).is_file()
    v3 = df[df.kernel == "rpa_v3"]
    # checked correct in interpret mode: ok, interpret=True, no timing, and the reason in the warnings
    assert set(v3.status) == {"ok"} and v3.interpret.all() and v3.error.isna().all()
    assert (v3.max_abs_err <= v3.tolerance).all() and v3.latency_us.isna().all()
    assert all(any("not kernel performance" in w for w in ws) for ws in v3.warnings)


def test_incorrect_kernel_is_recorded_and_not_timed(tmp_path, monkeypatch):
    from rpa_bench.pipeline import point

    monkeypatch.setattr(point, "tolerance_for", lambda model: -1.0)  # nothing can pass
    rc = cli.main(["run", *TINY, *FAST, "workload.spec=[2q1s40]", "run.kernels=[reference]",
                   f"run.results_dir={tmp_path}", "run.name=bad"])
    assert rc == 0
    df = pd.read_parquet(tmp_path / "bad" / "measurements.parquet")
    assert set(df.status) == {"incorrect"} and df.latency_us.isna().all()
    assert df.error.str.contains("not timed").all()


def test_config_errors_exit_2_with_a_message(tmp_path, capsys):
    rc = cli.main(["run", *TINY, "run.kernels=[nope]", f"run.results_dir={tmp_path}", "run.name=x"])
    assert rc == 2
    assert "kernel=" in capsys.readouterr().err
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_bad_distributed_settings_exit_2_before_anything_is_written(tmp_path, capsys):
    rc = cli.main(["run", *TINY, "distributed.enabled=true", "distributed.num_processes=2",
                   "distributed.process_id=2", f"run.results_dir={tmp_path}", "run.name=x"])
    assert rc == 2
    assert "distributed.process_id=2 must be < distributed.num_processes=2" in capsys.readouterr().err
    assert not (tmp_path / "x" / "manifest.json").exists()


def _parts(run: Path) -> list[Path]:
    return sorted((run / "parts").glob("*.parquet")) if (run / "parts").is_dir() else []


def test_killed_run_resumes_without_repeating_or_losing_points(tmp_path):
    # five points of one padded shape (one 64-token page per sequence): with JAX's persistent
    # compilation cache the points after the first compile in no time, so the test is quick
    specs = "[2q1s40,2q1s44,2q1s48,2q1s52,2q1s56]"
    args = [sys.executable, "-m", "rpa_bench.cli", "run", *TINY, *FAST, f"workload.spec={specs}",
            "workload.page_size=64", "run.kernels=[reference]", f"run.results_dir={tmp_path}", "run.name=crash"]
    run = tmp_path / "crash"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 240
    while len(_parts(run)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {p.name: p.stat().st_mtime_ns for p in _parts(run)}
    assert 2 <= len(first) < 5, "the kill must land mid-sweep"
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"

    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stderr
    store = RunStore(run)
    df = store.read()
    keys = list(zip(df.workload, df.point_id, df.kernel, df.variant))
    assert len(keys) == len(set(keys)) == 5 * 2, "no point repeated, none lost"
    assert {p.name: p.stat().st_mtime_ns for p in _parts(run) if p.name in first} == first  # untouched
    manifest = store.read_manifest()
    assert manifest["status"] == "complete" and manifest["resumed_from_status"] == "running"


@pytest.mark.slow
def test_multirun_with_joblib_gives_each_job_its_own_run_folder(tmp_path):
    args = [sys.executable, "-m", "rpa_bench.cli", "run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            *TINY, *FAST, "workload.spec=[2q1s40]", "kernel=reference",
            "seed=0,1", f"run.results_dir={tmp_path}", "run.name=sweep"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if (p / "manifest.json").is_file())
    assert len(jobs) == 2  # each job's folder is named after its overrides (shortened with a hash when long)
    for seed, job in enumerate(sorted(jobs, key=lambda p: "seed=1" in p.name)):
        assert f"seed={seed}" in job.name and len(job.name) <= 120
        manifest = json.loads((job / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["run_id"] == f"sweep/{job.name}"
        assert manifest["config"]["seed"] == seed
