"""``rpa-bench run`` on a mesh of 8 forced host CPU devices, end to end.

The parent pytest process has already initialised JAX with one CPU device, so the runs
happen in one subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (this file run as a script); each
scenario reports its result (or its error) as JSON, and the tests read the run folders.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from forced_devices import NUM_HOST_DEVICES, run_cases, run_in_subprocess, v3_available
TOLERANCE_BF16 = 3e-2


# --- the subprocess side -------------------------------------------------------------------
def _run_cli(tmp):
    """``rpa-bench run`` on a 2x2 mesh: the sharded pipeline end to end."""
    import pandas as pd

    from rpa_bench import cli

    rc = cli.main(["run", "workload=batch_spec", "workload.page_size=16", "workload.spec=[2q1s40_q24]",
                   "model.num_q_heads=8", "model.num_kv_heads=4", "scale=cpu_smoke", "timing=quick",
                   "timing.num_samples=3", "timing.capture_calls=2", "run.progress=false",
                   "run.kernels=[reference]", "mesh=dp2_tp2", f"run.results_dir={tmp}", "run.name=mesh"])
    df = pd.read_parquet(f"{tmp}/mesh/measurements.parquet")
    return {"rc": rc, "status": sorted(set(df.status)), "mesh": sorted(set(df["mesh"])),
            "num_devices": sorted(set(int(x) for x in df.num_devices)), "max_abs_err": float(df.max_abs_err.max()),
            "warnings": [w for ws in df.warnings for w in ws]}


PAPER_RUN = ["run", "experiment=paper_decode", "scale=cpu_smoke", "mesh=dp8", "timing=quick", "timing.num_samples=3",
             "timing.capture_calls=2", "run.progress=false"]
PAPER_QUICK = ["run.kernels=[reference]", "workload.context_lens=[256,1024]"]


def _run_paper(tmp, name, extra):
    """``rpa-bench run experiment=paper_decode scale=cpu_smoke mesh=dp8``: each kernel wrapped in
    ShardedBackend, its gathered output checked against the unsharded reference on the same batch."""
    from rpa_bench import cli

    rc = cli.main([*PAPER_RUN, *extra, f"run.results_dir={tmp}", f"run.name={name}"])
    return {"rc": rc, "run": f"{tmp}/{name}"}


def _run_paper_misplaced(tmp):
    """The same run with two devices' outputs swapped on the way back: the check must catch it."""
    import dataclasses

    import numpy as np
    import pandas as pd

    from rpa_bench.parallel import backend

    gather = backend.gather_output

    def swapped(*args, **kwargs):
        out = gather(*args, **kwargs)
        rows = np.array(out.output)
        rows[[0, 1]] = rows[[1, 0]]  # sequence 0 ran on device 0, sequence 1 on device 1
        return dataclasses.replace(out, output=rows)

    backend.gather_output = swapped
    try:
        res = _run_paper(tmp, "paper_dp8_misplaced", [*PAPER_QUICK, "run.max_points=1"])
    finally:
        backend.gather_output = gather
    df = pd.read_parquet(f"{res['run']}/measurements.parquet")
    return {**res, "status": sorted(set(df.status)), "errors": sorted(set(df.error.dropna()))}


RUNS = {
    "run-cli": _run_cli,
    "run-paper": lambda tmp: _run_paper(tmp, "paper_dp8", PAPER_QUICK),
    "run-paper-misplaced": _run_paper_misplaced,
    # the full cpu_smoke sweep, reference and RPA v3 (interpret mode)
    "run-paper-full": lambda tmp: _run_paper(tmp, "paper_dp8_full", ["run.kernels=[reference,rpa_v3]"]),
}


# --- the pytest side ---------------------------------------------------------------------
def _run(names: list[str], tmp_path) -> dict:
    return run_in_subprocess(__file__, names, tmp_path)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _run(["run-cli", "run-paper", "run-paper-misplaced"], tmp_path_factory.mktemp("sharded_run"))


def _ok(results, name):
    res = results[name]
    assert "error" not in res, res.get("error")
    return res


def test_subprocess_sees_eight_devices(results):
    assert results["num_devices"] == NUM_HOST_DEVICES


