"""Synthetic batches: the paper's sweeps and seeded random ragged batches."""

import numpy as np
import pytest

from rpa_bench.workloads.points import build_workload
from rpa_bench.workloads.model import ModelSpec
from rpa_bench.workloads.synthetic import decode_batch, prefill_batch, random_batch
from rpa_bench.workloads.workload_spec import workload_spec_from_dict

MODEL = ModelSpec("tiny", 4, 2, 64)


def test_paper_decode_sweep_is_128_decodes_over_context_plus_new_token():
    wl = build_workload(workload_spec_from_dict(
        {"name": "d", "kind": "paper_decode", "num_seqs": 128, "context_lens": [512, 32768], "page_size": 256}),
        MODEL, None, seed=0)
    assert [p.point_id for p in wl.points] == ["ctx=512", "ctx=32768"]
    p = wl.points[1]
    assert p.batch.q_lens == (1,) * 128 and set(p.batch.kv_lens) == {32769}
    assert p.batch.distribution == (128, 128, 128) and p.batch.phase == "decode"
    assert (p.max_num_batched_tokens, p.max_num_seqs) == (128, 128)
    assert p.meta["context_len"] == 32768 and p.weight == 0.5


@pytest.mark.parametrize("causal", [True, False])
def test_paper_prefill_sweep_is_one_whole_prefill(causal):
    wl = build_workload(workload_spec_from_dict(
        {"name": "p", "kind": "paper_prefill", "seq_lens": [512, 8192], "causal": causal}), MODEL, None, seed=0)
    p = wl.points[1]
    assert p.batch.q_lens == p.batch.kv_lens == (8192,) and p.causal is causal
    assert p.batch.phase == "prefill" and (p.max_num_batched_tokens, p.max_num_seqs) == (8192, 1)


@pytest.mark.parametrize("distribution", ["uniform", "zipf"])
def test_random_batches_are_seeded_valid_and_fit_the_budget(distribution):
    def make(seed):
        return random_batch(np.random.default_rng(seed), num_seqs=64, max_kv_len=20000, max_q_len=1024,
                            decode_fraction=0.5, distribution=distribution, page_size=16, max_num_batched_tokens=2048)

    a, b, c = make(1), make(1), make(2)
    assert a == b and a != c
    assert a.num_tokens <= 2048 and a.num_seqs == 64
    assert all(kv >= q >= 1 for q, kv in zip(a.q_lens, a.kv_lens))
    assert 0 < a.distribution[0] < 64  # some decodes, some not


def test_zipf_lengths_are_heavy_tailed():
    b = random_batch(np.random.default_rng(0), num_seqs=2000, max_kv_len=32768, max_q_len=1, decode_fraction=1.0,
                     distribution="zipf", zipf_a=1.1)
    kv = np.array(b.kv_lens)
    assert np.median(kv) < 100 and kv.max() > 5000


def test_synthetic_workload_points_carry_budget_padding():
    wl = build_workload(workload_spec_from_dict(
        {"name": "s", "kind": "synthetic", "distribution": "zipf", "num_batches": 3, "num_seqs": 8,
         "max_num_batched_tokens": 256}), MODEL, None, seed=3)
    assert len(wl.points) == 3 and all(p.max_num_batched_tokens == 256 and p.max_num_seqs == 8 for p in wl.points)
    assert all(p.batch.num_tokens <= 256 for p in wl.points)


@pytest.mark.parametrize(
    "bad,needle",
    [({"kind": "paper_decode", "context_lens": [0]}, "context_lens"),
     ({"kind": "paper_decode", "contexts": [1]}, "unknown field"),
     ({"kind": "synthetic", "distribution": "pareto"}, "uniform, zipf"),
     ({"kind": "nope"}, "paper_decode, paper_prefill"),
     ({"kind": "trace", "format": "azure"}, "path"),
     ({"kind": "trace", "path": "x.csv", "format": "parquet"}, "azure, mooncake, lengths, generic"),
     ({"kind": "trace", "path": "x.csv", "format": "lengths"}, "arrival_rate_per_s")],
)
def test_bad_workload_fields_are_named(bad, needle):
    with pytest.raises(ValueError, match=needle):
        workload_spec_from_dict({"name": "w", **bad})


def test_single_batches_refuse_bad_sizes():
    with pytest.raises(ValueError, match="num_seqs"):
        decode_batch(0, 10, page_size=16)
    with pytest.raises(ValueError, match="seq_len"):
        prefill_batch(1, 0, page_size=16)
