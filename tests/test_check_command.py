"""``rpa-bench check``: kernel selection, table, exit codes, nothing written to disk."""

from __future__ import annotations

import dataclasses

import pytest

from rpa_bench.commands import check as check_cmd
from rpa_bench.kernels import cases as cases_mod
from rpa_bench.kernels.reference import ReferenceBackend
from rpa_bench.kernels.registry import BACKENDS


def only(*wanted):
    """Patch for check_cases: keep only the (name, dtype) cases named."""
    real = cases_mod.check_cases

    def pick(model, **kw):
        return tuple(c for c in real(model, **kw) if (c.name, c.dtype_label) in wanted)

    return pick


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_explicit_kernel_checks_only_it_and_writes_nothing(in_tmp, monkeypatch, capsys):
    monkeypatch.setattr(check_cmd, "check_cases", only(("decode", "float32")))
    assert check_cmd.main(["kernel=reference"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(BACKENDS)]
    assert len(rows) == 1 and rows[0].split()[:3] == ["reference", "decode", "float32"] and " ok" in rows[0]
    assert "heads 4:1" in out and "head_dim=128" in out  # llama3_8b shrunk, ratio kept
    assert list(in_tmp.iterdir()) == []


def test_no_kernel_override_selects_every_backend(in_tmp, monkeypatch):
    seen = {}

    def fake_run(kernels, cases, *, platform, on_record=None, isolated=None):
        seen["names"] = [kc.name for kc, _ in kernels]
        seen["isolated"] = isolated is not None
        seen["interpret"] = {kc.name: check_cmd.resolve_interpret(kc, platform) for kc, _ in kernels}
        return []

    monkeypatch.setattr(check_cmd, "run_checks", fake_run)
    assert check_cmd.main([]) == 0
    assert seen["names"] == list(BACKENDS) and seen["isolated"]  # interpret-mode cases in a worker by default
    assert seen["interpret"]["reference"] is False
    assert all(seen["interpret"][k] for k in ("rpa_v3", "rpa_v2", "jax_rpa"))  # CPU: interpret mode


def test_unsupported_explicit_request_exits_2_before_any_case(in_tmp, monkeypatch, capsys):
    def no_cases(*a, **k):
        raise AssertionError("cases built despite an unsupported request")

    monkeypatch.setattr(check_cmd, "check_cases", no_cases)
    assert check_cmd.main(["kernel=jax_rpa", "attention.causal=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "non_causal" in err and "jax_rpa" in err


def test_bad_model_field_exits_2_naming_it(in_tmp, capsys):
    assert check_cmd.main(["kernel=reference", "model.num_kv_heads=3"]) == 2
    assert "model.num_q_heads" in capsys.readouterr().err


def test_wrong_kernel_exits_1(in_tmp, monkeypatch, capsys):
    build = ReferenceBackend.build

    def perturbed(self, model, attn, batch, *, interpret=False):
        call = build(self, model, attn, batch, interpret=interpret)
        finish = call.finish
        return dataclasses.replace(
            call, finish=lambda raw: dataclasses.replace(finish(raw), output=finish(raw).output * 1.5)
        )

    monkeypatch.setattr(ReferenceBackend, "build", perturbed)
    monkeypatch.setattr(check_cmd, "check_cases", only(("mixed", "float32")))
    assert check_cmd.main(["kernel=reference"]) == 1
    captured = capsys.readouterr()
    assert "incorrect" in captured.out and "reference" in captured.err


@pytest.mark.slow
def test_every_kernel_agrees_with_reference_on_a_mixed_bf16_batch(in_tmp, monkeypatch, capsys):
    monkeypatch.setattr(check_cmd, "check_cases", only(("mixed", "bfloat16"), ("chunked_prefill", "float32")))
    rc = check_cmd.main([])
    out = capsys.readouterr().out
    assert rc == 0, out
    for name in BACKENDS:
        assert any(line.startswith(name) and " ok" in line for line in out.splitlines()), out


def test_rpa_v3_head_dim_96_refused_naming_the_field(in_tmp, capsys):
    assert check_cmd.main(["kernel=rpa_v3", "model.head_dim=96"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.head_dim=96" in err and "multiples of 128" in err
