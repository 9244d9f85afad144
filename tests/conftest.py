"""Shared pytest setup: hypothesis profile; accelerator markers auto-skip where the hardware is absent."""

from __future__ import annotations

import os

import rpa_bench  # noqa: F401 - first: its libtpu defaults must precede JAX's import
import pytest
from hypothesis import HealthCheck, settings

# No per-example deadline (a loaded 2-core CI machine is slow, not wrong); in CI the
# examples are derived from the test (derandomize) so a run is reproducible.
settings.register_profile(
    "rpa_bench", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=bool(os.environ.get("CI"))
)
settings.load_profile("rpa_bench")


def _platform() -> str:
    import jax

    try:
        return jax.devices()[0].platform
    except RuntimeError:
        return "cpu"


def pytest_collection_modifyitems(config, items):
    platform = None
    for item in items:
        for marker, needed in (("tpu", "tpu"), ("gpu", "gpu")):
            if marker in item.keywords:
                platform = platform or _platform()
                if platform != needed:
                    item.add_marker(pytest.mark.skip(reason=f"needs a {needed.upper()} (running on {platform})"))
