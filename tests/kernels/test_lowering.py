"""Cross-lowering the Pallas RPA kernels for TPU generations on a CPU-only machine."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from rpa_bench.kernels.lowering import abstract_inputs, lower_for_tpu, lowering_batch
from rpa_bench.kernels.registry import PALLAS_BACKENDS, get_backend
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

GENERATIONS = ("TPU v5 lite", "TPU v6 lite", "TPU7x")
MODEL = ModelSpec("tiny", num_q_heads=4, num_kv_heads=2, head_dim=128, dtype="bfloat16", kv_dtype="bfloat16")
BATCH = lowering_batch(16, chunk_prefill_size=16)  # decode + fixed-chunk prefill + mixed


@pytest.mark.parametrize("generation", GENERATIONS)
def test_rpa_v3_lowers_one_mosaic_call_per_sequence_class(generation):
    result = lower_for_tpu(get_backend("rpa_v3"), MODEL, AttentionSpec(), BATCH, generation)
    assert result.ok, result.error
    assert result.custom_calls == 3
    assert [n.split("-")[0] for n in result.kernel_names] == ["RPAd", "RPAp", "RPAm"]
    assert all("-p_16-" in n for n in result.kernel_names)


@pytest.mark.parametrize("name", ["rpa_v2", "jax_rpa"])
@pytest.mark.parametrize("generation", GENERATIONS)
def test_older_api_kernels_lower_to_one_mosaic_call(name, generation):
    attn = AttentionSpec(sliding_window=32, soft_cap=30.0)
    result = lower_for_tpu(get_backend(name), MODEL, attn, BATCH, generation)
    assert result.ok, result.error
    assert (result.custom_calls, result.kernel_names) == (1, ("ragged_paged_attention_kernel",))


def test_rpa_v3_lowers_each_generations_own_code_path():
    v6, v7 = (lower_for_tpu(get_backend("rpa_v3"), MODEL, AttentionSpec(), BATCH, g, keep_text=True)
              for g in ("TPU v6 lite", "TPU7x"))
    assert v6.ok and v7.ok
    # TPU7x pins q/kv/cache to HBM (its `tpu_version >= 7` branch); v6 does not.
    assert v6.stablehlo != v7.stablehlo


def test_failures_are_results_naming_the_cause():
    bad = get_backend("rpa_v3", options={"m_block_sizes": [16, 24, 16, 24]})
    result = lower_for_tpu(bad, MODEL, AttentionSpec(), BATCH, "TPU7x")
    assert not result.ok and result.custom_calls == 0
    assert "m_block_sizes=[16, 24, 16, 24]: bkv_sz=24 must be a multiple of page_size=16" in result.error
    v4 = lower_for_tpu(get_backend("rpa_v3"), MODEL, AttentionSpec(), BATCH, "TPU v4")
    assert not v4.ok and "no default block sizes for generation='TPU v4'" in v4.error
    unknown = lower_for_tpu(get_backend("jax_rpa"), MODEL, AttentionSpec(), BATCH, "TPU v9")
    assert not unknown.ok and "generation='TPU v9' unknown" in unknown.error


def test_abstract_inputs_take_padding_and_hold_no_arrays():
    inputs = abstract_inputs(BATCH, MODEL, max_num_batched_tokens=128, max_num_seqs=8, pages_per_seq=64)
    assert inputs.queries.shape == (128, 4, 128) and inputs.page_indices.shape == (8, 64)
    assert inputs.k_cache.shape == (BATCH.num_pages, 16, 2, 128)
    assert not hasattr(inputs.queries, "device")  # a ShapeDtypeStruct


def _lower_cfg(kernel: str, generations: list[str], **kernel_options) -> OmegaConf:
    return OmegaConf.create({
        "model": {"name": "tiny", "num_q_heads": 4, "num_kv_heads": 2, "head_dim": 128,
                  "dtype": "bfloat16", "kv_dtype": "bfloat16"},
        "attention": {"causal": True, "sm_scale": None, "sliding_window": None, "soft_cap": None,
                      "k_scale": None, "v_scale": None},
        "kernel": {"name": kernel, "source": None, "interpret": "auto", "options": kernel_options},
        "lower": {"generations": generations, "page_size": 16, "chunk_prefill_size": 16,
                  "max_num_batched_tokens": None, "max_num_seqs": None},
    })


def test_lower_command_prints_a_table_and_exits_zero_when_all_lower(capsys):
    from rpa_bench.commands import lower

    assert lower.task(_lower_cfg("reference", ["TPU7x"])) == 0  # no kernel= override: every Pallas kernel
    out = capsys.readouterr().out
    for name in ("rpa_v3", "rpa_v2", "jax_rpa", "rpa_v3_cp"):  # Pallas kernels this model fits
        assert name in out
    rows = [line for line in out.splitlines() if line.split()[:1] and line.split()[0] in PALLAS_BACKENDS]
    assert "custom_calls" in out and f"all {len(rows)} lowerings ok" in out and len(rows) >= 4


def test_lower_command_exits_nonzero_when_a_lowering_fails(capsys, monkeypatch):
    from rpa_bench.commands import lower

    cfg = _lower_cfg("rpa_v3", ["TPU7x"], d_block_sizes=[1, 24, 1, 24])
    results = lower.lower_table(cfg, all_pallas=False)
    assert [r.ok for r in results] == [False]
    text = lower.format_table(results)
    assert "failed" in text and "d_block_sizes" in text
    monkeypatch.setattr(lower, "kernel_was_chosen", lambda: True)  # as with `kernel=rpa_v3` given
    assert lower.task(cfg) == 1
    assert "1 of 1 lowerings failed" in capsys.readouterr().err


def test_rpa_bench_lower_cli_lowers_the_chosen_kernel_only(capsys, tmp_path, monkeypatch):
    from rpa_bench.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["lower", "kernel=jax_rpa", "model=llama3_8b_hd256", "lower.generations=[TPU7x,\"TPU v6 lite\"]"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "all 2 lowerings ok" in out and "rpa_v3" not in out
    assert list(tmp_path.iterdir()) == []  # nothing written
