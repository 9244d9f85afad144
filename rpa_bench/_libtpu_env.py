"""Keep libtpu quiet and fast on machines without a TPU (set before JAX is imported).

With libtpu installed (the compile-only TPU client, ``rpa-bench compile``), importing JAX
on a CPU-only machine makes libtpu look for a TPU host's metadata and print errors about
``TPU_ACCELERATOR_TYPE`` / ``TPU_WORKER_HOSTNAMES``; several processes loading it at once
also collide on its lock file. When no TPU device node exists, these defaults are set
(never overriding what the user set): a single-host worker, and several libtpu loads
allowed. The accelerator type only silences the metadata lookup: compile targets always
come from an explicit topology (``jax.experimental.topologies``). On a TPU host nothing is
set.
"""

from __future__ import annotations

import glob
import os

OFF_TPU_DEFAULTS = {
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_WORKER_HOSTNAMES": "localhost",
    "TPU_ACCELERATOR_TYPE": "v6e-1",
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}


def tpu_attached() -> bool:
    """A TPU device node exists (``/dev/accel*`` on TPU VMs, ``/dev/vfio/N`` on newer ones)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def apply() -> dict[str, str]:
    """Set the off-TPU defaults that are missing; returns what was set."""
    if tpu_attached():
        return {}
    added = {k: v for k, v in OFF_TPU_DEFAULTS.items() if k not in os.environ}
    os.environ.update(added)
    return added
