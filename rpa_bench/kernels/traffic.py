"""The HBM traffic a kernel moves for one batch: modelled from its block iteration, or observed.

A :class:`Traffic` is the bytes a call moves between HBM and VMEM, split by operand and
direction, with the number of DMAs (zero-length ones included: each still costs a
descriptor) and of (query block, KV block) iterations. Each kernel declares its model beside
its backend (``backend.traffic(model, attn, batch)``: the kernel's own schedule, in numbers);
:func:`observe_traffic` measures the same quantities by running the real kernel in Pallas
TPU interpret mode and counting every DMA the interpreter executes. The observation is the
model's test oracle.

How the observation works (JAX's TPU interpreter, ``jax._src.pallas.mosaic.interpret``):
every explicit copy (``pltpu.make_async_copy``) is a ``DMA`` object whose ``execute_read``
reads the source region (``data``: its bytes) once; operands pipelined by ``BlockSpec``
(RPA v2's and JAX's queries and outputs) are copied per grid step by the interpreter's
``get(..., input_name=)`` / ``store(..., output_name=)`` (only when the block index changes,
as the TPU pipeline does; the bytes counted are the block's in-bounds part), reported by
:mod:`compat_interpret`'s ``block_copy_hook`` (it already replaces those two); every HBM buffer
of a ``pallas_call`` operand is created by ``SharedMemory.allocate_buffer`` with the operand's
value, so a copy's source / destination buffer id names the operand (matched by shape with
the backend's ``traffic_operands``). All are private: the hooks are installed only on the JAX
versions in :data:`VERIFIED_JAX_VERSIONS`, and :func:`observe_traffic` raises when they did not fire
(a changed interpreter must fail loudly, never report zero traffic). No library exposes a
kernel's DMA schedule; this is written by hand for that reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np

from rpa_bench.kernels import compat_interpret
from rpa_bench.workloads.materialize import materialize

VERIFIED_JAX_VERSIONS = ("0.11.2",)
READ, WRITE = "hbm_to_vmem", "vmem_to_hbm"
OPERANDS = ("kv_cache", "new_kv", "q", "output", "kv_cache_write", "metadata")
READ_OPERANDS = ("kv_cache", "new_kv", "q", "metadata")


@dataclasses.dataclass(frozen=True)
class Traffic:
    """Bytes a call moves, by operand (see :data:`OPERANDS`)."""

    bytes_by_operand: Mapping[str, int]
    dmas_by_operand: Mapping[str, int]
    iterations: int  # (query block, KV block) steps over all sequences and kernel calls
    kernel_calls: int  # pallas_calls (v3: one per non-empty case: decode, prefill, mixed)
    source: str  # model | observed
    notes: tuple[str, ...] = ()

    @property
    def read_bytes(self) -> int:
        return int(sum(v for k, v in self.bytes_by_operand.items() if k in READ_OPERANDS))

    @property
    def write_bytes(self) -> int:
        return int(sum(v for k, v in self.bytes_by_operand.items() if k not in READ_OPERANDS))

    @property
    def hbm_bytes(self) -> int:
        return self.read_bytes + self.write_bytes

    @property
    def dmas(self) -> int:
        return int(sum(self.dmas_by_operand.values()))

    def comparable(self) -> dict:
        """What an observation can see (metadata reaches SMEM by scalar prefetch, not by DMA)."""
        return {k: int(v) for k, v in sorted(self.bytes_by_operand.items()) if k != "metadata" and v}

    def as_dict(self) -> dict:
        return {"source": self.source, "hbm_bytes": self.hbm_bytes, "read_bytes": self.read_bytes,
                "write_bytes": self.write_bytes, "bytes_by_operand": dict(self.bytes_by_operand),
                "dmas": self.dmas, "dmas_by_operand": dict(self.dmas_by_operand), "iterations": self.iterations,
                "kernel_calls": self.kernel_calls, "notes": list(self.notes)}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)


def hook_status() -> tuple[bool, str]:
    """(supported, reason): whether this JAX is one the DMA hooks were verified on."""
    if jax.__version__ not in VERIFIED_JAX_VERSIONS:
        return False, (f"observing DMAs needs jax {', '.join(VERIFIED_JAX_VERSIONS)} (its TPU interpreter's "
                       f"private DMA and buffer classes); this is jax {jax.__version__}")
    try:
        from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc, shared_memory as shm

        ipc.DMA.execute_read, ipc.DmaState.STARTED, shm.SharedMemory.allocate_buffer  # noqa: B018
    except (ImportError, AttributeError) as exc:
        return False, f"the TPU interpreter changed ({exc}); the DMA hooks cannot be installed"
    return True, "ok"


class _Recorder:
    def __init__(self) -> None:
        self.buffers: dict[int, tuple[tuple[int, ...], str]] = {}  # HBM buffer id -> (shape, dtype)
        self.dmas: list[tuple[str, int, int]] = []  # (direction, hbm buffer id, bytes)
        self.blocks: list[tuple[str, int, tuple]] = []  # BlockSpec copies: (direction, hbm buffer id, region)
        self.other: list[tuple[int, int, int]] = []  # copies not between HBM and VMEM: (src, dst, bytes)


_active: _Recorder | None = None
_install_lock = threading.Lock()
_installed = False


def _install() -> None:
    """Wrap the interpreter's DMA read and HBM allocation (once; inert unless recording).
    Wrapped at the class: the interpreter looks them up at run time, so compiled caches see it."""
    global _installed
    with _install_lock:
        if _installed:
            return
        from jax._src.pallas.mosaic import core as mosaic_core
        from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc, shared_memory as shm
        from jax._src.pallas.mosaic.interpret import utils as iutils

        hbm = ipc.TPU_MEMORY_SPACE_IDXS[mosaic_core.MemorySpace.HBM]
        vmem = ipc.TPU_MEMORY_SPACE_IDXS[mosaic_core.MemorySpace.VMEM]
        spaces = {hbm, ipc.TPU_MEMORY_SPACE_IDXS[ipc.pallas_core.MemorySpace.ANY]}
        read, alloc, write_env = ipc.DMA.execute_read, shm.SharedMemory.allocate_buffer, iutils.JaxprEnv.write

        def execute_read(self):  # noqa: ANN001 - the interpreter's own signature
            first = self.state == ipc.DmaState.STARTED
            read(self)
            rec = _active
            if rec is None or not first or self.data is None:
                return
            nbytes = int(self.data.itemsize * self.data.size)
            if self.src_memory_space in spaces and self.dst_memory_space == vmem:
                rec.dmas.append((READ, int(self.src_buffer_id), nbytes))
            elif self.src_memory_space == vmem and self.dst_memory_space in spaces:
                rec.dmas.append((WRITE, int(self.dst_buffer_id), nbytes))
            else:
                rec.other.append((int(self.src_memory_space), int(self.dst_memory_space), nbytes))

        def allocate_buffer(self, key, ref_count, value, logical_shape=None, logging_info=None):  # noqa: ANN001
            rec = _active
            if rec is not None and key[0] in ("hbm", "any"):
                rec.buffers[int(key[1])] = (tuple(logical_shape or value.shape), str(value.dtype))
            return alloc(self, key, ref_count, value, logical_shape, logging_info)

        def env_write(self, var, value):  # noqa: ANN001 - skip_floating_point_ops with Python float literals
            if self._sentinel_for_floating_point_values and not hasattr(value, "shape") and hasattr(value, "dtype"):
                value = np.asarray(value, dtype=value.dtype)
            return write_env(self, var, value)

        def block_copy(direction, memory_space, buffer_id, transforms):  # noqa: ANN001
            rec = _active
            if rec is None or int(memory_space) not in spaces:
                return
            rec.blocks.append((READ if direction == "read" else WRITE, int(buffer_id), iutils.to_range(transforms)))

        ipc.DMA.execute_read = execute_read
        shm.SharedMemory.allocate_buffer = allocate_buffer
        iutils.JaxprEnv.write = env_write
        compat_interpret.block_copy_hook = block_copy
        _installed = True


def _operand_shape(shape: tuple[int, ...], operands: Mapping[tuple[int, ...], str]) -> tuple[int, ...]:
    """The operand shape a buffer holds: its own, or the one operand it pads up to a block
    multiple (the interpreter allocates BlockSpec operands padded to whole blocks)."""
    if shape in operands:
        return shape
    fits = [o for o in operands if len(o) == len(shape) and all(a <= b for a, b in zip(o, shape))]
    return fits[0] if len(fits) == 1 else shape


def _in_bounds(rng: tuple, shape: tuple[int, ...]) -> int:
    """Elements of the region ``rng`` (ints and unit-step slices) inside ``shape``."""
    n = 1
    for i, dim in enumerate(shape):
        r = rng[i] if i < len(rng) else slice(0, dim)
        if isinstance(r, int):
            n *= 1 if 0 <= r < dim else 0
        else:
            n *= max(0, min(int(r.stop), dim) - max(int(r.start), 0))
    return n


@contextlib.contextmanager
def recording() -> Iterator[_Recorder]:
    global _active
    ok, reason = hook_status()
    if not ok:
        raise RuntimeError(reason)
    _install()
    rec = _Recorder()
    saved, _active = _active, rec
    try:
        yield rec
    finally:
        _active = saved


def observe_traffic(backend: Any, model: Any, attn: Any, batch: Any, *, skip_floating_point: bool = True,
                    seed: int = 0, count_unnamed: bool = False) -> Traffic:
    """Run ``backend``'s real kernel once on ``batch`` in Pallas TPU interpret mode and count
    its DMAs by operand (``skip_floating_point``: the interpreter skips the arithmetic, which
    changes no address or size). ``count_unnamed``: bytes of HBM buffers no operand shape names
    count as operand ``unnamed`` (for a kernel without a model to compare with; otherwise they
    are only noted). Raises RuntimeError when the hooks saw nothing."""
    from jax.experimental.pallas import tpu as pltpu

    inputs = materialize(batch, model, poison=False, seed=seed)
    operands = backend.traffic_operands(model, inputs)  # shape -> operand name of each HBM operand
    prepared = backend.build(model, attn, batch, interpret=True)
    params = pltpu.InterpretParams(skip_floating_point_ops=skip_floating_point, dma_execution_mode="eager")
    with recording() as rec, compat_interpret.interpret_params(params):
        out = prepared.kernel(*prepared.prepare(prepared.state(inputs)))
        jax.block_until_ready(out)
    if not rec.buffers or not rec.dmas:
        raise RuntimeError("the DMA hooks saw no HBM buffer or DMA: the interpreter no longer calls them "
                           f"(jax {jax.__version__}); observed traffic would be wrong")
    if getattr(backend, "blockspec_operands", ()) and not rec.blocks:
        raise RuntimeError(f"{backend.name} pipelines {', '.join(backend.blockspec_operands)} by BlockSpec but the "
                           f"block-copy hooks saw no copy (jax {jax.__version__}); observed traffic would be wrong")
    names, true_shapes = {}, {}
    for buf, (shape, _) in rec.buffers.items():
        true_shapes[buf] = _operand_shape(shape, operands)
        names[buf] = operands.get(true_shapes[buf])
    copies = list(rec.dmas)
    for direction, buf, rng in rec.blocks:  # a block's in-bounds part of the operand (not its padding)
        shape, dtype = true_shapes.get(buf), rec.buffers.get(buf, (None, None))[1]
        if shape is not None:
            copies.append((direction, buf, _in_bounds(rng, shape) * np.dtype(dtype).itemsize))
    by_bytes: dict[str, int] = {}
    by_dmas: dict[str, int] = {}
    unknown = 0
    for direction, buf, nbytes in copies:
        name = names.get(buf)
        if name is None and not count_unnamed:
            unknown += nbytes
            continue
        name = name or "unnamed"
        if direction == WRITE:
            name = {"q": "output", "kv_cache": "kv_cache_write"}.get(name, name + "_write")
        by_bytes[name] = by_bytes.get(name, 0) + nbytes
        by_dmas[name] = by_dmas.get(name, 0) + 1
    notes = []
    if unknown:
        notes.append(f"{unknown} bytes moved to or from HBM buffers no operand shape matched")
    if rec.other:
        notes.append(f"{len(rec.other)} copies not between HBM and VMEM ({sum(n for *_, n in rec.other)} bytes)")
    return Traffic(by_bytes, by_dmas, iterations=0, kernel_calls=0, source="observed", notes=tuple(notes))
