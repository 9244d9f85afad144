"""The one small interface every kernel backend implements.

A backend turns canonical :class:`~rpa_bench.workloads.materialize.KernelInputs` into
its own layout (``prepare``: the paper's "preprocessing", e.g. the K/V merge into the
cache layout), runs the kernel on those (``kernel``: "Excl. Prep"), and converts the
raw result back to the canonical :class:`KernelOutput` (``finish``; never timed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import AttentionSpec, ModelSpec


@dataclasses.dataclass(frozen=True)
class KernelProvenance:
    """Where a kernel's code came from (the one record of it: rows, manifests, compile rows).

    ``package``/``version``: the distribution (tpu-inference, jax, rpa_bench); ``source``:
    the user's ``kernel.source`` string (path[@ref]) or None for the installed release;
    ``git_*``: the checkout's commit, ref and dirty flag; ``kernel_file``/``kernel_sha256``:
    the file that runs; ``mesh``: the device mesh a sharded run wraps the kernel in.
    """

    kernel: str
    package: str | None = None
    version: str | None = None
    source: str | None = None
    source_path: str | None = None
    git_ref: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    module: str | None = None
    kernel_file: str | None = None
    kernel_sha256: str | None = None
    jax: str | None = None
    mesh: str | None = None
    error: str | None = None  # provenance could not be read (recorded, never fatal)

    @property
    def source_label(self) -> str:
        """The row's ``kernel_source``: the source string, else ``package==version``."""
        if self.source or self.source_path:
            return str(self.source or self.source_path)
        if self.package and self.version:
            return f"{self.package}=={self.version}"
        return self.version or self.package or "unknown"

    def as_dict(self) -> dict:
        """For the manifest: the fields that are set."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


FEATURES = ("non_causal", "sliding_window", "soft_cap", "kv_scales", "kv_update", "chunked_prefill",
            "attention_sinks")


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a backend supports; anything else is refused before compiling."""

    dtypes: tuple[str, ...]  # query/output dtypes
    kv_dtypes: tuple[str, ...]
    head_dims: tuple[int, ...] | None  # None: any head_dim
    page_sizes: tuple[int, ...] | None  # None: any page size
    features: frozenset[str]  # subset of FEATURES
    updates_kv_cache: bool  # True: the kernel writes the new K/V into the cache itself
    head_dim_multiple: int | None = None  # e.g. 128: head_dim must be a multiple of it
    page_size_multiple: int | None = None  # e.g. 128: page_size must be a multiple of it
    # True: the cache update may write past a sequence's tokens inside the pages it owns
    # (lane-aligned stores; those slots are unused until the sequence's next step)
    writes_own_page_tail: bool = False


def check_capabilities(
    name: str, caps: Capabilities, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch | None
) -> None:
    """Raise ``ValueError`` naming the unsupported field and the allowed values."""

    def allowed(values) -> str:
        return ", ".join(str(v) for v in values)

    if model.dtype not in caps.dtypes:
        raise ValueError(f"kernel={name}: model.dtype={model.dtype!r} unsupported; allowed: {allowed(caps.dtypes)}")
    if model.kv_dtype not in caps.kv_dtypes:
        raise ValueError(
            f"kernel={name}: model.kv_dtype={model.kv_dtype!r} unsupported; allowed: {allowed(caps.kv_dtypes)}"
        )
    if caps.head_dims is not None and model.head_dim not in caps.head_dims:
        raise ValueError(
            f"kernel={name}: model.head_dim={model.head_dim} unsupported; allowed: {allowed(caps.head_dims)}"
        )
    if caps.head_dim_multiple and model.head_dim % caps.head_dim_multiple:
        raise ValueError(
            f"kernel={name}: model.head_dim={model.head_dim} unsupported; "
            f"allowed: multiples of {caps.head_dim_multiple}"
        )
    missing = (attn.features | ({"attention_sinks"} if model.attention_sinks else set())) - caps.features
    if missing == {"attention_sinks"}:
        raise ValueError(f"kernel={name}: model.attention_sinks=true unsupported; allowed: false "
                         "(the kernel has no attention sinks)")
    if missing:
        raise ValueError(
            f"kernel={name}: attention feature(s) {sorted(missing)} unsupported; "
            f"supported: {sorted(caps.features) or 'none'}"
        )
    if batch is not None:
        if caps.page_size_multiple and batch.page_size % caps.page_size_multiple:
            raise ValueError(f"kernel={name}: page_size={batch.page_size} unsupported; "
                             f"allowed: multiples of {caps.page_size_multiple}")
        if caps.page_sizes is not None and batch.page_size not in caps.page_sizes:
            raise ValueError(
                f"kernel={name}: page_size={batch.page_size} unsupported; allowed: {allowed(caps.page_sizes)}"
            )
        if batch.chunk_prefill_size is not None and "chunked_prefill" not in caps.features:
            raise ValueError(
                f"kernel={name}: chunk_prefill_size={batch.chunk_prefill_size} unsupported; allowed: null"
            )


@dataclasses.dataclass
class KernelOutput:
    """Canonical result. Padding rows of ``output`` are not meaningful."""

    output: Any  # [T_pad, h_q, d] in model.dtype
    k_cache: Any | None = None  # [num_pages, page_size, h_kv, d] after the call (None: not updated)
    v_cache: Any | None = None


@dataclasses.dataclass
class PreparedCall:
    """A backend's call split the way it is timed.

    ``layout(inputs) -> state``            optional, not timed: the canonical inputs in the
                                           backend's resident layout (e.g. the KV cache as a
                                           serving engine keeps it); None: state = inputs
    ``prepare(state) -> args``             preprocessing (Q reshape, K/V merge into cache layout)
    ``kernel(*args) -> raw``               the kernel alone ("Excl. Prep")
    ``finish(raw) -> KernelOutput``        back to canonical layout (not timed)
    ``donates``: the kernel donates its arguments; callers must pass fresh copies.
    """

    prepare: Callable[[Any], tuple]
    kernel: Callable[..., Any]
    finish: Callable[[Any], KernelOutput]
    donates: bool = False
    meta: dict = dataclasses.field(default_factory=dict)  # block sizes, source, revision...
    layout: Callable[[Any], Any] | None = None
    # A sharded call (rpa_bench.parallel): its mesh split (ShardPlan) and devices in mesh
    # order, for per-device timing and accounting. None / (): one device.
    plan: Any = None
    devices: tuple = ()

    def state(self, inputs: Any) -> Any:
        """What ``prepare`` takes: ``layout(inputs)``, or ``inputs`` when there is no layout."""
        return inputs if self.layout is None else self.layout(inputs)


class KernelBackend(Protocol):
    name: str
    capabilities: Capabilities

    def availability(self) -> tuple[bool, str]:
        """(available, reason): e.g. (False, "tpu-inference is not installed")."""

    def validate(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch | None = None) -> None:
        """Raise ValueError naming the field for anything unsupported. Cheap: no compile."""

    def build(self, model: ModelSpec, attn: AttentionSpec, batch: RaggedBatch, *, interpret: bool) -> PreparedCall:
        """Return the jitted pieces for calls with this model/attention and padded shape."""

    def provenance(self) -> KernelProvenance:
        """Where the kernel code came from: package version, source path, git commit, dirty flag."""
