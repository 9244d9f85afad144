"""rpa-bench tune: the search space follows the kernel's rules, pruning is per generation, the
search finds the optimum within its budget, the exported lines reach the kernel, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rpa_bench import cli
from rpa_bench.kernels import tpu_target
from rpa_bench.kernels.registry import KernelConfig, get_backend
from rpa_bench.kernels.rpa_v3 import MIN_BQ
from rpa_bench.pipeline import tune_space as tn
from rpa_bench.store.run_store import RunStore
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import ModelSpec

LLAMA = ModelSpec("llama3_8b", num_q_heads=32, num_kv_heads=8, head_dim=128)
PAGE = 256


def _v3_heuristic(batch: RaggedBatch, case: str) -> tuple[int, ...]:
    plan = get_backend("rpa_v3", options={"generation": "TPU7x"}).plan(LLAMA, batch)
    return tuple({"decode": plan.d_block_sizes, "mixed": plan.m_block_sizes}[case])


@pytest.mark.parametrize("phase", ["decode", "mixed", "verify", "prefill"])
def test_the_space_obeys_the_kernels_rules_and_always_holds_the_heuristic(phase):
    batch = RaggedBatch(q_lens=(1, 1, 37), kv_lens=(3000, 700, 900), page_size=PAGE)
    heuristic = _v3_heuristic(batch, "decode" if phase == "decode" else "mixed")
    cands = tn.candidates("rpa_v3", phase, heuristic=heuristic, page_size=PAGE, max_kv=3000, max_q=37)
    assert cands[0].heuristic and cands[0].values == heuristic and sum(c.heuristic for c in cands) == 1
    assert len({c.label for c in cands}) == len(cands)
    for c in cands[1:]:
        bq, bkv, bq_c, bkv_c = c.values
        assert bq % bq_c == 0 and bkv % bkv_c == 0 and bkv % PAGE == 0 and bkv_c % PAGE == 0
        assert bkv <= 3072  # up to the longest kv, rounded up to a page
        if phase == "decode":
            assert bq == bq_c == 1
        else:
            assert MIN_BQ <= bq <= 64  # doubling up to the longest query (37 -> 64)
    # every fetch size from one page to the longest kv, and every page-multiple compute size that divides it
    fetch = {c.values[1] for c in cands[1:]}
    assert fetch == {256, 512, 1024, 2048, 3072}
    assert {c.values[3] for c in cands[1:] if c.values[1] == 2048} == {256, 512, 1024, 2048}
    ref = tn.candidates("reference", phase, heuristic=(256 * 2**20,))
    assert ref[0].values == (256 * 2**20,) and all(len(c.values) == 1 for c in ref)


def test_pruning_drops_a_tuple_that_overflows_vmem_on_one_generation_and_keeps_it_on_another():
    backend = get_backend("rpa_v3")
    big = (1, 8192, 1, 1024)  # the kernel's own estimate: ~72 MiB of VMEM
    est = backend.vmem_estimate_bytes(LLAMA, {"block_sizes": {"decode": big}})
    tpu7x, v6e = (tpu_target.vmem_capacity_bytes(k) for k in ("TPU7x", "TPU v6 lite"))
    assert tpu7x < est < v6e
    assert tn.verdict_from_estimate(est, tpu7x).status == "vmem_oom"
    assert tn.verdict_from_estimate(est, v6e).status == "ok" and tn.verdict_from_estimate(est, v6e).source == "estimate"


@pytest.mark.slow
def test_the_real_compiler_prunes_the_same_tuple_per_generation():
    from rpa_bench.kernels import compiling

    ok, reason = compiling.libtpu_status()
    if not ok:
        pytest.skip(reason)
    batch = RaggedBatch(q_lens=(1,) * 8, kv_lens=(8192,) * 8, page_size=PAGE)
    cand = tn.Candidate("rpa_v3", "decode", (1, 8192, 1, 1024))
    jobs = [compiling.CompileJob(KernelConfig("rpa_v3", options=cand.options()).to_dict(), cand.label, LLAMA,
                                 __import__("rpa_bench.workloads.model", fromlist=["AttentionSpec"]).AttentionSpec(),
                                 batch, gen, "decode") for gen in ("tpu7x", "v6e")]
    r7, r6 = compiling.compile_many(jobs, timeout_s=600)
    assert tn.verdict_from_compile(r7, "TPU7x", "decode").status == "vmem_oom", r7.error
    assert tn.verdict_from_compile(r6, "TPU v6 lite", "decode").fits, r6.error


def test_halving_finds_the_optimum_of_a_synthetic_timing_function_within_its_budget():
    cands = tn.candidates("rpa_v3", "decode", heuristic=(1, 4096, 1, 4096), page_size=PAGE, max_kv=16384)
    best = (1, 2048, 1, 512)

    def seconds(values):  # a bowl in log2(bkv), log2(bkv_c) with its bottom at `best`
        return 1e-3 * (1 + 0.05 * (math.log2(values[1] / best[1]) ** 2 + math.log2(values[3] / best[3]) ** 2))

    rng = np.random.default_rng(0)
    calls = []

    def evaluate(alive, rung, samples):
        calls.append(len(alive))
        noise = 0.005 / math.sqrt(samples)  # noise shrinks with samples, as a median's does
        return ({c.label: seconds(c.values) * (1 + noise * rng.standard_normal()) for c in alive},
                samples * len(alive) * 1e-3)

    rungs = tn.successive_halving(cands, evaluate, eta=3, min_samples=5)
    final = rungs[-1]
    winner = min((lab for lab in final.kept if not lab.startswith("decode-1.4096.1.4096")),
                 key=lambda lab: final.scores[lab])
    assert winner == tn.Candidate("rpa_v3", "decode", best).label
    assert "decode-1.4096.1.4096" in final.kept  # the heuristic is kept to the end, head to head
    assert sum(calls) < len(cands) * len(rungs)  # fewer evaluations than the grid at every rung
    # a budget of one rung's cost stops the search after that rung
    short = tn.successive_halving(cands, evaluate, eta=3, min_samples=5, budget_s=1e-9)
    assert len(short) == 1


def test_exported_env_lines_round_trip_into_the_kernels_arguments():
    answers = {"decode": tn.Candidate("rpa_v3", "decode", (1, 1024, 1, 512)),
               "mixed": tn.Candidate("rpa_v3", "mixed", (32, 2048, 16, 1024)),
               "verify": tn.Candidate("rpa_v3", "verify", (8, 512, 8, 256))}
    lines = tn.env_lines({k: v for k, v in answers.items() if k != "verify"})
    assert lines == ["RPA_V3_DECODE_BLOCK_SIZES=1,1024,1,512", "RPA_V3_MIXED_BLOCK_SIZES=32,2048,16,1024"]
    options = dict(tn.parse_env_line(line) for line in lines)
    batch = RaggedBatch(q_lens=(1, 1, 40), kv_lens=(900, 3000, 100), page_size=PAGE)
    plan = KernelConfig("rpa_v3", options={k: list(v) for k, v in options.items()}).backend().plan(LLAMA, batch)
    assert tuple(plan.d_block_sizes) == (1, 1024, 1, 512) and tuple(plan.m_block_sizes) == (32, 2048, 16, 1024)
    assert plan.block_sizes_source == {"decode": "config", "mixed": "config"}
    assert answers["verify"].options() == {"m_block_sizes": [8, 512, 8, 256]}  # verify tunes the mixed kernel


def test_buckets_and_regret():
    weights = {"a": 0.5, "b": 0.5}
    buckets = {"a": "small", "b": "large"}
    lat = {"H": {"a": 10.0, "b": 10.0}, "X": {"a": 6.0, "b": 11.0}, "Y": {"a": 11.0, "b": 7.0}}
    ans = tn.analyze(lat, weights, buckets, "decode", "H")
    assert ans.best == "X" and ans.per_bucket["small"]["best"] == "X" and ans.per_bucket["large"]["best"] == "Y"
    # X everywhere: 3 + 5.5 = 8.5; each bucket's best: 3 + 3.5 = 6.5
    assert ans.regret_pct == pytest.approx((8.5 / 6.5 - 1) * 100)
    assert ans.speedup_vs_heuristic == pytest.approx(10.0 / 8.5)
    assert tn.bucket_of(5, 900, [512.0]) == "seqs<=8 kv>512"
    # every figure shown as us is a latency: the bucket's weighted mean per call, not weight x us
    assert ans.per_bucket["small"]["best_us"] == pytest.approx(6.0)
    assert ans.per_bucket["large"]["heuristic_us"] == pytest.approx(10.0)
    assert ans.per_bucket["large"]["global_us"] == pytest.approx(11.0)
    assert ans.totals["H"] == pytest.approx(10.0) and ans.totals["X"] == pytest.approx(8.5)


TUNE = ["tune", "kernel=reference", "workload=batch_spec", "workload.spec=[4q1s256,2q1s512]", "scale=cpu_smoke",
        "timing=quick", "timing.capture=false", "tune.strategy=grid", "tune.max_candidates=2", "run.progress=false",
        "tune.json=true"]


def test_tune_on_the_reference_end_to_end_and_resume_after_a_kill_redoes_nothing(tmp_path, monkeypatch, capsys):
    argv = [*TUNE, f"run.results_dir={tmp_path}", "run.name=t"]
    real_append = RunStore.append
    calls = {"n": 0}

    def killed(self, rows):  # the process is killed after its first stored part
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_append(self, rows)

    monkeypatch.setattr(RunStore, "append", killed)
    assert cli.main(argv) == 130
    monkeypatch.setattr(RunStore, "append", real_append)
    capsys.readouterr()
    assert cli.main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    decode = first["phases"]["decode"]
    assert decode["timed"] and decode["measured"][0] == decode["heuristic"] and len(decode["measured"]) == 2
    # the resumed run measured only what the killed one had not stored (one point of two)
    assert 0 < first["stats"]["rows_measured"] < 2 * 2 * 2
    assert set(decode["answer"]["totals"]) == set(decode["measured"])
    assert (tmp_path / "tune" / "t" / "tune.html").is_file() and (tmp_path / "tune" / "t" / "tune_decode.png").is_file()
    assert cli.main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["stats"]["rows_measured"] == 0 and again["phases"]["decode"]["best"] == decode["best"]


def test_bad_tune_settings_are_refused_in_one_line(tmp_path, capsys):
    assert cli.main([*TUNE, "tune.strategy=bayes", f"run.results_dir={tmp_path}"]) == 2
    assert "tune.strategy='bayes'; allowed: halving, grid" in capsys.readouterr().err
    assert cli.main([*TUNE, "tune.phases=[decode,speculate]", f"run.results_dir={tmp_path}"]) == 2
    assert "tune.phases: 'speculate' unknown; allowed: decode, prefill, mixed, verify" in capsys.readouterr().err


def test_every_declared_kernel_is_tunable_and_a_kernel_without_knobs_is_refused_naming_the_tunable_ones():
    from rpa_bench.kernels import registry

    assert set(tn.TUNABLE) == set(registry.BACKENDS)
    with pytest.raises(ValueError, match=r"kernel=nope: no tunable knobs declared; allowed: rpa_v3, rpa_v2"):
        registry.tuning("nope")


def test_a_timeout_verdict_holds_only_for_the_limit_it_was_reached_under(tmp_path):
    from rpa_bench.pipeline import tune_space as tn

    cache = tn.VerdictCache(tmp_path / "v.json")
    cache.put("k", tn.Verdict("timeout", "compile:TPU7x", timeout_s=180.0, error="within 180 s"))
    cache.put("ok", tn.Verdict("ok", "compile:TPU7x", timeout_s=180.0))
    again = tn.VerdictCache(tmp_path / "v.json")
    assert again.get("k", timeout_s=180.0).status == "timeout"
    assert again.get("k", timeout_s=100.0).status == "timeout"
    assert again.get("k", timeout_s=400.0) is None  # a larger limit compiles it again
    assert again.get("ok", timeout_s=400.0).status == "ok"  # a fit verdict stands


def test_a_tuple_is_recommended_only_on_a_significant_improvement():
    from rpa_bench.pipeline.tuner import recommend

    noise = {"same": False, "geomean_ratio": 0.95, "points": [{"mark": "not significant"}] * 3}
    assert recommend("X", "H", noise)[0] == "H" and "on no point significantly" in recommend("X", "H", noise)[1]
    mixed = {"same": False, "geomean_ratio": 0.9, "points": [{"mark": "improved"}, {"mark": "worse"}]}
    assert recommend("X", "H", mixed)[0] == "H" and "significantly slower" in recommend("X", "H", mixed)[1]
    real = {"same": False, "geomean_ratio": 0.8, "points": [{"mark": "improved"}, {"mark": "not significant"}]}
    assert recommend("X", "H", real)[0] == "X"
    assert recommend("H", "H", {"same": True})[0] == "H"


@pytest.mark.parametrize("override, says", [
    ("tune.kv_quantiles=[1.5]", "tune.kv_quantiles=[1.5]: each must be a number in [0, 1]"),
    ("tune.phases=[nosuch]", "tune.phases: 'nosuch' unknown; allowed:"),
    ("run.kernels=[reference,rpa_v3]", "run.kernels names 2 entries (reference, rpa_v3); rpa-bench tune tunes one"),
    ("run.workloads=[sharegpt,azure_code]", "run.workloads names 2 entries"),
])
def test_bad_tune_settings_are_one_line(override, says, capsys):
    from rpa_bench import cli

    base = ["tune", "scale=cpu_smoke"] if override.startswith("run.") else ["tune", "kernel=reference", "scale=cpu_smoke"]
    assert cli.main([*base, override]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_tune_phases_as_a_bare_word_is_one_phase():
    from rpa_bench.pipeline.tuner import TuneConfig

    assert TuneConfig(phases="decode").phases == ["decode"]


@pytest.mark.slow  # a whole tune through the CLI (~11 s)
def test_tune_honours_run_max_points(tmp_path, capsys):
    from rpa_bench import cli

    argv = [a for a in TUNE if a != "tune.json=true"]
    assert cli.main([*argv, "run.max_points=1", f"run.results_dir={tmp_path}", "run.name=m"]) == 0
    captured = capsys.readouterr()
    assert "the first 1 of 2 points" in captured.err and "leading none" not in captured.err
    summary = json.loads((tmp_path / "tune" / "m" / "tune.json").read_text())
    assert all(r["best"] for r in summary["phases"].values())


def test_the_traffic_ranking_takes_a_tuple_over_vmem_by_estimate_without_failing():
    """Off TPU the survivors are ranked by modelled time; a tuple whose VMEM estimate exceeds
    VMEM (kept for the compiler to decide) is ranked, not a crash of the whole tune."""
    from rpa_bench.commands._hydra import compose_run
    from rpa_bench.pipeline.plan import plan_from_config
    from rpa_bench.pipeline.prepare import build_workloads
    from rpa_bench.pipeline.tuner import TuneConfig, Tuner

    config, workloads, kernels, _ = compose_run(["kernel=rpa_v3", "workload=batch_spec",
                                                 "workload.spec=[8q1s8192]", "scale=cpu_smoke", "device=tpu7x"])
    plan = plan_from_config(config, workloads=workloads, kernels=kernels, experiment="tune")
    tuner = Tuner(config, TuneConfig(json=True), plan)
    points = list(build_workloads(plan)[0][1].points)
    weights = {p.point_id: 1.0 for p in points}
    small, huge = tn.Candidate("rpa_v3", "decode", (1, 512, 1, 512)), tn.Candidate("rpa_v3", "decode", (1, 8192, 1, 256))
    times = tuner.modelled_times([small, huge], points, weights)
    assert set(times) == {small.label, huge.label} and all(v > 0 for v in times.values())


def test_a_candidate_far_over_vmem_by_its_estimate_is_not_compiled(tmp_path):
    from rpa_bench.commands._hydra import compose_run
    from rpa_bench.pipeline.plan import plan_from_config
    from rpa_bench.pipeline.prepare import build_workloads
    from rpa_bench.pipeline.tuner import TuneConfig, Tuner

    config, workloads, kernels, _ = compose_run(["kernel=rpa_v3", "workload=batch_spec", "workload.spec=[8q1s8192]",
                                                 "scale=cpu_smoke", "device=tpu7x", f"run.results_dir={tmp_path}"])
    plan = plan_from_config(config, workloads=workloads, kernels=kernels, experiment="tune")
    tuner = Tuner(config, TuneConfig(json=True), plan)
    rep = list(build_workloads(plan)[0][1].points)[0]
    huge = tn.Candidate("rpa_v3", "decode", (1, 65536, 1, 256))  # estimate several times TPU7x's VMEM
    verdicts = tuner.prune("decode", [huge], rep)
    v = verdicts[huge.label]
    assert v.status == "vmem_oom" and v.source == "estimate" and "not compiled" in v.error
    assert tuner.stats["compiles"] == 0 and tuner.stats["pruned_by_estimate"] == 1
