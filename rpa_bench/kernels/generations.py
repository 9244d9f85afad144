"""The TPU generations the suite compiles for offline: one chip's topology per device kind.

The names and aliases are :mod:`rpa_bench.generations` (the one table); this module only
adds the topology arguments :func:`jax.experimental.topologies.get_topology_desc` takes.
"""

from __future__ import annotations

from rpa_bench.generations import ALIASES, GENERATIONS, generation_kind, generation_kinds  # noqa: F401

# Device kind -> (topology name, kwargs) of one chip (TPU7x and v4: 2 TensorCores, 2 devices).
TOPOLOGIES = {g.device_kind: (g.topology, {"chips_per_host_bounds": (1, 1, 1)}) for g in GENERATIONS}
