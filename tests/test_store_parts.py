"""The run store: parts, consolidation, manifest contract, crash leftovers."""

from __future__ import annotations

import pytest

from rpa_bench.store.schema import COLUMNS, MANIFEST_KEYS
from rpa_bench.store.run_store import RunStore, read_measurements


def _row(point: str, kernel: str, variant: str, **kw):
    base = dict(run_id="r", workload="paper_decode", point_id=point, kernel=kernel, variant=variant,
                status="ok", samples_us=[1.0, 2.0], warnings=["w"], latency_us=1.5, num_seqs=4,
                context_len=None, interpret=False)
    base.update(kw)
    return base


def _manifest(**kw):
    m = {k: None for k in MANIFEST_KEYS}
    m.update(schema_version=1, run_id="r", status="running")
    m.update(kw)
    return m


def test_parts_consolidate_into_a_table_with_exactly_the_schema_columns(tmp_path):
    store = RunStore(tmp_path / "r")
    store.write_manifest(_manifest())
    store.append([_row("ctx=1", "reference", "excl_prep"), _row("ctx=1", "reference", "incl_prep")])
    store.append([_row("ctx=2", "rpa_v3", "excl_prep", status="incorrect", latency_us=None)])
    df = read_measurements(store.root)
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 3
    assert df["context_len"].isna().all() and str(df["num_seqs"].dtype) == "Int64"
    assert list(df.loc[0, "samples_us"]) == [1.0, 2.0] and list(df.loc[0, "warnings"]) == ["w"]
    assert store.done_keys() == {("paper_decode", "ctx=1", "reference"), ("paper_decode", "ctx=2", "rpa_v3")}


def test_unknown_column_or_status_is_refused_before_writing(tmp_path):
    store = RunStore(tmp_path / "r")
    with pytest.raises(ValueError, match="unknown column"):
        store.append([_row("a", "k", "excl_prep", latency_ms=3.0)])
    with pytest.raises(ValueError, match="status='great'"):
        store.append([_row("a", "k", "excl_prep", status="great")])
    assert not store.parts_dir.exists()


def test_manifest_must_hold_every_key_and_a_known_status(tmp_path):
    store = RunStore(tmp_path / "r")
    bad = _manifest()
    del bad["git"]
    with pytest.raises(ValueError, match="git"):
        store.write_manifest(bad)
    with pytest.raises(ValueError, match="status='done'"):
        store.write_manifest(_manifest(status="done"))
    store.write_manifest(_manifest())
    assert store.update_manifest(status="complete")["status"] == "complete"
    assert set(MANIFEST_KEYS) <= set(store.read_manifest())


def test_a_half_written_part_from_a_killed_run_is_ignored_and_cleaned(tmp_path):
    store = RunStore(tmp_path / "r")
    store.append([_row("ctx=1", "reference", "excl_prep")])
    (store.parts_dir / ".00001-dead.parquet.1234.tmp").write_bytes(b"PAR1 truncated")
    assert store.done_keys() == {("paper_decode", "ctx=1", "reference")}
    assert store.clean_temporaries() == 1
    assert len(read_measurements(store.root)) == 1


def test_every_column_carries_its_description_in_the_parquet_schema_and_the_docs(tmp_path):
    from pathlib import Path

    import pyarrow.parquet as pq

    from rpa_bench.store.schema import COLUMNS
    from rpa_bench.store.run_store import RunStore

    store = RunStore(tmp_path / "r")
    store.append([{"run_id": "r", "workload": "w", "point_id": "p", "kernel": "k", "variant": "excl_prep",
                   "status": "ok"}])
    schema = pq.read_schema(tmp_path / "r" / "measurements.parquet")
    docs = (Path(__file__).parents[1] / "docs" / "columns.md").read_text()
    for name, (_, meaning) in COLUMNS.items():
        assert meaning and schema.field(name).metadata[b"description"].decode() == meaning
        assert f"| `{name}`" in docs and meaning.replace("|", "/") in docs
