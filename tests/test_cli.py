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
