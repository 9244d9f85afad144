"""rpa-bench history over a small git repository built from the installed tpu-inference v3
kernel: a default block size changed, correctness broken, compilation broken (VMEM) — each
event found at its commit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from rpa_bench import cli
from rpa_bench.kernels import compiling, loader
from rpa_bench.pipeline import history as hist
from rpa_bench.reports import history_events as events

V3 = Path("kernels") / "ragged_paged_attention" / "v3"
TINY = ["workload=batch_spec", "workload.spec=[2q1s40_q24]", "workload.page_size=16", "model.num_q_heads=4",
        "model.num_kv_heads=2", "scale=cpu_smoke", "timing=quick", "timing.capture=false"]


def _commit(repo: Path, message: str) -> str:
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", message], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


def _edit(repo: Path, old: str, new: str) -> None:
    path = repo / "tpu_inference" / V3 / "kernel.py"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    installed = loader.installed_package_dir()
    if installed is None:
        pytest.skip("tpu-inference is not installed")
    repo = tmp_path_factory.mktemp("tpu-inference")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    pkg = repo / "tpu_inference"
    for rel in (Path("kernels") / "__init__.py", Path("kernels") / "ragged_paged_attention" / "__init__.py"):
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        src = installed / rel
        (pkg / rel).write_text(src.read_text() if src.is_file() else "")
    (pkg / "__init__.py").write_text("")
    (pkg / V3).mkdir(parents=True, exist_ok=True)
    for name in ("__init__.py", "kernel.py", "util.py"):
        src = installed / V3 / name
        (pkg / V3 / name).write_text(src.read_text() if src.is_file() else "")
    shas = {"base": _commit(repo, "base: v3 as released")}
    _edit(repo, "min_bkv_sz_to_peak = (16 * 1024 * 1024", "min_bkv_sz_to_peak = (256 * 1024")
    shas["blocks"] = _commit(repo, "smaller default decode KV block")
    _edit(repo, "s_scale = sm_scale\n", "s_scale = sm_scale * 1.5\n")
    shas["wrong"] = _commit(repo, "scale the logits (breaks correctness)")
    _edit(repo, "s_scale = sm_scale * 1.5\n", "s_scale = sm_scale\n")
    _edit(repo, "(2, bkv_sz, bkv_stride, *kv_cache.shape[3:])", "(96, bkv_sz, bkv_stride, *kv_cache.shape[3:])")
    shas["vmem"] = _commit(repo, "fix the scale; deeper KV buffering (no longer fits VMEM)")
    return repo, shas


@pytest.mark.slow  # four revisions, each checked in interpret mode and compiled for TPU7x (~90 s)
@pytest.mark.skipif(not compiling.libtpu_status()[0], reason="libtpu not installed")
def test_history_finds_each_event_at_its_commit(repo, tmp_path, capsys):
    path, shas = repo
    out = tmp_path / "history"
    argv = ["history", "--repo", str(path), "--revisions", f"{shas['base']}..{shas['vmem']}", "--generations",
            "tpu7x", "--cases", "decode_8x1k", "--out", str(out), "--", *TINY]
    assert cli.main(argv) == 1  # regressions found
    events = json.loads(next(out.glob("*/events.json")).read_text())
    by = {(e["kind"], e["direction"]): e["commit"] for e in events}
    assert by[("VMEM step", "improvement")] == shas["blocks"][:10]  # the smaller default block
    assert by[("correctness", "regression")] == shas["wrong"][:10]
    assert by[("correctness", "improvement")] == shas["vmem"][:10]
    assert by[("compile", "regression")] == shas["vmem"][:10]
    assert any(e["after"] == "vmem_oom" for e in events if e["kind"] == "compile")
    page = next(out.glob("*/index.html")).read_text()
    assert shas["wrong"][:10] in page and "Regressions, improvements and breakages" in page
    capsys.readouterr()
    # stored revisions are never recomputed
    assert cli.main(argv) == 1
    assert capsys.readouterr().out.count("not recomputed") == 4


def test_change_points_find_a_step_and_ignore_jitter():
    flat = [100.0, 101.0, 99.5, 100.4, 100.2, 99.9]
    assert events.change_points(flat, threshold=1.1, sigma=1.0) == []
    step = [100.0, 101.0, 99.5, 131.0, 130.2, 129.9]
    assert events.change_points(step, threshold=1.1, sigma=1.0) == [3]
    assert events.change_points([3.6e6, 7.9e5, 7.9e5], threshold=1.0 + 1e-9) == [1]  # deterministic: any change
    revs = [hist.Revision(str(i) * 40, "2026-01-01", f"c{i}") for i in range(6)]
    assert hist.bisect(revs, lambda r: int(r.sha[0]) >= 4).sha == revs[4].sha


def test_bad_history_input_is_refused(tmp_path, capsys):
    assert cli.main(["history", "--repo", str(tmp_path), "--revisions", "a..b"]) == 2
    assert "rpa-bench history:" in capsys.readouterr().err


def _request(**change):
    base = dict(kernel="rpa_v3", config={"run": {"name": "a", "results_dir": "r"}, "workload": {"name": "paper_decode"},
                                         "kernel": {"name": "rpa_v3", "source": "/x@1"}},
                generations=("TPU7x",), cases=("decode_8x1k",), compile_timeout_s=300.0)
    base.update(change)
    base["config"] = hist.request_config(base["config"])
    return hist.HistoryRequest(**base)


def test_a_stored_revision_answers_only_the_same_request():
    key = _request().key()
    assert _request(kernel="rpa_v2").key() != key
    assert _request(generations=("TPU v6 lite",)).key() != key
    assert _request(config={"run": {}, "workload": {"name": "paper_prefill_causal"},
                            "kernel": {"name": "rpa_v3"}}).key() != key
    # output-only settings and the revision's own source do not change the request
    assert _request(config={"run": {"name": "b", "results_dir": "elsewhere", "progress": False},
                            "workload": {"name": "paper_decode"}, "kernel": {"name": "rpa_v3", "source": "/y@2"}}
                    ).key() == key


def test_a_failed_revision_is_recomputed_and_a_complete_one_reused(tmp_path):
    import json as _json

    rev = hist.Revision("a" * 40, "2026-01-01", "c")
    folder = tmp_path / "rev"
    folder.mkdir()
    (folder / "revision.json").write_text(_json.dumps({"status": "failed", "sha": rev.sha}))
    calls = []

    def fake_run(plan, config, **kw):
        calls.append(kw["run_dir"])

    import rpa_bench.pipeline.history as module

    module_run, module.run_plan = module.run_plan, fake_run
    try:
        said = []
        hist.evaluate(rev, plan=None, config={}, request=_request(generations=()), folder=folder,
                      compile_jobs=list, compile_many=lambda jobs, timeout_s: [], say=said.append)
        assert calls and any("recomputing" in s for s in said)
        hist.evaluate(rev, plan=None, config={}, request=_request(generations=()), folder=folder,
                      compile_jobs=list, compile_many=lambda jobs, timeout_s: [], say=said.append)
        assert len(calls) == 1 and "not recomputed" in said[-1]
    finally:
        module.run_plan = module_run


def test_repo_must_be_a_checkouts_top_level(tmp_path):
    import subprocess as sp

    sp.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="not a git checkout's top level"):
        hist.git_toplevel(tmp_path / "sub")


@pytest.mark.slow  # two revisions as Ray tasks on a local head (~1 min)
def test_history_revisions_run_as_ray_tasks(repo, tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    path, shas = repo
    out = tmp_path / "history"
    argv = ["history", "--repo", str(path), "--revisions", f"{shas['blocks']},{shas['wrong']}", "--generations", "",
            "--engine", "ray", "--out", str(out), "--", *TINY]
    try:
        assert cli.main(argv) == 1  # the logit scale breaks correctness: a regression
    finally:
        import ray

        ray.shutdown()
    text = capsys.readouterr().out
    assert text.count("done (Ray task)") == 2
    events = json.loads(next(out.glob("*/events.json")).read_text())
    assert any(e["kind"] == "correctness" and e["commit"] == shas["wrong"][:10] for e in events)
