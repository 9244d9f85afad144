"""The paper's tables (arXiv:2604.15464, CC BY 4.0), recomputed from their printed latencies.

Tables 4 (decode), 6 (prefill, no causal mask) and 8 (prefill, causal) print a latency, a
throughput and a utilisation per row for "Incl. Prep" and "Excl. Prep"; Tables 10-12
print latencies of ablations only. :func:`paper_vs_recomputed` recomputes every printed
value from its latency with :func:`~rpa_bench.roofline.cost.batch_cost` and
:func:`~rpa_bench.roofline.metrics.compute_metrics` (``paper`` convention, TPU7x chip) and
brackets it by recomputing at latency +- 0.5 us (the latency is printed to 1 us).
"""

from __future__ import annotations

import dataclasses
import functools
from importlib import resources

import pandas as pd

from rpa_bench.roofline.cost import PAPER_CKV, batch_cost
from rpa_bench.roofline.metrics import compute_metrics
from rpa_bench.roofline.specs import DeviceSpec, get_device_spec
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import ModelSpec

PAPER_MODEL = ModelSpec("llama3_8b", num_q_heads=32, num_kv_heads=8, head_dim=128)
PAPER_PAGE_SIZE = 256
PAPER_DECODE_SEQS = 128
LATENCY_ROUNDING_US = 0.5
VARIANTS = ("incl_prep", "excl_prep", "wo_kv_update", "wo_flash_attention", "wo_dma")


@dataclasses.dataclass(frozen=True)
class PaperTable:
    """One of the paper's tables: its file and the workload behind each row."""

    name: str  # "table4"
    file: str
    phase: str  # decode | prefill
    causal: bool
    sweep_column: str  # context_len (decode: c, kv_len = c + 1) | seq_len
    throughput_column: str | None  # printed prefix: throughput_gbs / tflops (None: ablation)
    util_column: str | None  # mbu_pct / mfu_pct

    def batch(self, sweep_value: int) -> RaggedBatch:
        """The row's batch: 128 decodes of context c, or one fresh prefill of s tokens."""
        if self.phase == "decode":
            n = PAPER_DECODE_SEQS
            return RaggedBatch((1,) * n, (sweep_value + 1,) * n, page_size=PAPER_PAGE_SIZE)
        return RaggedBatch((sweep_value,), (sweep_value,), page_size=PAPER_PAGE_SIZE)


PAPER_TABLES = {
    t.name: t
    for t in (
        PaperTable("table4", "table4_decode_d128.csv", "decode", True, "context_len", "throughput_gbs", "mbu_pct"),
        PaperTable("table6", "table6_prefill_noncausal_d128.csv", "prefill", False, "seq_len", "tflops", "mfu_pct"),
        PaperTable("table8", "table8_prefill_causal_d128.csv", "prefill", True, "seq_len", "tflops", "mfu_pct"),
        PaperTable("table10", "table10_ablation_decode_d128.csv", "decode", True, "context_len", None, None),
        PaperTable("table11", "table11_ablation_prefill_noncausal_d128.csv", "prefill", False, "seq_len", None, None),
        PaperTable("table12", "table12_ablation_prefill_causal_d128.csv", "prefill", True, "seq_len", None, None),
    )
}
# Printed values that do not follow from their row's printed latency (both Incl. Prep, s=32768):
# Table 6: MFU 72.68 lies 0.00003 points below the bracket [72.6850, 72.6885] from
#   20982 +- 0.5 us (a boundary case: 72.685 truncated rather than rounded).
# Table 8: MFU 62.64 lies 0.002 points above the bracket [62.6279, 62.6329] from
#   12556 +- 0.5 us; it needs ~12554 us, and sits at the edge of what the row's own
#   722 TFLOP/s allows (722.5 / 1153.5 = 62.636).
# Both lie within one printed step (0.01 points), the tolerance ``within_rounding`` uses;
# every printed throughput and every other MFU / MBU is within half a step.
KNOWN_PAPER_INCONSISTENCIES = frozenset({("table6", 32768, "incl_prep"), ("table8", 32768, "incl_prep")})
# Printed precision of each column: the value is the rounding of the truth to this step.
PRINTED_STEP = {"throughput_gbs": 1.0, "tflops": 1.0, "mbu_pct": 0.01, "mfu_pct": 0.01}


@functools.cache
def load_paper_table(name: str) -> pd.DataFrame:
    """The table as printed (one row per sweep value)."""
    if name not in PAPER_TABLES:
        raise ValueError(f"table={name!r}; allowed: {', '.join(PAPER_TABLES)}")
    path = resources.files("rpa_bench").joinpath("data", "paper", PAPER_TABLES[name].file)
    with path.open() as f:
        return pd.read_csv(f)


