"""Modelled time of one serving step: a roofline lower bound plus a fixed overhead.

A step runs the whole model once over the batch. Its HBM traffic is the model's weights
(read once) plus, in every attention layer, the K/V of every context token (read; the
new tokens' K/V written) and the queries and outputs; its FLOPs are the linear layers'
per token plus causal attention (QK^T and PV over the visible pairs). Both come from
per-step sums over the batch, so a stretch of steps is costed with array arithmetic::

    hbm_bytes = model_weight_bytes + q_bytes_per_token * sum(q_len) + kv_bytes_per_token * sum(kv_len)
    flops     = model_flops_per_token * sum(q_len) + attn_flops_per_pair * pairs
    pairs     = sum(q_len * kv_len - q_len * (q_len - 1) / 2)        # causal query-key pairs
    step_time_s = max(hbm_bytes / hbm_bw_bytes_per_s, flops / peak_flops_per_s) + overhead_s

(evaluated as fixed per-step seconds plus per-KV-token and per-pair seconds, in one
fixed floating-point order: see :meth:`StepCostModel.step_time_s`).

The attention byte count is the paper's decode count per layer (``kv_len`` includes the
new token, so ``(c + 1) * 2 * h_kv * d`` for one decode with context ``c``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rpa_bench.workloads.model import ModelSpec


@dataclasses.dataclass(frozen=True)
class StepCostModel:
    hbm_bw_bytes_per_s: float
    peak_flops_per_s: float
    overhead_s: float
    model_weight_bytes: float = 0.0
    model_flops_per_token: float = 0.0
    kv_bytes_per_token: float = 0.0  # all layers: 2 * h_kv * head_dim * kv bytes * num_layers
    q_bytes_per_token: float = 0.0  # all layers: 2 * h_q * head_dim * bytes (read Q, write O)
    attn_flops_per_pair: float = 0.0  # all layers: 4 * h_q * head_dim

    def __post_init__(self) -> None:
        for field in ("hbm_bw_bytes_per_s", "peak_flops_per_s"):
            if not getattr(self, field) > 0:
                raise ValueError(f"step_time.{field}={getattr(self, field)!r} must be > 0")
        if not self.overhead_s >= 0:
            raise ValueError(f"step_time.overhead_s={self.overhead_s!r} must be >= 0")
        object.__setattr__(self, "_kvs", self.kv_bytes_per_token / self.hbm_bw_bytes_per_s)
        object.__setattr__(self, "_spp", self.attn_flops_per_pair / self.peak_flops_per_s)
        object.__setattr__(self, "_fts", self.model_flops_per_token / self.peak_flops_per_s)

    def hbm_bytes(self, num_tokens, sum_kv):
        return self.model_weight_bytes + self.q_bytes_per_token * num_tokens + self.kv_bytes_per_token * sum_kv

    def flops(self, num_tokens, pairs):
        return self.model_flops_per_token * num_tokens + self.attn_flops_per_pair * pairs

    # Time coefficients (set once in __post_init__: they are read on every simulated step).
    # Every step time is computed in exactly this order, so a stretch costed with arrays
    # equals the same steps costed one by one, to the bit.
    @property
    def kv_s_per_token(self) -> float:
        return self._kvs

    @property
    def s_per_pair(self) -> float:
        return self._spp

    def fixed_mem_s(self, num_tokens):
        return (self.model_weight_bytes + self.q_bytes_per_token * num_tokens) / self.hbm_bw_bytes_per_s

    def token_compute_s(self, num_tokens):
        return self._fts * num_tokens

    def step_time_s(self, num_tokens, sum_kv, pairs):
        """Modelled seconds of steps; scalars or arrays (same arithmetic either way)."""
        mem_s = self.fixed_mem_s(num_tokens) + self.kv_s_per_token * sum_kv
        compute_s = self.token_compute_s(num_tokens) + self.s_per_pair * pairs
        return np.maximum(mem_s, compute_s) + self.overhead_s

    def scalar_step_time_s(self, num_tokens: int, sum_kv: int, pairs: int) -> float:
        """:meth:`step_time_s` of one step as a Python float (bit-identical, faster)."""
        mem_s = (self.model_weight_bytes + self.q_bytes_per_token * num_tokens) / self.hbm_bw_bytes_per_s \
            + self._kvs * sum_kv
        compute_s = self._fts * num_tokens + self._spp * pairs
        return (mem_s if mem_s >= compute_s else compute_s) + self.overhead_s

    def decode_stretch_s(self, num_decodes: int, sum_kv0: int, steps: np.ndarray, out: np.ndarray) -> np.ndarray:
        """:meth:`step_time_s` of ``len(out)`` decode-only steps with fixed membership, in place.

        Step ``j`` has ``num_decodes`` tokens and ``sum_kv = pairs = sum_kv0 + num_decodes * j``
        (``steps``: ``0..len(out)-1`` as float64; exact, integers < 2**53). Bit-identical to the
        per-step formula; skips the compute side where the whole stretch is clearly memory-bound.
        """
        k = len(out)
        np.multiply(steps[:k], num_decodes, out=out)
        out += sum_kv0
        fixed_s = (self.model_weight_bytes + self.q_bytes_per_token * num_decodes) / self.hbm_bw_bytes_per_s
        tok_s, kvs, spp = self._fts * num_decodes, self._kvs, self._spp
        last = sum_kv0 + num_decodes * (k - 1)
        if not (fixed_s + kvs * sum_kv0 > (tok_s + spp * sum_kv0) * (1 + 1e-9)
                and fixed_s + kvs * last > (tok_s + spp * last) * (1 + 1e-9)):
            comp = out * spp  # not clearly memory-bound throughout: take the max
            comp += tok_s
            out *= kvs
            out += fixed_s
            np.maximum(out, comp, out=out)
        else:
            out *= kvs
            out += fixed_s
        out += self.overhead_s
        return out


def causal_pairs(q_len: int, kv_len: int) -> int:
    """Query-key pairs a causal sequence computes: query i sees kv_len - q_len + i + 1 keys."""
    return q_len * kv_len - q_len * (q_len - 1) // 2


def step_time_model(
    hbm_bw_bytes_per_s: float, peak_flops_per_s: float, overhead_s: float, model: ModelSpec
) -> StepCostModel:
    """The cost model for ``model`` on a device given by its two peaks (plain numbers)."""
    layers = model.num_layers
    return StepCostModel(
        hbm_bw_bytes_per_s=float(hbm_bw_bytes_per_s),
        peak_flops_per_s=float(peak_flops_per_s),
        overhead_s=float(overhead_s),
        model_weight_bytes=float(model.model_weight_bytes),
        model_flops_per_token=float(model.model_flops_per_token),
        kv_bytes_per_token=float(layers * 2 * model.num_kv_heads * model.head_dim * model.kv_dtype_bytes),
        q_bytes_per_token=float(layers * 2 * model.num_q_heads * model.head_dim * model.dtype_bytes),
        attn_flops_per_pair=float(layers * 4 * model.num_q_heads * model.head_dim),
    )
