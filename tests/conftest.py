"""Shared pytest setup: accelerator markers auto-skip where the hardware is absent."""

from __future__ import annotations




import pytest


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
