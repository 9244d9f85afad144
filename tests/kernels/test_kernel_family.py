"""The kernel family: declarations drive the registry; the experimental kernels' options,
block-size plans and refusals; their correctness in interpret mode (slow: ~1 min a call)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from rpa_bench.kernels import registry
from rpa_bench.kernels.reference import reference_attention
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.materialize import materialize
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

CONF = Path(__file__).resolve().parents[2] / "conf" / "kernel"
F32 = ModelSpec(name="t", num_q_heads=8, num_kv_heads=2, head_dim=128, dtype="float32", kv_dtype="float32")


def test_every_declared_kernel_has_a_config_and_every_config_a_declaration():
    confs = {p.stem: yaml.safe_load(p.read_text())["name"] for p in CONF.glob("*.yaml")}
    assert all(stem == name for stem, name in confs.items())
    assert set(confs) == set(registry.BACKENDS)
    for decl in registry.declarations():
        assert decl.backend.name == decl.name
        assert (decl.name in registry.PALLAS_BACKENDS) == decl.pallas
        assert (decl.name in registry.SOURCE_BACKENDS) == decl.takes_source


def test_the_family_is_registered():
    assert {"rpa_v3", "rpa_v2", "jax_rpa", "reference", "rpa_v3_hd64", "batched_rpa", "stacked_rpa"} <= \
        set(registry.BACKENDS)


@pytest.mark.parametrize("name, option, value, message", [
    ("batched_rpa", "decode_block_sizes", [1, 1, 512], r"decode_block_sizes=\[1, 1, 512\] must be \[bq_sz, bq_c_sz"),
    ("stacked_rpa", "prefill_block_sizes", [8, 8, 256, 2, 3], r"n_buffer=3; allowed: 2"),
    ("rpa_v3_hd64", "num_queries_per_block", 0, r"num_queries_per_block=0 must be a positive integer"),
])
def test_bad_options_name_the_field_and_the_allowed_values(name, option, value, message):
    with pytest.raises(ValueError, match=message):
        registry.get_backend(name, options={option: value})


def test_stacked_rpa_refuses_a_page_size_off_its_lane_width():
    batch = RaggedBatch.ordered([1], [40], page_size=16)
    with pytest.raises(ValueError, match=r"kernel=stacked_rpa: page_size=16 unsupported; allowed: multiples of 128"):
        registry.get_backend("stacked_rpa").validate(F32, AttentionSpec(), batch)


def test_causal_only_kernels_refuse_non_causal_attention():
    hd64 = ModelSpec(name="h", num_q_heads=8, num_kv_heads=1, head_dim=64)
    for name, model in (("batched_rpa", F32), ("stacked_rpa", F32), ("rpa_v3_hd64", hd64)):
        with pytest.raises(ValueError, match=r"attention feature\(s\) \['non_causal'\] unsupported"):
            registry.get_backend(name).validate(model, AttentionSpec(causal=False))


@pytest.mark.parametrize("name", ["batched_rpa", "stacked_rpa"])
def test_block_sizes_are_the_kernels_own_for_the_target_generation(name):
    batch = RaggedBatch.ordered([1, 1, 20], [40, 170, 50], page_size=128)
    backend = registry.get_backend(name)
    plans = {g: backend.block_sizes(F32, AttentionSpec(), batch, generation=g) for g in ("tpu7x", "v5e")}
    for g, plan in plans.items():
        assert set(plan["source"]) == {"decode", "prefill"}
        assert all(src.endswith(plan["device_kind"]) and src.split(":")[0] != "config"
                   for src in plan["source"].values())
    configured = registry.get_backend(name, options={"prefill_block_sizes": list(plans["tpu7x"]["prefill"])})
    assert configured.block_sizes(F32, AttentionSpec(), batch)["source"]["prefill"] == "config"


@pytest.mark.slow  # interpret mode: about a minute per call
@pytest.mark.parametrize("name, page", [("batched_rpa", 16), ("stacked_rpa", 128)])
def test_experimental_kernels_match_the_reference_in_interpret_mode(name, page):
    batch = RaggedBatch.ordered([1, 1, 20], [40, 170, 50], page_size=page)
    inputs = materialize(batch, F32, poison=False, seed=1)
    ref = np.asarray(reference_attention(inputs, AttentionSpec()).output)[: batch.num_tokens]
    prepared = registry.get_backend(name).build(F32, AttentionSpec(), batch, interpret=True)
    out = prepared.finish(prepared.kernel(*prepared.prepare(prepared.layout(inputs)))).output
    np.testing.assert_allclose(np.asarray(out)[: batch.num_tokens], ref, atol=2e-5, rtol=1e-4)


# --- tuning: every kernel's declared knobs ------------------------------------------------------
LLAMA = ModelSpec("llama3_8b", num_q_heads=32, num_kv_heads=8, head_dim=128)
GPT_OSS = ModelSpec("gpt_oss", num_q_heads=64, num_kv_heads=8, head_dim=64, attention_sinks=True)


@pytest.mark.parametrize("name, model, page", [("batched_rpa", LLAMA, 64), ("stacked_rpa", LLAMA, 128),
                                               ("rpa_v3_hd64", GPT_OSS, 64), ("rpa_v2", LLAMA, 64),
                                               ("jax_rpa", LLAMA, 64)])
@pytest.mark.parametrize("phase", ["decode", "mixed"])
def test_each_kernels_tuning_space_is_taken_by_the_kernel_as_configured(name, model, page, phase):
    """The kernel's default is the first candidate; every candidate's options are accepted by the
    backend and come back as what it would run (source: config)."""
    from rpa_bench.pipeline import tune_space as tn

    batch = RaggedBatch(q_lens=(1, 1, 37), kv_lens=(1500, 700, 900), page_size=page)
    declared = registry.tuning(name)
    case = declared.phase_case[phase]
    default = declared.default(registry.get_backend(name, options={"generation": "TPU7x"}), model, AttentionSpec(),
                               batch, case, "TPU7x")
    cands = tn.candidates(name, phase, heuristic=default, page_size=page, max_kv=1500, max_q=37)
    assert cands[0].heuristic and cands[0].values == default and len({c.label for c in cands}) == len(cands)
    assert len(cands) > 4
    for c in cands[:: max(1, len(cands) // 12)]:
        backend = registry.get_backend(name, options={"generation": "TPU7x", **c.options()})
        if name in ("batched_rpa", "stacked_rpa"):
            got = backend.block_sizes(model, AttentionSpec(), batch)
            assert tuple(got[case]) == c.values and got["source"][case] == "config"
        else:
            got = backend.block_sizes(model, batch)
            assert (got["num_kv_pages_per_block"], got["num_queries_per_block"]) == c.values


def test_tuned_values_export_in_each_kernels_own_override_form():
    from rpa_bench.pipeline import tune_space as tn

    v3 = tn.exports({"decode": tn.Candidate("rpa_v3", "decode", (1, 1024, 1, 512))})
    assert v3["decode"]["env"] == "RPA_V3_DECODE_BLOCK_SIZES=1,1024,1,512"
    assert v3["decode"]["call"] == "d_block_sizes=(1, 1024, 1, 512)"
    # batched RPA: no environment variable; its call takes its own BlockSizes, which the line builds
    batched = tn.exports({"decode": tn.Candidate("batched_rpa", "decode", (1, 1, 2048, 4, 3)),
                          "prefill": tn.Candidate("batched_rpa", "prefill", (256, 128, 512, 2, 2))})
    assert batched["decode"]["env"] is None and tn.env_lines({"decode": tn.Candidate("batched_rpa", "decode",
                                                                                     (1, 1, 2048, 4, 3))}) == []
    configs = registry.get_backend("batched_rpa").module().configs
    kwargs = eval(f"dict({batched['decode']['call']}, {batched['prefill']['call']})",  # noqa: S307 (our own line)
                  {"BlockSizes": configs.BlockSizes})
    assert kwargs == {"decode_block_sizes": configs.BlockSizes(1, 1, 2048, 4, 3),
                      "prefill_block_sizes": configs.BlockSizes(256, 128, 512, 2, 2)}
    assert batched["decode"]["overrides"] == ["kernel.options.decode_block_sizes=[1,1,2048,4,3]"]
    # one pair for every case, one option per field
    hd64 = tn.exports({"all": tn.Candidate("rpa_v3_hd64", "all", (8, 32))})
    assert hd64["all"]["call"] == "num_kv_pages_per_block=8, num_queries_per_block=32"
    assert hd64["all"]["overrides"] == ["kernel.options.num_kv_pages_per_block=8",
                                        "kernel.options.num_queries_per_block=32"]


def test_tune_off_tpu_prunes_a_family_kernel_by_compiling_for_the_target(tmp_path, capsys):
    """batched RPA runs mixed sequences in its prefill call: the mixed phase tunes that knob; each
    candidate compiled for TPU7x; the answer exported as call arguments, no environment line."""
    import json

    from rpa_bench import cli
    from rpa_bench.kernels.compiling import libtpu_status

    if not libtpu_status()[0]:
        pytest.skip(libtpu_status()[1])
    code = cli.main(["tune", "kernel=batched_rpa", "workload=batch_spec", "workload.spec=[2q1s256,1q40s300]",
                     "scale=cpu_smoke", "device=tpu7x", "tune.budget.compiles=2", "tune.phases=mixed", "tune.check_interpret=false",
                     "run.progress=false", "tune.json=true", f"run.results_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    summary = json.loads(out[out.index("{"):])
    assert set(summary["phases"]) == {"mixed"} and summary["phases"]["mixed"]["kernel_case"] == "prefill"
    cands = summary["phases"]["mixed"]["candidates"]
    assert len(cands) == 2 and all(c["source"] == "compile:TPU7x" and c["status"] == "ok" for c in cands)
    assert summary["env"] == [] and set(summary["exports"]) == {"prefill"}
    assert summary["exports"]["prefill"]["call"].startswith("prefill_block_sizes=BlockSizes(bq_sz=")


# --- upstream's own test inputs ---------------------------------------------------------------
def test_upstream_inputs_are_ported_with_their_shapes_and_skips():
    from rpa_bench.kernels import upstream_cases as uc

    hd64, batched = uc.upstream_inputs("rpa_v3_hd64"), uc.upstream_inputs("batched_rpa")
    assert uc.upstream_inputs("stacked_rpa") == []  # upstream has no test of it
    assert {u.source for u in hd64} == {uc.HD64_TEST} and {u.source for u in batched} == {uc.BATCHED_TEST}
    assert sum(u.sinks for u in hd64) == 6 and all(u.head_dim == 64 for u in hd64)
    assert len({u.test for u in hd64}) == len(hd64) and len({u.test for u in batched}) == len(batched)
    lens = uc.drawn_lens(17)
    assert lens == uc.drawn_lens(17) and all(1 <= q < 100 and 0 <= kv - q < 50 for q, kv in lens)
    # the upstream skips stay out: no 5:1 bfloat16 batched input
    assert not [u for u in batched if u.heads == (5, 1) and u.dtype == "bfloat16"]
    case = uc.as_check_case(next(u for u in batched if u.test.startswith("basic[float32, bq=64")))
    assert case.max_num_batched_tokens == 512 and case.max_num_seqs == 8 and case.num_pages == 1000
    assert dict(case.kernel_options)["decode_block_sizes"] == [64, 32, 256, 2, 3]


def test_the_hd64_kernel_passes_an_upstream_test_input_in_interpret_mode(monkeypatch, capsys):
    # through the command, with the default model (head_dim 128): upstream's inputs carry their own shapes
    from rpa_bench import cli
    from rpa_bench.commands import check as check_cmd
    from rpa_bench.kernels import upstream_cases as uc

    u = next(u for u in uc.upstream_inputs("rpa_v3_hd64") if u.test == "logit_soft_capping[50.0]")
    monkeypatch.setattr(check_cmd, "upstream_inputs", lambda name: [u] if name == "rpa_v3_hd64" else [])
    assert cli.main(["check", "kernel=rpa_v3_hd64", "check.cases=upstream"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert any(line.startswith("rpa_v3_hd64") and "upstream:logit_soft_capping[50.0]" in line and " ok" in line
               for line in out.splitlines()), out
    assert "1 ok, 0 incorrect, 0 failed, 0 skipped" in out


def test_check_cases_refuses_an_unknown_set_in_one_line(capsys):
    from rpa_bench import cli

    assert cli.main(["check", "kernel=reference", "check.cases=theirs"]) == 2
    assert "check.cases='theirs'; allowed: ours, upstream, all" in capsys.readouterr().err
    assert cli.main(["check", "kernel=reference", "check.dtypes=[float16]"]) == 2
    assert "check.dtypes=['float16']; allowed: a list of float32, bfloat16 or null" in capsys.readouterr().err
