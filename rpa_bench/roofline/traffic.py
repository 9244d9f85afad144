"""From the bytes a kernel moves to the ceiling they put on its MBU (no kernel known here).

The roofline divides by the analytic minimum of HBM bytes (every KV byte read once, the new
tokens written once). A kernel that moves ``moved`` bytes for a call whose minimum is
``analytic`` needs at least ``moved / bandwidth`` seconds, so its MBU (analytic bytes over
time, against the same bandwidth) cannot exceed ``analytic / moved``: the **traffic
ceiling**, whatever its speed. ``refetch_factor = moved / analytic`` says how many times over
the minimum it reads and writes.
"""

from __future__ import annotations

import dataclasses

from rpa_bench.roofline.cost import roofline_terms_s


@dataclasses.dataclass(frozen=True)
class TrafficCeiling:
    analytic_bytes: int
    moved_bytes: int

    @property
    def refetch_factor(self) -> float:
        return self.moved_bytes / self.analytic_bytes if self.analytic_bytes else float("nan")

    @property
    def ceiling_pct(self) -> float:
        """The MBU (percent, same bandwidth) the kernel cannot exceed with these block sizes."""
        return 100.0 * self.analytic_bytes / self.moved_bytes if self.moved_bytes else float("nan")


def modelled_time_s(moved_bytes: int, flops: int, device, *, steps: int = 0, step_s: float = 0.0,
                    dtype: str = "bfloat16") -> float:
    """A TPU-free ranking time: ``max(moved bytes / bandwidth, FLOPs / peak) + steps x step_s``
    (the last term: a per-(query block, KV block) iteration cost). For ranking candidates, not
    a prediction of speed."""
    mem, comp = roofline_terms_s(moved_bytes, flops, device, dtype=dtype)
    return max(mem, comp) + steps * step_s
