"""Workload settings (the ``workload`` config group) as validated frozen dataclasses.

One class per ``kind``; :func:`workload_spec_from_dict` picks it and refuses unknown or
bad fields, naming the field and the allowed values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from rpa_bench.typed import from_dict
from rpa_bench.workloads.synthetic import RANDOM_DISTRIBUTIONS
from rpa_bench.workloads.traces import PRESETS, ColumnMap, check_trace_settings

TRACE_FORMATS = (*PRESETS, "generic")


def _positive_ints(name: str, values: Any) -> tuple[int, ...]:
    if isinstance(values, (int, str)) or values is None:
        values = [values]
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"workload.{name} must be a list of integers >= 1; got {v!r}")
        out.append(v)
    if not out:
        raise ValueError(f"workload.{name} is empty; give at least one length")
    return tuple(out)


def _check_page_size(page_size: int) -> None:
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"workload.page_size={page_size!r} must be an integer >= 1")


@dataclasses.dataclass(frozen=True)
class PaperDecodeSpec:
    """The paper's decode sweep: ``num_seqs`` decodes at each context length."""

    name: str
    num_seqs: int = 128
    context_lens: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384, 32768)
    page_size: int = 256
    causal: bool = True
    kind: str = "paper_decode"

    def __post_init__(self) -> None:
        object.__setattr__(self, "context_lens", _positive_ints("context_lens", self.context_lens))
        _positive_ints("num_seqs", self.num_seqs)
        _check_page_size(self.page_size)


@dataclasses.dataclass(frozen=True)
class PaperPrefillSpec:
    """The paper's prefill sweep: ``num_seqs`` whole prefills of each length."""

    name: str
    seq_lens: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384, 32768)
    causal: bool = False
    num_seqs: int = 1
    page_size: int = 256
    kind: str = "paper_prefill"

    def __post_init__(self) -> None:
        object.__setattr__(self, "seq_lens", _positive_ints("seq_lens", self.seq_lens))
        _positive_ints("num_seqs", self.num_seqs)
        _check_page_size(self.page_size)


@dataclasses.dataclass(frozen=True)
class SpecVerifySpec:
    """Speculative decoding's verify step: every sequence brings ``q`` tokens (the draft plus
    one) over a long context, the mixed kernel's shape. One point per (num_seqs, q, context)."""

    name: str
    num_seqs: tuple[int, ...] = (32, 64, 128)
    query_lens: tuple[int, ...] = (2, 4, 8)  # tokens per sequence to verify
    context_lens: tuple[int, ...] = (2048, 8192, 32768)  # cached tokens before the verified ones
    page_size: int = 256
    causal: bool = True
    kind: str = "spec_verify"

    def __post_init__(self) -> None:
        for field in ("num_seqs", "query_lens", "context_lens"):
            object.__setattr__(self, field, _positive_ints(field, getattr(self, field)))
        if min(self.query_lens) < 2:
            raise ValueError(f"workload.query_lens={list(self.query_lens)}: a verify step has >= 2 tokens per "
                             "sequence (1 is plain decode: use paper_decode)")
        _check_page_size(self.page_size)


