"""The prepared accelerator check dry-runs on a machine without a GPU and says what it skipped."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "device_check.sh"


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine runs the real check")
def test_device_check_dry_runs_without_a_gpu(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert "dry run" in summary and "skipped: no NVIDIA GPU" in summary
    assert "experiment=paper_decode" in summary and "rpa-bench capture" in summary
