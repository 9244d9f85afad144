"""What a kernel declares so ``rpa-bench tune`` can search its static knobs.

A tunable backend class carries ``tuning``: a :class:`Tuning` naming, per kernel case, its
:class:`Knob` (the values, the kernel options that take them, and the form production reads
them in: environment variables for RPA v3, call arguments otherwise), which kernel case a
tune phase exercises, the knob's search space from the kernel's own rules, the kernel's own
default for a batch, and (where the kernel has one) its VMEM estimate. The tuner reads only
this; it names no kernel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

# the tune phases: decode / prefill / mixed batches, and speculative-decoding verify steps
PHASES = ("decode", "prefill", "mixed", "verify")


@dataclasses.dataclass(frozen=True)
class Knob:
    """One kernel case's static block-size knob (one compile per value)."""

    case: str  # the kernel case it sets ("all": one knob for every case)
    fields: tuple[str, ...]  # names of the values, in order
    option: str | None = None  # one kernel option taking the values as a list ...
    field_options: bool = False  # ... or one kernel option per field (named as the field)
    env: str | None = None  # the environment variable production reads it from, if any
    call: str | None = None  # production's call argument taking it (None: the field names themselves)
    call_type: str | None = None  # the upstream type that call argument takes (e.g. ``BlockSizes``)

    def options(self, values: Sequence[int]) -> dict[str, Any]:
        """The ``kernel.options`` that select these values."""
        if self.field_options:
            return {f: int(v) for f, v in zip(self.fields, values, strict=True)}
        if len(self.fields) == 1:
            return {self.option: int(values[0])}
        return {self.option: [int(v) for v in values]}

    def overrides(self, values: Sequence[int]) -> list[str]:
        """The values as this suite's command-line overrides."""
        out = []
        for name, value in self.options(values).items():
            shown = f"[{','.join(str(v) for v in value)}]" if isinstance(value, list) else str(value)
            out.append(f"kernel.options.{name}={shown}")
        return out

    def env_line(self, values: Sequence[int]) -> str | None:
        """``NAME=v1,v2,...``: what production reads, where it reads an environment variable."""
        return None if self.env is None else f"{self.env}={','.join(str(int(v)) for v in values)}"

    def call_kwargs(self, values: Sequence[int]) -> str:
        """The values as production's call arguments (Python source)."""
        pairs = ", ".join(f"{f}={int(v)}" for f, v in zip(self.fields, values, strict=True))
        if self.call is None:
            return pairs
        if len(self.fields) == 1 and self.call_type is None:
            return f"{self.call}={int(values[0])}"
        if self.call_type is None:
            return f"{self.call}=({', '.join(str(int(v)) for v in values)})"
        return f"{self.call}={self.call_type}({pairs})"


class Tuning:
    """A kernel's tuning declaration (subclass per kernel; see the module doc)."""

    knobs: Mapping[str, Knob] = {}
    phase_case: Mapping[str, str] = {}  # tune phase -> the kernel case (its knob) it exercises
    # the kernel's VMEM estimate was checked against compiled figures (docs/tuning.md): a
    # candidate far over VMEM by the estimate alone is not compiled
    estimate_checked: bool = False

    def knob(self, phase: str) -> Knob:
        return self.knobs[self.phase_case.get(phase, phase)]  # a phase, or a case tuned as one

    def grid(self, case: str, *, page_size: int, max_kv: int, max_q: int,
             generation: str | None = None) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def default(self, backend: Any, model: Any, attn: Any, batch: Any, case: str,
                generation: str | None) -> tuple[int, ...]:
        """The kernel's own choice for ``batch`` on ``generation`` (its heuristic or tuned table)."""
        raise NotImplementedError

    def vmem_estimate(self, backend: Any, model: Any, case: str, values: Sequence[int], *,
                      page_size: int, generation: str | None) -> int | None:
        """The kernel's own VMEM estimate for these values, where it has one."""
        return None

    def kernel_prefix(self, case: str) -> str | None:
        """The name prefix of the case's own Mosaic kernel (its VMEM / schedule figures), if named."""
        return None


def doubling(lo: int, hi: int) -> list[int]:
    """``lo, 2 lo, 4 lo, ...`` up to ``hi`` (at least ``[lo]``)."""
    out = [lo]
    while out[-1] * 2 <= hi:
        out.append(out[-1] * 2)
    return out


def fetch_sizes(step: int, longest: int) -> list[int]:
    """Fetch sizes in multiples of ``step`` doubling up to ``longest`` rounded up, that one included."""
    top = -(-max(longest, step) // step) * step
    out = doubling(step, top)
    if out[-1] < top:
        out.append(top)
    return out


def query_blocks(lo: int, max_q: int) -> list[int]:
    """Query block sizes doubling from ``lo`` to the power of two at or above the longest query."""
    return doubling(lo, max(lo, 1 << max(0, int(max_q) - 1).bit_length()))


class PageBlockTuning(Tuning):
    """The older API's knob (RPA v2, JAX's) and the head_dim-64 kernel's: one
    ``(num_kv_pages_per_block, num_queries_per_block)`` pair for every case, each its own
    kernel option and call argument. Pages per fetch double from 1 up to the longest kv's
    pages; query blocks double from 8 up to the longest query."""

    knobs = {"all": Knob("all", ("num_kv_pages_per_block", "num_queries_per_block"), field_options=True)}
    phase_case = dict.fromkeys(PHASES, "all")

    def grid(self, case, *, page_size, max_kv, max_q, generation=None):
        pages = fetch_sizes(1, -(-max(max_kv, 1) // page_size))
        return [(p, q) for p in pages for q in query_blocks(8, max_q)]

    def default(self, backend, model, attn, batch, case, generation):
        b = backend.block_sizes(model, batch, generation=generation)
        return int(b["num_kv_pages_per_block"]), int(b["num_queries_per_block"])

    def vmem_estimate(self, backend, model, case, values, *, page_size, generation):
        if not hasattr(backend, "vmem_estimate_bytes"):
            return None
        return backend.vmem_estimate_bytes(model, {"num_kv_pages_per_block": values[0],
                                                   "num_queries_per_block": values[1], "page_size": page_size})