def _gap(printed: float, lo: float, hi: float, half_step: float) -> float:
    """How far ``printed`` lies outside ``[lo - half_step, hi + half_step]`` (0: inside)."""
    return max(0.0, (lo - half_step) - printed, printed - (hi + half_step))


def _metric_pair(table: PaperTable, cost, latency_us: float, device: DeviceSpec) -> tuple[float, float]:
    m = compute_metrics(cost, latency_us, device, convention="paper", phase=table.phase)
    if table.phase == "decode":
        return m.throughput_gib_per_s, m.mbu_pct
    return m.tflops, m.mfu_pct


def recompute_table(name: str, *, device: DeviceSpec | None = None) -> pd.DataFrame:
    """Long format: one row per (sweep value, latency column) with printed vs recomputed.

    Columns: table, phase, causal, sweep_column, sweep_value, variant, latency_us,
    hbm_bytes, flops, throughput_unit, throughput_printed, throughput, throughput_lo,
    throughput_hi, util_name, util_printed_pct, util_pct, util_lo_pct, util_hi_pct,
    throughput_gap, util_gap_pct, within_rounding, bound_time_us, bound_by,
    roofline_efficiency_pct. ``within_rounding``: each printed value lies between its
    recomputations at latency -+ 0.5 us, widened by the printed precision (one step:
    1 GiB/s or TFLOP/s, 0.01 points). The gaps say how far a printed value lies outside
    the strict bracket (widened by half a step only); nonzero exactly for
    :data:`KNOWN_PAPER_INCONSISTENCIES`. None for ablations (nothing printed).
    """
    table = PAPER_TABLES[name] if name in PAPER_TABLES else None
    if table is None:
        raise ValueError(f"table={name!r}; allowed: {', '.join(PAPER_TABLES)}")
    device = device or get_device_spec("tpu7x")
    df = load_paper_table(name)
    rows = []
    for _, row in df.iterrows():
        sweep = int(row[table.sweep_column])
        cost = batch_cost(table.batch(sweep), PAPER_MODEL, causal=table.causal, ckv=PAPER_CKV)
        for variant in VARIANTS:
            col = f"latency_us_{variant}"
            if col not in df.columns:
                continue
            lat = float(row[col])
            metrics = compute_metrics(cost, lat, device, convention="paper", phase=table.phase)
            thr, util = _metric_pair(table, cost, lat, device)
            # a longer latency gives a smaller value: (lat + 0.5) bounds from below
            thr_lo, util_lo = _metric_pair(table, cost, lat + LATENCY_ROUNDING_US, device)
            thr_hi, util_hi = _metric_pair(table, cost, lat - LATENCY_ROUNDING_US, device)
            printed_thr = printed_util = thr_gap = util_gap = within = None
            if table.throughput_column and f"{table.throughput_column}_{variant}" in df.columns:
                printed_thr = float(row[f"{table.throughput_column}_{variant}"])
                printed_util = float(row[f"{table.util_column}_{variant}"])
                thr_step, util_step = PRINTED_STEP[table.throughput_column], PRINTED_STEP[table.util_column]
                thr_gap = _gap(printed_thr, thr_lo, thr_hi, thr_step / 2)
                util_gap = _gap(printed_util, util_lo, util_hi, util_step / 2)
                within = bool(_gap(printed_thr, thr_lo, thr_hi, thr_step) == 0
                              and _gap(printed_util, util_lo, util_hi, util_step) == 0)
            rows.append(dict(
                table=name, phase=table.phase, causal=table.causal, sweep_column=table.sweep_column,
                sweep_value=sweep, variant=variant, latency_us=lat, hbm_bytes=cost.hbm_bytes, flops=cost.flops,
                throughput_unit="GiB/s" if table.phase == "decode" else "TFLOP/s",
                throughput_printed=printed_thr, throughput=thr, throughput_lo=thr_lo, throughput_hi=thr_hi,
                util_name="mbu_pct" if table.phase == "decode" else "mfu_pct",
                util_printed_pct=printed_util, util_pct=util, util_lo_pct=util_lo, util_hi_pct=util_hi,
                throughput_gap=thr_gap, util_gap_pct=util_gap,
                within_rounding=within,
                bound_time_us=metrics.bound_time_us, bound_by=metrics.bound_by,
                roofline_efficiency_pct=metrics.roofline_efficiency_pct,
            ))
    return pd.DataFrame(rows)


def paper_vs_recomputed(tables: tuple[str, ...] = tuple(PAPER_TABLES), *,
                        device: DeviceSpec | None = None) -> pd.DataFrame:
    """Every table's printed vs recomputed values, concatenated (see :func:`recompute_table`)."""
    return pd.concat([recompute_table(t, device=device) for t in tables], ignore_index=True)
