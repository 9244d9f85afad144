"""Loading tpu-inference kernels: the installed release without its package __init__, and
revisions from a checkout's working tree or a git ref, side by side, with provenance."""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rpa_bench.kernels import loader

GIT = ("git", "-c", "user.email=bench@example.com", "-c", "user.name=bench", "-c", "commit.gpgsign=false")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A git checkout made from the installed package's kernel files: commit A (as
    released), commit B (v3 kernel gains MARKER = "B"), then an uncommitted edit."""
    installed = loader.installed_package_dir()
    repo = tmp_path_factory.mktemp("tpu-inference")
    pkg = repo / "tpu_inference"
    (pkg / "kernels").mkdir(parents=True)
    shutil.copy(installed / "__init__.py", pkg / "__init__.py")  # imports vllm: must never run
    shutil.copy(installed / "kernels" / "__init__.py", pkg / "kernels" / "__init__.py")
    shutil.copytree(installed / "kernels" / "ragged_paged_attention", pkg / "kernels" / "ragged_paged_attention",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([*GIT, "init", "-q", str(repo)], check=True)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "A: as released")
    kernel = pkg / "kernels" / "ragged_paged_attention" / "v3" / "kernel.py"
    kernel.write_text(kernel.read_text() + '\nMARKER = "B"\n')
    _git(repo, "commit", "-qam", "B: marker")
    shas = {"A": _git(repo, "rev-parse", "HEAD~1"), "B": _git(repo, "rev-parse", "HEAD")}
    kernel.write_text(kernel.read_text().replace('MARKER = "B"', 'MARKER = "dirty"'))
    return repo, shas


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RPA_BENCH_CACHE_DIR", str(tmp_path / "cache"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_installed_release_loads_without_running_the_package_init():
    src = loader.load_source(None)
    v3, v2 = src.module("v3"), src.module("v2")
    assert callable(v3.ragged_paged_attention) and callable(v2.ragged_paged_attention)
    assert "vllm" not in sys.modules
    prov = src.provenance("v3", "rpa_v3")
    assert prov.version == importlib.metadata.version("tpu-inference")
    assert prov.git_commit is None and prov.module == "tpu_inference.kernels.ragged_paged_attention.v3.kernel"
    assert prov.kernel_sha256 == _sha256(Path(v3.__file__))


def test_git_ref_loads_the_committed_code_under_its_own_namespace(checkout, tmp_path):
    repo, shas = checkout
    released = loader.load_source(None).module("v3")
    rev_a = loader.load_source(f"{repo}@HEAD~1")
    rev_b = loader.load_source(f"{repo}@{shas['B']}")
    mod_a, mod_b = rev_a.module("v3"), rev_b.module("v3")
    assert not hasattr(mod_a, "MARKER") and mod_b.MARKER == "B"
    assert len({released.__name__, mod_a.__name__, mod_b.__name__}) == 3
    # the revision's absolute `tpu_inference` imports resolve inside the revision
    assert mod_b.align_to.__module__ == f"{rev_b.namespace}.kernels.ragged_paged_attention.v3.util"
    prov = rev_a.provenance("v3", "rpa_v3")
    assert prov.git_commit == shas["A"] and prov.git_ref == "HEAD~1" and prov.git_dirty is False
    assert prov.kernel_sha256 == _sha256(Path(released.__file__))  # commit A is the release
    assert Path(prov.kernel_file).is_relative_to(tmp_path / "cache" / "revisions" / shas["A"])
    assert rev_b.provenance("v3", "rpa_v3").kernel_sha256 != prov.kernel_sha256


def test_working_tree_source_records_head_commit_and_dirty_flag(checkout):
    repo, shas = checkout
    src = loader.load_source(str(repo))
    assert src.module("v3").MARKER == "dirty"
    prov = src.provenance("v3", "rpa_v3")
    assert prov.git_commit == shas["B"] and prov.git_dirty is True and prov.source_path == str(repo)
    assert prov.kernel_sha256 == _sha256(repo / "tpu_inference/kernels/ragged_paged_attention/v3/kernel.py")
    assert src.provenance("v2", "rpa_v2").kernel_file.endswith("v2/kernel.py")


def test_bad_sources_are_refused_with_the_field_named(checkout, tmp_path):
    repo, _ = checkout
    with pytest.raises(ValueError, match="kernel.source=.*not a folder"):
        loader.load_source(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="rev-parse"):
        loader.load_source(f"{repo}@no-such-branch")
    ok, reason = loader.availability(str(tmp_path))
    assert not ok and "tpu_inference" in reason
    with pytest.raises(ValueError, match="kernel version 'v9' unknown; allowed: v3, v2"):
        loader.load_source(None).module("v9")


def test_backends_report_unavailable_when_tpu_inference_is_missing(monkeypatch):
    from rpa_bench.kernels.registry import get_backend

    monkeypatch.setattr(loader, "installed_package_dir", lambda: None)
    for name in ("rpa_v3", "rpa_v2"):
        ok, reason = get_backend(name).availability()
        assert not ok and "tpu-inference is not installed" in reason
    assert get_backend("jax_rpa").availability()[0]  # ships with jax
