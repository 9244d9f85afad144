"""Two kernel entries of the same backend, interleaved and profiled in one capture session,
each get their own device time (their programs are named apart)."""

from __future__ import annotations

import pandas as pd

from rpa_bench import cli


def test_two_entries_of_one_backend_each_keep_their_device_time(tmp_path, capsys):
    rc = cli.main(["run", "experiment=paper_decode", "scale=cpu_smoke", "timing=quick", "run.max_points=1",
                   "run.kernels=[reference,{use: reference, label: b}]", "run.progress=false",
                   f"run.results_dir={tmp_path}", "run.name=ab"])
    assert rc == 0, capsys.readouterr().err
    df = pd.read_parquet(tmp_path / "ab" / "measurements.parquet")
    assert set(df["kernel"]) == {"reference", "b"} and (df["status"] == "ok").all()
    for _, r in df.iterrows():
        assert r["device_samples_us"] is not None and len(r["device_samples_us"]) > 0, (r["kernel"], r["variant"])
        assert not any("not attributed" in w for w in (r["warnings"] if r["warnings"] is not None else []))
        assert r["sample_order"] is not None  # interleaved