@dataclasses.dataclass(frozen=True)
class SlidingWindowSpec:
    """One batch at a fixed context, swept over the sliding window (full context down to
    small windows): does the kernel's time fall with the window as the bytes and FLOPs do?"""

    name: str
    phase: str = "decode"  # decode: num_seqs x 1 token; prefill: num_seqs x context_len new tokens
    num_seqs: int = 64
    context_len: int = 8192
    windows: tuple[int, ...] = (8192, 4096, 2048, 1024, 512, 256, 128)
    page_size: int = 256
    causal: bool = True
    kind: str = "sliding_window"

    def __post_init__(self) -> None:
        if self.phase not in ("decode", "prefill"):
            raise ValueError(f"workload.phase={self.phase!r}; allowed: decode, prefill")
        if not self.causal:
            raise ValueError("workload.causal=false: a sliding window needs the causal mask")
        object.__setattr__(self, "windows", _positive_ints("windows", self.windows))
        _positive_ints("num_seqs", self.num_seqs)
        _positive_ints("context_len", self.context_len)
        _check_page_size(self.page_size)


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Seeded random ragged batches (see :func:`.synthetic.random_batch`)."""

    name: str
    distribution: str = "uniform"
    num_batches: int = 4
    num_seqs: int = 16
    max_kv_len: int = 4096
    max_q_len: int = 512
    decode_fraction: float = 0.75
    zipf_a: float = 1.2
    max_num_batched_tokens: int | None = None  # token budget and padding (None: exact sizes)
    page_size: int = 256
    causal: bool = True
    kind: str = "synthetic"

    def __post_init__(self) -> None:
        if self.distribution not in RANDOM_DISTRIBUTIONS:
            raise ValueError(
                f"workload.distribution={self.distribution!r}; allowed: {', '.join(RANDOM_DISTRIBUTIONS)}"
            )
        for field in ("num_batches", "num_seqs", "max_kv_len", "max_q_len"):
            _positive_ints(field, getattr(self, field))
        if not 0.0 <= self.decode_fraction <= 1.0:
            raise ValueError(f"workload.decode_fraction={self.decode_fraction} must be in [0, 1]")
        if not self.zipf_a > 0:
            raise ValueError(f"workload.zipf_a={self.zipf_a} must be > 0")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < self.num_seqs:
            raise ValueError(
                f"workload.max_num_batched_tokens={self.max_num_batched_tokens} must be >= num_seqs={self.num_seqs}"
            )
        _check_page_size(self.page_size)


@dataclasses.dataclass(frozen=True)
class BatchSpecSpec:
    """Batches written as batch-spec strings (see :mod:`.spec`); one point per string."""

    name: str
    spec: tuple[str, ...] = ("128q1s8k",)
    page_size: int = 256
    chunk_prefill_size: int | None = None
    causal: bool = True
    kind: str = "batch_spec"

    def __post_init__(self) -> None:
        specs = (self.spec,) if isinstance(self.spec, str) else tuple(self.spec)
        if not specs or not all(isinstance(s, str) and s for s in specs):
            raise ValueError(f"workload.spec={self.spec!r} must be a batch-spec string or a list of them")
        object.__setattr__(self, "spec", specs)
        _check_page_size(self.page_size)


@dataclasses.dataclass(frozen=True)
class TraceSpec:
    """A serving trace, simulated with the scheduler settings, sampled into points."""

    name: str
    path: str
    format: str = "generic"  # azure | mooncake | lengths | generic
    file_type: str | None = None  # csv | jsonl; None: from the file suffix
    columns: ColumnMap | None = None  # generic only
    arrival_rate_per_s: float | None = None  # traces without timestamps: Poisson arrivals
    on_bad_row: str = "error"
    max_requests: int | None = None
    causal: bool = True
    kind: str = "trace"

    def __post_init__(self) -> None:
        if self.format not in TRACE_FORMATS:
            raise ValueError(f"workload.format={self.format!r}; allowed: {', '.join(TRACE_FORMATS)}")
        if isinstance(self.columns, Mapping):
            names = [f.name for f in dataclasses.fields(ColumnMap)]
            bad = sorted(set(self.columns) - set(names))
            if bad:
                raise ValueError(f"workload.columns: unknown field(s) {bad}; allowed: {', '.join(names)}")
            if "prompt_len" not in self.columns or "output_len" not in self.columns:
                raise ValueError("workload.columns needs prompt_len and output_len (column names)")
            object.__setattr__(self, "columns", ColumnMap(**self.columns))
        if self.format == "generic" and self.columns is None:
            raise ValueError("workload.format='generic' needs workload.columns (prompt_len, output_len, ...)")
        if self.format != "generic" and self.columns is not None:
            raise ValueError(f"workload.columns is only for format='generic' (format={self.format!r})")
        check_trace_settings(on_bad_row=self.on_bad_row, max_requests=self.max_requests, file_type=self.file_type,
                             arrival=self.column_map.arrival, arrival_rate_per_s=self.arrival_rate_per_s,
                             where="workload.")

    @property
    def column_map(self) -> ColumnMap:
        return self.columns if self.columns is not None else PRESETS[self.format]


WorkloadSpec = (PaperDecodeSpec | PaperPrefillSpec | SyntheticSpec | BatchSpecSpec | TraceSpec | SpecVerifySpec
                | SlidingWindowSpec)
SPEC_BY_KIND: dict[str, type] = {
    "paper_decode": PaperDecodeSpec,
    "paper_prefill": PaperPrefillSpec,
    "spec_verify": SpecVerifySpec,
    "sliding_window": SlidingWindowSpec,
    "synthetic": SyntheticSpec,
    "batch_spec": BatchSpecSpec,
    "trace": TraceSpec,
}


def workload_spec_from_dict(d: Mapping[str, Any]) -> WorkloadSpec:
    """The workload config (a plain mapping) as its validated spec class."""
    d = dict(d)
    kind = d.get("kind")
    if kind not in SPEC_BY_KIND:
        raise ValueError(f"workload.kind={kind!r}; allowed: {', '.join(SPEC_BY_KIND)}")
    cls = SPEC_BY_KIND[kind]
    if "name" not in d and not (set(d) - {f.name for f in dataclasses.fields(cls)}):
        raise ValueError(f"workload (kind={kind}): field 'name' is required")
    for key in ("context_lens", "seq_lens", "spec", "num_seqs", "query_lens", "windows"):
        if isinstance(d.get(key), list):
            d[key] = tuple(d[key])
    return from_dict(cls, d, section="workload")
