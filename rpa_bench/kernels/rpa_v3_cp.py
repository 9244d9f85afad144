"""tpu-inference's context-parallel RPA v3 (``kernels/experimental/rpa_v3_cp/kernel.py``) on one device.

The context-parallel kernel keeps v3's call (merged K/V cache, new K/V in, ``distribution``,
``(bq_sz, bkv_sz, bq_csz, bkv_csz)`` per case) and adds the context-parallel inputs:
``cp_rank`` / ``cp_group_size`` (decode context parallelism: each rank holds a slice of
the cache) and the prefill ring (``pcp_ring_axis_name``, ``q_pos_offsets``,
``kv_new_starts``, ...). Its own heuristic (``get_default_block_sizes``) differs from v3's
(prefetch blocks shrink with head_dim, its own bounds rounding).

Here it runs without a context-parallel group (every cp input left unset), the per-device
code a serving engine calls when the group has one member: what it costs against v3 on the
same batch, its own block sizes, its compile verdicts per generation. The multi-device
path is not driven: the suite's sharded runs split heads over a tensor axis and the mesh
has no sequence axis to stripe a context over (docs/multi_device.md).
"""

from __future__ import annotations

from rpa_bench.kernels.declaration import KernelDeclaration
from rpa_bench.kernels.rpa_v3 import CASES, RpaV3Backend, V3Tuning
from rpa_bench.kernels.tuning import Knob

MODULE = "kernels.experimental.rpa_v3_cp.kernel"


class CpTuning(V3Tuning):
    """v3's space and rules; production passes the sizes as call arguments (no environment
    variable). Its VMEM estimate (v3's formula) was at or below the compiler's use in all 12
    compiles measured (TPU7x / v6e / v5p / v5e x decode_8x1k / paper_decode / serving_mixed:
    0.86-0.97x), so the estimate shortcut holds as for v3 (and each compiled verdict re-checks it)."""

    knobs = {c: Knob(c, ("bq_sz", "bkv_sz", "bq_csz", "bkv_csz"), option=f"{c[0]}_block_sizes",
                     call=f"{c[0]}_block_sizes") for c in CASES}


class RpaV3CpBackend(RpaV3Backend):
    """Context-parallel RPA v3 at group size one; ``source``: installed release, checkout path, or path@ref."""

    name = "rpa_v3_cp"
    upstream, missing = MODULE, "context-parallel RPA v3"
    tuning = CpTuning()


DECLARATION = KernelDeclaration(
    name="rpa_v3_cp", backend=RpaV3CpBackend, pallas=True, takes_source=True, upstream_module=MODULE,
    summary="tpu-inference context-parallel RPA v3, run without a context-parallel group")
