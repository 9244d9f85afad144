"""What a kernel declares about itself, so the registry, loader, tuner and history read it
instead of lists that name kernels.

A backend module (one file in ``rpa_bench/kernels/``) ends with ``DECLARATION =
KernelDeclaration(...)``; :mod:`rpa_bench.kernels.registry` finds every such module and the
matching ``conf/kernel/<name>.yaml`` gives its default config. See ``docs/add_a_kernel.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class KernelDeclaration:
    name: str  # the kernel's name: kernel=<name>, conf/kernel/<name>.yaml
    backend: Any  # the backend class: Backend(options=..., [source=...])
    pallas: bool  # a Pallas TPU kernel: interpret mode off TPU, compiled for TPU generations offline
    takes_source: bool  # loads from tpu-inference: kernel.source= a checkout or revision (history walks it)
    upstream_module: str | None = None  # its module inside the tpu_inference package (provenance, revisions)
    summary: str = ""
    sharded: bool = False  # runs on a device mesh itself (context / sequence parallel)
