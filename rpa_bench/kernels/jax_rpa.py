"""JAX's own ragged paged attention (``jax.experimental.pallas.ops.tpu.ragged_paged_attention``).

Same API, capabilities and preparation as tpu-inference's v2 (see :mod:`rpa_v2`); the
code ships with the installed ``jax``, so ``source`` is not supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rpa_bench.kernels import loader
from rpa_bench.kernels.declaration import KernelDeclaration
from rpa_bench.kernels.base import KernelProvenance
from rpa_bench.kernels.rpa_v2 import OldApiBackend


class JaxRpaBackend(OldApiBackend):
    name = "jax_rpa"

    def __init__(self, *, source: str | None = None, options: Mapping[str, Any] | None = None) -> None:
        if source is not None:
            raise ValueError(f"kernel=jax_rpa: kernel.source={source!r} unsupported; allowed: null (the installed jax)")
        super().__init__(source=None, options=options)

    def module(self):
        return loader.jax_rpa_module()

    def availability(self) -> tuple[bool, str]:
        try:
            self.module()
        except ImportError as e:
            return False, f"jax has no ragged_paged_attention kernel ({e})"
        return True, "jax " + str(loader.jax_rpa_provenance().version)

    def provenance(self) -> KernelProvenance:
        return loader.jax_rpa_provenance(self.name)


DECLARATION = KernelDeclaration(
    name="jax_rpa", backend=JaxRpaBackend, pallas=True, takes_source=False,
    summary="JAX's own ragged paged attention (ships with jax)")
