"""A check's worker process: a worker that dies or hangs costs one record, never the command."""

from __future__ import annotations

import operator
import os
import time

import pytest

from rpa_bench import cli
from rpa_bench.kernels.isolated import IsolatedCalls, WorkerDied, WorkerTimedOut


def test_a_worker_that_dies_is_reported_with_its_signal_and_the_next_call_gets_a_new_one():
    with IsolatedCalls(timeout_s=60) as calls:
        assert calls.call(operator.add, 2, 3) == 5
        first = calls.call(os.getpid)
        assert calls.call(os.getpid) == first  # reused while it lives
        with pytest.raises(WorkerDied, match=r"its worker process died \(killed by SIGABRT\)"):
            calls.call(os.abort)  # what LLVM does when XLA's CPU compile runs out of memory
        assert calls.call(os.getpid) != first and calls.call(operator.mul, 6, 7) == 42


def test_a_call_past_its_limit_is_killed_and_the_next_runs():
    with IsolatedCalls(timeout_s=1) as calls:
        start = time.monotonic()
        with pytest.raises(WorkerTimedOut, match="did not finish within 1 s; its worker was killed"):
            calls.call(time.sleep, 30)
        assert time.monotonic() - start < 20
        assert calls.call(operator.add, 1, 1) == 2


def test_check_records_a_case_past_its_limit_as_failed_and_goes_on(capsys):
    rc = cli.main(["check", "kernel=rpa_v3", "check.dtypes=[float32]", "check.timeout_s=0.5"])
    out = capsys.readouterr().out
    assert rc == 1
    failed = [line for line in out.splitlines() if line.startswith("rpa_v3") and " failed " in line]
    assert len(failed) == 7 and all("did not finish within 0.5 s; its worker was killed (check.timeout_s)" in line
                                    for line in failed)
    assert "0 ok, 0 incorrect, 7 failed, 0 skipped" in out


def test_bad_isolation_settings_are_one_line(capsys):
    assert cli.main(["check", "kernel=rpa_v3", "check.timeout_s=0"]) == 2
    assert capsys.readouterr().err.strip() == ("rpa-bench check: check.timeout_s=0; allowed: a number of seconds > 0, "
                                               "or null (no limit)")
    assert cli.main(["check", "kernel=rpa_v3", "check.isolate=sometimes"]) == 2
    assert capsys.readouterr().err.strip() == "rpa-bench check: check.isolate='sometimes'; allowed: true, false"
