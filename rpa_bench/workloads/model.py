"""Attention shape of a model (per device shard): heads, head_dim and dtypes."""

from __future__ import annotations

import dataclasses

from rpa_bench.typed import from_dict

SUPPORTED_DTYPES = ("float32", "bfloat16")
SUPPORTED_KV_DTYPES = ("float32", "bfloat16", "float8_e4m3fn", "float8_e5m2", "int8")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The attention part of a model as one device sees it.

    num_q_heads / num_kv_heads / head_dim are per device (after any tensor
    parallel split); ``dtype`` is the query/output dtype, ``kv_dtype`` the cache's.
    """

    name: str
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str = "bfloat16"
    kv_dtype: str = "bfloat16"
    # gpt-oss-style learned attention sinks: one logit per query head joins each head's softmax
    # denominator (no value); the suite draws them per seed, as it draws the queries
    attention_sinks: bool = False
    # Whole-model figures, used only by the scheduler's step-time model (per device):
    num_layers: int = 1  # attention layers per forward step
    model_weight_bytes: int = 0  # weights read once per step (0: attention only)
    model_flops_per_token: int = 0  # non-attention FLOPs per token (~2 x parameters)

    def __post_init__(self) -> None:
        for field in ("model_weight_bytes", "model_flops_per_token"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"model.{field}={value!r} must be an integer >= 0")
        for field in ("num_q_heads", "num_kv_heads", "head_dim", "num_layers"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{field}={value!r} must be a positive integer")
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(
                f"model.num_q_heads={self.num_q_heads} must be a multiple of "
                f"model.num_kv_heads={self.num_kv_heads}"
            )
        if not isinstance(self.attention_sinks, bool):
            raise ValueError(f"model.attention_sinks={self.attention_sinks!r}; allowed: true, false")
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r}; allowed: {', '.join(SUPPORTED_DTYPES)}")
        if self.kv_dtype not in SUPPORTED_KV_DTYPES:
            raise ValueError(
                f"model.kv_dtype={self.kv_dtype!r}; allowed: {', '.join(SUPPORTED_KV_DTYPES)}"
            )

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """Build from a plain mapping (e.g. the ``model`` config group); unknown keys are refused."""
        return from_dict(cls, d, section="model")

    def tensor_parallel_shard(self, ways: int) -> "ModelSpec":
        """One device's share under ``ways``-way tensor parallelism: heads, weights and FLOPs
        per token divided by ``ways`` (the KV heads must divide)."""
        if ways == 1:
            return self
        if ways < 1 or self.num_kv_heads % ways:
            raise ValueError(f"tensor parallel {ways} must divide model.num_kv_heads={self.num_kv_heads}")
        return dataclasses.replace(self, num_q_heads=self.num_q_heads // ways, num_kv_heads=self.num_kv_heads // ways,
                                   model_weight_bytes=self.model_weight_bytes // ways,
                                   model_flops_per_token=self.model_flops_per_token // ways)

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.dtype == "float32" else 2

    @property
    def kv_dtype_bytes(self) -> int:
        return {"float32": 4, "bfloat16": 2}.get(self.kv_dtype, 1)


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """Per-call attention knobs shared by every kernel backend."""

    causal: bool = True
    sm_scale: float | None = None  # None: 1/sqrt(head_dim)
    sliding_window: int | None = None
    soft_cap: float | None = None
    k_scale: float | None = None  # dequantisation scales for 8-bit KV caches
    v_scale: float | None = None

    def __post_init__(self) -> None:
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"attention.sliding_window={self.sliding_window} must be >= 1 or null")
        if self.soft_cap is not None and self.soft_cap <= 0:
            raise ValueError(f"attention.soft_cap={self.soft_cap} must be > 0 or null")

    def scale(self, head_dim: int) -> float:
        return self.sm_scale if self.sm_scale is not None else head_dim**-0.5

    @property
    def features(self) -> frozenset[str]:
        """Names of the optional features this spec uses (for capability checks)."""
        out = set()
        if not self.causal:
            out.add("non_causal")
        if self.sliding_window is not None:
            out.add("sliding_window")
        if self.soft_cap is not None:
            out.add("soft_cap")
        if self.k_scale is not None or self.v_scale is not None:
            out.add("kv_scales")
        return frozenset(out)
