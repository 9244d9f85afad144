"""``rpa-bench compare`` on stored (synthetic) runs: exit status, HTML + PNG, marks."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from rpa_bench import cli
from synthetic_run import SyntheticRunSpec, write_synthetic_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_runs")
    return {
        "a": write_synthetic_run(root / "a", SyntheticRunSpec(run_id="a", seed=1)),
        "b": write_synthetic_run(root / "b", SyntheticRunSpec(run_id="b", seed=2)),
        "slow": write_synthetic_run(root / "slow", SyntheticRunSpec(run_id="slow", seed=3, slowdown=1.5)),
    }


def _png_ok(path) -> bool:
    with Image.open(path) as im:
        return im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


def test_same_config_twice_exits_zero_and_writes_html_and_png(runs, capsys):
    assert cli.main(["compare", str(runs["a"]), str(runs["b"]), "--resamples", "300"]) == 0
    out_dir = runs["b"] / "compare-a"
    html = (out_dir / "index.html").read_text()
    assert "No significant regression beyond 1.1x: exit status 0" in html
    assert _png_ok(out_dir / "ratio.png")
    # interpret-mode rows of rpa_v3 are listed, never compared as speed
    assert "interpret mode" in html
    assert "worse: 0" in capsys.readouterr().out


def test_slower_run_is_a_regression_with_exit_one(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert cli.main(["compare", str(runs["a"]), str(runs["slow"]), "--out", str(out), "--resamples", "300"]) == 1
    text = capsys.readouterr().out
    assert "worse: 32" in text
    geomean = float(re.search(r"geometric mean B/A ([0-9.]+)x", text).group(1))
    assert geomean == pytest.approx(1.5, rel=0.03)
    html = (out / "index.html").read_text()
    assert "significant regression(s) beyond 1.1x: exit status 1" in html
    assert _png_ok(out / "ratio.png")


def test_threshold_above_the_slowdown_exits_zero(runs, tmp_path):
    assert cli.main(["compare", str(runs["a"]), str(runs["slow"]), "--threshold", "2.0", "--out",
                     str(tmp_path), "--resamples", "300"]) == 0


def test_kernels_mode_never_compares_interpret_timings(runs, tmp_path, capsys):
    # nothing comparable: the page says why, and the exit status is 2 (no verdict), never 0
    assert cli.main(["compare", str(runs["a"]), "--kernels", "reference", "rpa_v3", "--out", str(tmp_path),
                     "--resamples", "300"]) == 2
    captured = capsys.readouterr()
    assert "not comparable: 32" in captured.out and "none of the 32 points is comparable" in captured.err
    html = (tmp_path / "index.html").read_text()
    assert "no point is comparable" in html
    assert not (tmp_path / "ratio.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "{tmp}"], "give two runs"),
        (["compare", "{tmp}", "{tmp}"], "not a results run folder"),
        (["compare", "{a}", "{b}", "--threshold", "0.9"], "threshold=0.9 must be > 1"),
        (["compare", "{a}", "--kernels", "reference", "nope"], "kernel 'nope' is not in this run"),
        (["compare", "{a}", "{b}", "--kernels", "reference", "rpa_v3"], "--kernels takes exactly one run"),
    ],
    ids=["one_run", "not_a_run", "bad_threshold", "unknown_kernel", "kernels_two_runs"],
)
def test_bad_input_exits_two_with_a_clear_message(runs, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, a=runs["a"], b=runs["b"]) for a in argv]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_runs_sharing_no_point_or_with_a_corrupt_table_exit_2_with_one_line(runs, tmp_path, capsys):
    import shutil

    import pandas as pd

    other = tmp_path / "other"
    shutil.copytree(runs["b"], other)
    df = pd.read_parquet(other / "measurements.parquet")
    df["workload"] = "azure_conv"  # no point in common with A
    df.to_parquet(other / "measurements.parquet")
    assert cli.main(["compare", str(runs["a"]), str(other), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert "share no workload point" in err and "Traceback" not in err and "KeyError" not in err
    (other / "measurements.parquet").write_bytes(b"not a parquet file")
    assert cli.main(["compare", str(runs["a"]), str(other), "--out", str(tmp_path / "o2")]) == 2
    assert "has no readable measurements" in capsys.readouterr().err
