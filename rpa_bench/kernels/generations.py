"""The TPU generations the suite compiles for offline: names, aliases, one chip's topology.

Pure data (no JAX import), so configs naming a generation are checked before any heavy work.
"""

from __future__ import annotations

# Device kind -> (topology name, kwargs) of one chip (TPU7x and v4: 2 TensorCores, 2 devices).
TOPOLOGIES = {
    "TPU v5 lite": ("v5e:1x1", {"chips_per_host_bounds": (1, 1, 1)}),
    "TPU v6 lite": ("v6e:1x1", {"chips_per_host_bounds": (1, 1, 1)}),
    "TPU v5p": ("v5p:1x1x1", {"chips_per_host_bounds": (1, 1, 1)}),
    "TPU v4": ("v4:1x1x1", {"chips_per_host_bounds": (1, 1, 1)}),
    "TPU7x": ("tpu7x:1x1x1", {"chips_per_host_bounds": (1, 1, 1)}),
}
ALIASES = {"v5e": "TPU v5 lite", "v6e": "TPU v6 lite", "v5p": "TPU v5p", "v4": "TPU v4", "tpu7x": "TPU7x",
           "v5litepod": "TPU v5 lite"}


def generation_kind(name: str) -> str:
    """``tpu7x`` / ``v6e`` / ``TPU v6 lite`` -> the device kind; ValueError naming the allowed values."""
    if name in TOPOLOGIES:
        return name
    kind = ALIASES.get(str(name).lower())
    if kind is None:
        raise ValueError(f"generation={name!r} unknown; allowed: {', '.join(ALIASES)} (or {', '.join(TOPOLOGIES)})")
    return kind
