"""Analytic cost vs XLA's cost analysis of a plain jnp attention (dense, GQA).

What the comparison shows, and why the two differ:
- FLOPs: XLA counts the two einsums exactly as we do (4 * h_q * q_len * kv_len * d) plus
  about 5 element-wise FLOPs per score (scale, max, subtract, sum, divide), and one exp
  per score as a "transcendental". We count only the matmuls, as the paper does.
- Causal: a dense masked attention computes every score, so XLA's matmul FLOPs equal our
  ``flops_causal_executed`` with a KV block covering the whole sequence (= non-causal);
  a blocked kernel skips whole blocks above the diagonal, which our ``ckv`` models.
- Bytes: XLA's "bytes accessed" sums the operands and results of every (fused) op, so
  it includes the f32 score matrix and the repeated K/V of GQA written to memory and read
  back; a fused flash kernel keeps those on chip. Ours counts only the kernel's HBM
  inputs and outputs, so XLA's figure is larger.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from rpa_bench.roofline.cost import batch_cost
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import ModelSpec

H_Q, H_KV, D = 4, 2, 64
MODEL = ModelSpec("tiny", num_q_heads=H_Q, num_kv_heads=H_KV, head_dim=D, dtype="float32", kv_dtype="float32")


def _attention(q, k, v, *, causal: bool):
    # q: f32[q_len, h_q, d]; k, v: f32[kv_len, h_kv, d]
    k = jnp.repeat(k, H_Q // H_KV, axis=1)
    v = jnp.repeat(v, H_Q // H_KV, axis=1)
    s = jnp.einsum("qhd,khd->hqk", q, k) * D**-0.5
    if causal:
        q_len, kv_len = q.shape[0], k.shape[0]
        visible = jnp.arange(kv_len)[None, :] <= (kv_len - q_len + jnp.arange(q_len))[:, None]
        s = jnp.where(visible[None], s, -jnp.inf)
    return jnp.einsum("hqk,khd->qhd", jax.nn.softmax(s, axis=-1), v)


def _xla_cost(q_len: int, kv_len: int, causal: bool) -> dict:
    q = jnp.zeros((q_len, H_Q, D), jnp.float32)
    kv = jnp.zeros((kv_len, H_KV, D), jnp.float32)
    fn = jax.jit(lambda a, b, c: _attention(a, b, c, causal=causal))
    ca = fn.lower(q, kv, kv).compile().cost_analysis()
    return ca[0] if isinstance(ca, list) else ca


@pytest.mark.parametrize("q_len, kv_len", [(256, 256), (64, 512), (1, 1024)])
@pytest.mark.parametrize("causal", [False, True])
def test_xla_flops_are_our_matmul_flops_plus_softmax(q_len, kv_len, causal):
    xla = _xla_cost(q_len, kv_len, causal)
    cost = batch_cost(RaggedBatch((q_len,), (kv_len,)), MODEL, causal=causal, ckv=kv_len)
    scores = H_Q * q_len * kv_len
    assert cost.flops == cost.flops_noncausal  # dense: every masked block executes
    extra_per_score = (xla["flops"] - cost.flops) / scores
    assert 4 <= extra_per_score <= 7, extra_per_score
    assert xla["transcendentals"] == pytest.approx(scores, rel=0.01)  # one exp per score
    if causal and q_len > 1:
        assert cost.flops_causal_useful < cost.flops  # the useful count is smaller


@pytest.mark.parametrize("q_len, kv_len", [(256, 256), (64, 512), (1, 1024)])
def test_xla_bytes_exceed_the_kernels_hbm_traffic(q_len, kv_len):
    xla = _xla_cost(q_len, kv_len, causal=False)
    cost = batch_cost(RaggedBatch((q_len,), (kv_len,)), MODEL, causal=False)
    # what dense attention must at least move: q, all of K/V (inputs here) and the output
    io = cost.q_read_bytes + cost.out_write_bytes + kv_len * 2 * H_KV * D * 4
    assert xla["bytes accessed"] > io
    assert cost.hbm_bytes <= io + cost.kv_write_bytes  # ours: inputs/outputs only, no scores
    assert xla["bytes accessed"] - io >= 4 * H_Q * q_len * kv_len  # the f32 scores at least once