def test_rpa_bench_run_on_a_mesh_records_the_mesh_and_passes_the_check(results):
    res = _ok(results, "run-cli")
    assert res["rc"] == 0 and res["status"] == ["ok"]
    assert res["mesh"] == ["data=2,model=2"] and res["num_devices"] == [4]
    assert res["max_abs_err"] <= TOLERANCE_BF16
    assert any("modelled load imbalance" in w or "step time per call" in w for w in res["warnings"])


def _paper_rows(run: str):
    import pandas as pd

    return pd.read_parquet(f"{run}/measurements.parquet")


def _check_sharded_paper_rows(df) -> None:
    assert set(df.num_devices) == {NUM_HOST_DEVICES} and set(df["mesh"]) == {"data=8,model=1"}
    assert df.figures_per.isna().all()  # forced host devices share one host: per device / chip means nothing
    for r in df[(df.status == "ok") & df.latency_us.notna()].itertuples():  # timed rows (not interpret-checked)
        assert len(r.per_device_hbm_bytes) == NUM_HOST_DEVICES and sum(r.per_device_hbm_bytes) == r.hbm_bytes
        assert sum(r.per_device_flops) == r.flops
        (chip,) = json.loads(r.per_chip)
        assert chip["device_ids"] == list(range(NUM_HOST_DEVICES)) and chip["hbm_bytes"] == r.hbm_bytes


def test_paper_decode_on_eight_devices_matches_the_unsharded_reference_and_reports_its_mesh(results):
    from rpa_bench import cli

    res = _ok(results, "run-paper")
    assert res["rc"] == 0
    df = _paper_rows(res["run"])
    assert set(df.status) == {"ok"} and len(df) == 2 * 2  # contexts x variants
    # the pipeline's gate: each row's output, gathered from the 8 devices, against the unsharded reference
    assert (df.max_abs_err <= df.tolerance).all()
    _check_sharded_paper_rows(df)
    assert json.loads(Path(res["run"], "manifest.json").read_text())["mesh"] == "data=8,model=1"
    assert cli.main(["report", res["run"]]) == 0
    html = Path(res["run"], "report", "index.html").read_text()
    start = html.index('<section id="mesh">')
    section = html[start:html.index("</section>", start)]
    assert "<h2>Mesh and devices</h2>" in section and "Omitted" not in section
    assert "Rows without figures_per ran where a chip is one device" in section and "chip0:0" in section


def test_a_sharded_output_gathered_to_the_wrong_rows_is_recorded_incorrect(results):
    res = _ok(results, "run-paper-misplaced")
    assert res["rc"] == 0 and res["status"] == ["incorrect"]
    assert all("exceeds tolerance" in e for e in res["errors"])


@pytest.mark.slow
def test_paper_decode_cpu_smoke_on_eight_devices_with_rpa_v3(tmp_path):
    if not v3_available():
        pytest.skip("rpa_v3 unavailable")
    res = _run(["run-paper-full"], tmp_path)["run-paper-full"]
    assert "error" not in res, res.get("error")
    df = _paper_rows(res["run"])
    ref, v3 = df[df.kernel == "reference"], df[df.kernel == "rpa_v3"]
    assert set(ref.status) == {"ok"} and len(ref) == 3 * 2
    assert (ref.max_abs_err <= ref.tolerance).all()
    _check_sharded_paper_rows(df)
    checked = v3[v3.max_abs_err.notna()]  # small enough for interpret mode: checked against the reference
    assert len(checked) == 2 and (checked.max_abs_err <= checked.tolerance).all()
    assert set(checked.status) == {"ok"} and checked.latency_us.isna().all() and checked.interpret.all()
    assert all(any("checked ok in interpret mode" in w for w in ws) for ws in checked.warnings)


def test_a_mesh_larger_than_the_machine_is_refused_by_rpa_bench_run(tmp_path, capsys):
    import jax

    from rpa_bench import cli

    n = len(jax.devices())
    rc = cli.main(["run", "workload=batch_spec", "workload.spec=[2q1s40_q24]", "scale=cpu_smoke",
                   "run.kernels=[reference]", "run.progress=false", f"mesh.data={n + 1}",
                   f"run.results_dir={tmp_path}", "run.name=too_big"])
    captured = capsys.readouterr()
    assert rc != 0
    assert f"needs {n + 1} devices; {n} available" in captured.out + captured.err


if __name__ == "__main__":
    print(json.dumps(run_cases(sys.argv[2:], sys.argv[1], lambda name, tmp: RUNS[name](tmp))))
