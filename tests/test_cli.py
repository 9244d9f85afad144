import pytest

from rpa_bench import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_names_allowed(capsys):
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "frobnicate" in err and "check" in err


@pytest.mark.parametrize("command", ["run", "check", "lower", "compile", "simulate", "calibrate"])
def test_command_help_reads_like_a_tools_help(command, capsys):
    from rpa_bench import cli as _cli

    assert _cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rpa-bench {command}") and "powered by Hydra" not in out
    assert "config groups (group=option):" in out and "experiment " in out and "options: " in out
    assert len(out.splitlines()) < 80


def test_run_and_check_print_json_for_machines(tmp_path, capsys):
    import json

    from rpa_bench import cli as _cli

    rc = _cli.main(["run", "experiment=paper_decode", "scale=cpu_smoke", "timing=quick", "run.kernels=[reference]",
                    "run.max_points=1", "run.progress=false", f"run.results_dir={tmp_path}", "run.name=j", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["status_counts"] == {"ok": 2} and len(out["timed"]) == 2 and out["overhead_ratio"] > 0


@pytest.mark.slow  # every check case (~40 s)
def test_check_prints_json_records(capsys):
    import json

    from rpa_bench import cli as _cli

    rc = _cli.main(["check", "kernel=reference", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["counts"]["ok"] > 0 and all(r["kernel"] == "reference" for r in out["records"])


def test_the_interpret_caveat_is_printed_only_for_interpret_timings():
    import pandas as pd

    from rpa_bench.commands.run import interpret_note

    checked_only = pd.DataFrame({"interpret": [True, False], "latency_us": [None, 12.0]})
    assert "interpret" not in interpret_note(checked_only)
    timed = pd.DataFrame({"interpret": [True], "latency_us": [5.0]})
    assert "[interpret] are not kernel performance" in interpret_note(timed)
