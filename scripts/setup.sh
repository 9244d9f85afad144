#!/usr/bin/env bash
# Create .venv in the checkout and install the pinned environment.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  for c in "${PYTHON:-}" python3.12 python3.13; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.1[23]\.' | sort -V -r); do
      p="$(pyenv root)/versions/$v/bin/python${v%.*}"
      [ -x "$p" ] && { echo "$p"; return 0; }
    done
  fi
  return 1
}

PY="$(find_python)" || { echo "setup: Python >= 3.12 not found (set PYTHON=/path/to/python3.12)" >&2; exit 1; }

# uv (pinned, installed into the venv itself) makes the install fast and exact.
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -c 'import uv' 2>/dev/null || .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.8"
UV=".venv/bin/python -m uv"

$UV pip install --quiet -p .venv/bin/python -r requirements.lock
# tpu-inference ships the RPA kernels; its declared dependencies (torch, vllm, libtpu, ...)
# are not needed for the kernel modules, so it is installed without them.
$UV pip install --quiet -p .venv/bin/python --no-deps "tpu-inference==0.32.0"
# libtpu: the TPU compiler, used off TPU as a compile-only client (rpa-bench compile); the
# version tpu-inference 0.32.0 and jax[tpu]==0.11.2 pin.
$UV pip install --quiet -p .venv/bin/python "libtpu==0.0.48"
# Hydra's Ray launcher (sweeps on Ray: docs/cluster.md) without its declared dependencies:
# it pins cloudpickle<3 and boto3 for its AWS launcher; joblib 1.6 needs cloudpickle>=3, and
# the local Ray launcher the suite uses works with it (tests/test_ray_engine.py).
$UV pip install --quiet -p .venv/bin/python --no-deps "hydra-ray-launcher==1.2.2"
$UV pip install --quiet -p .venv/bin/python --no-deps -e .
echo "setup: .venv ready ($(.venv/bin/python --version))"
