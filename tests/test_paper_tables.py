"""The paper's Tables 4, 6, 8 (and ablations 10-12) recomputed from their printed latencies."""

from __future__ import annotations

import numpy as np
import pytest

from rpa_bench.roofline.paper import (
    KNOWN_PAPER_INCONSISTENCIES,
    PAPER_TABLES,
    load_paper_table,
    paper_vs_recomputed,
    recompute_table,
)


@pytest.fixture(scope="module")
def table():
    return paper_vs_recomputed()


@pytest.mark.parametrize("name", ["table4", "table6", "table8"])
def test_every_printed_row_reproduced_in_both_columns(table, name):
    rows = table[table.table == name]
    printed = load_paper_table(name)
    assert len(rows) == 2 * len(printed)  # incl_prep and excl_prep for every row
    assert set(rows.variant) == {"incl_prep", "excl_prep"}
    bad = rows[~rows.within_rounding.astype(bool)]
    assert bad.empty, bad[["sweep_value", "variant", "throughput_printed", "throughput", "util_printed_pct", "util_pct"]]


def test_strict_rounding_misses_only_the_documented_rows(table):
    printed = table[table.within_rounding.notna()]
    strict_miss = printed[(printed.throughput_gap > 0) | (printed.util_gap_pct > 0)]
    assert {(r.table, r.sweep_value, r.variant) for r in strict_miss.itertuples()} == KNOWN_PAPER_INCONSISTENCIES
    assert (strict_miss.throughput_gap == 0).all()  # throughput always within half a step
    assert (strict_miss.util_gap_pct < 0.005).all()


@pytest.mark.parametrize(
    "name, sweep, variant, throughput, util",
    [("table4", 32768, "excl_prep", 6332, 85.80), ("table6", 32768, "excl_prep", 853, 73.98),
     ("table8", 32768, "excl_prep", 744, 64.52), ("table8", 32768, "incl_prep", 722, 62.63)],
)
def test_headline_rows(table, name, sweep, variant, throughput, util):
    row = table[(table.table == name) & (table.sweep_value == sweep) & (table.variant == variant)].iloc[0]
    assert row.throughput == pytest.approx(throughput, abs=1)
    assert row.util_pct == pytest.approx(util, abs=0.01)


@pytest.mark.parametrize("name, main", [("table10", "table4"), ("table11", "table6"), ("table12", "table8")])
def test_ablation_tables_recompute_every_latency_column(name, main):
    df = recompute_table(name)
    printed = load_paper_table(name)
    assert len(df) == 5 * len(printed)
    assert df.within_rounding.isna().all()  # the paper prints the ablations' latencies only
    # every latency column: throughput = the row's own bytes (decode) or FLOPs (prefill) / latency
    seconds = df.latency_us * 1e-6
    expected = np.where(df.throughput_unit == "GiB/s", df.hbm_bytes / seconds / 2**30, df.flops / seconds / 1e12)
    np.testing.assert_allclose(df.throughput, expected, rtol=1e-12)
    # an ablation removes work from the kernel, not from the batch: every column of a row has
    # the main table's bytes and FLOPs at that sweep value
    costs = recompute_table(main).groupby("sweep_value")[["hbm_bytes", "flops"]].first()
    per_value = df.groupby("sweep_value")[["hbm_bytes", "flops"]].agg(["min", "max"])
    for col in ("hbm_bytes", "flops"):
        assert (per_value[(col, "min")] == per_value[(col, "max")]).all()
        assert (per_value[(col, "min")] == costs.loc[per_value.index, col]).all()


def test_roofline_bound_never_exceeds_a_measured_latency(table):
    # the full kernel cannot beat the TPU7x roofline (ablations drop work, so may)
    full = table[table.variant.isin(["incl_prep", "excl_prep"])]
    assert (full.latency_us >= full.bound_time_us).all()
    ablated = table[table.variant == "wo_flash_attention"]
    assert (ablated.latency_us < ablated.bound_time_us).any()
    decode = table[table.phase == "decode"]
    assert (decode.bound_by == "memory").all()
    big_prefill = table[(table.phase == "prefill") & (table.sweep_value >= 2048)]
    assert (big_prefill.bound_by == "compute").all()


def test_unknown_table_names_allowed():
    with pytest.raises(ValueError, match="table="):
        recompute_table("table99")
    assert set(PAPER_TABLES) == {"table4", "table6", "table8", "table10", "table11", "table12"}
