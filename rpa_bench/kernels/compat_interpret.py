"""CPU interpret mode for the RPA kernels: a small, version-guarded fix of JAX's TPU interpreter.

JAX's TPU interpreter (``pltpu.force_tpu_interpret_mode``) reads and writes refs through
``get`` / ``store`` / ``swap`` in ``jax._src.pallas.mosaic.interpret.interpret_pallas_call``,
which understand only indexers. The RPA kernels also ``reshape`` and ``bitcast`` refs, in
vector loads/stores and in DMAs (which reach the same functions through the module's
globals, as ``get.__wrapped__`` / ``store.__wrapped__``). And a masked store of rank >= 2
is rejected as out of bounds because the in-bounds mask is built along axis 0 only.

:func:`tpu_interpret_mode` forces interpret mode and, while it is active, replaces those
functions with versions that

- read through a transform chain by reading the region the leading indexers select and
  applying the remaining reshape / bitcast / transpose / indexer steps in numpy;
- write through it by read-modify-write of that region via each step's inverse;
- bitcast with TPU semantics: a width change packs/unpacks along the second-minor axis
  (rows ``2i`` and ``2i+1`` of bf16 share one 32-bit word, the even row in the low half);
- build the masked-swap in-bounds check over every axis.

Only the JAX versions in :data:`VERIFIED_JAX_VERSIONS` are patched; on others the
context only forces interpret mode and warns. Everything is restored on exit.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np

VERIFIED_JAX_VERSIONS = ("0.11.2",)

_lock = threading.Lock()
_depth = 0
_saved: list[tuple[Any, str, Any]] = []


def patch_supported() -> tuple[bool, str]:
    """(supported, reason): whether this JAX is one the interpreter fixes were verified on."""
    if jax.__version__ not in VERIFIED_JAX_VERSIONS:
        return False, (
            f"jax=={jax.__version__} is not a verified version for the interpret-mode fixes; "
            f"verified: {', '.join(VERIFIED_JAX_VERSIONS)}"
        )
    return True, "ok"


# --- numpy semantics of ref transforms -------------------------------------------------
def _bits(dtype) -> int:
    from jax._src import dtypes

    return int(dtypes.itemsize_bits(np.dtype(dtype)))


def tpu_bitcast(x: np.ndarray, dtype) -> np.ndarray:
    """Bitcast ``x`` to ``dtype`` as a TPU does: width changes pack along the second-minor axis."""
    dtype = np.dtype(dtype)
    x = np.ascontiguousarray(x)
    x_bits, y_bits = _bits(x.dtype), _bits(dtype)
    if x_bits == y_bits:
        return x.view(dtype)
    if min(x_bits, y_bits) < 8 or x.ndim < 2:
        raise NotImplementedError(f"bitcast {x.dtype}{list(x.shape)} -> {dtype} is not supported")
    *lead, rows, cols = x.shape
    if x_bits > y_bits:  # unpack: one wide row becomes `ratio` narrow rows
        ratio = x_bits // y_bits
        y = x.view(dtype).reshape(*lead, rows, cols, ratio)
        return np.ascontiguousarray(np.moveaxis(y, -1, -2)).reshape(*lead, rows * ratio, cols)
    ratio = y_bits // x_bits  # pack: `ratio` narrow rows become one wide row, even row lowest
    if rows % ratio:
        raise ValueError(f"bitcast {x.dtype}{list(x.shape)} -> {dtype}: {rows=} must divide by {ratio=}")
    y = np.ascontiguousarray(np.swapaxes(x.reshape(*lead, rows // ratio, ratio, cols), -1, -2))
    return y.view(dtype).reshape(*lead, rows // ratio, cols)


def _indexer_range(indexer) -> tuple:
    from jax._src.pallas.mosaic.interpret import utils as interpret_utils

    return tuple(interpret_utils.to_range((indexer,)))


def _is_indexer(t) -> bool:
    from jax._src.state import indexing

    return isinstance(t, indexing.NDIndexer)


def _split(transforms: Sequence[Any]) -> tuple[tuple, tuple]:
    """(leading indexers, the rest): the interpreter's memory only understands the first part."""
    k = 0
    while k < len(transforms) and _is_indexer(transforms[k]):
        k += 1
    return tuple(transforms[:k]), tuple(transforms[k:])


def read_view(base: np.ndarray, transforms: Sequence[Any]) -> np.ndarray:
    """What a ref with ``transforms`` reads from the array ``base``."""
    from jax._src.state import types as state_types

    out = np.asarray(base)
    for t in transforms:
        if _is_indexer(t):
            out = np.asarray(out[_indexer_range(t)])
        elif isinstance(t, state_types.ReshapeTransform):
            out = out.reshape(t.shape)
        elif isinstance(t, state_types.BitcastTransform):
            out = tpu_bitcast(out, t.dtype)
        elif isinstance(t, state_types.TransposeTransform):
            out = np.transpose(out, t.permutation)
        else:
            raise NotImplementedError(f"ref transform {type(t).__name__} in TPU interpret mode")
    return out


def write_view(base: np.ndarray, transforms: Sequence[Any], val: np.ndarray) -> np.ndarray:
    """``base`` after writing ``val`` through a ref with ``transforms`` (a new array)."""
    from jax._src.state import types as state_types

    base = np.asarray(base)
    if not transforms:
        val = np.asarray(val)
        if val.shape != base.shape:
            raise ValueError(f"write of shape {val.shape} into a view of shape {base.shape}")
        return val.astype(base.dtype, copy=True)
    t, rest = transforms[0], transforms[1:]
    if _is_indexer(t):
        idx = _indexer_range(t)
        out = base.copy()
        out[idx] = write_view(np.asarray(base[idx]), rest, val)
        return out
    if isinstance(t, state_types.ReshapeTransform):
        return write_view(base.reshape(t.shape), rest, val).reshape(base.shape)
    if isinstance(t, state_types.BitcastTransform):
        return tpu_bitcast(write_view(tpu_bitcast(base, t.dtype), rest, val), base.dtype)
    if isinstance(t, state_types.TransposeTransform):
        inverse = np.argsort(t.permutation)
        return np.transpose(write_view(np.transpose(base, t.permutation), rest, val), inverse)
    raise NotImplementedError(f"ref transform {type(t).__name__} in TPU interpret mode")


# --- replacements for the interpreter's ref access -------------------------------------
# Called as ``hook(direction, memory_space, buffer_id, transforms)`` for every BlockSpec
# pipeline copy (the interpreter's get with ``input_name`` / store with ``output_name``): how the
# traffic observer (rpa_bench.kernels.traffic) sees copies no DMA makes. Read at call time, so
# traces cached before it was set still report.
block_copy_hook: Any = None

# True while a kernel that DMAs past the end of its own buffers runs (see
# :func:`overhanging_dmas`): such a copy moves its in-bounds part instead of failing.
# (a process-wide count: the interpreter's callbacks run on threads of JAX's own)
_overhang = {"depth": 0}


def _make_replacements(ipc, memory) -> dict[tuple[Any, str], Any]:
    orig_get = ipc.get.__wrapped__
    orig_store = ipc.store.__wrapped__
    orig_swap = ipc.swap.__wrapped__
    orig_swap_content = memory.SharedMemory.swap_buffer_content
    read_kw = ("src_device_id", "src_local_core_id", "clock", "source_info")

    def _ints(transforms):
        return tuple(jax.tree.map(int, tuple(transforms)))

    def get(token, device_id, local_core_id, memory_space, buffer_id, transforms, *args, **kwargs):
        transforms = _ints(transforms)
        if block_copy_hook is not None and kwargs.get("input_name") is not None:
            block_copy_hook("read", memory_space, buffer_id, transforms)
        prefix, view = _split(transforms)
        if not view:
            return orig_get(token, device_id, local_core_id, memory_space, buffer_id, transforms, *args, **kwargs)
        token, base = orig_get(token, device_id, local_core_id, memory_space, buffer_id, prefix, *args, **kwargs)
        return token, read_view(base, view)

    def store(token, device_id, local_core_id, memory_space, buffer_id, transforms, val, *args, **kwargs):
        transforms = _ints(transforms)
        if block_copy_hook is not None and kwargs.get("output_name") is not None:
            block_copy_hook("write", memory_space, buffer_id, transforms)
        prefix, view = _split(transforms)
        if not view:
            return orig_store(token, device_id, local_core_id, memory_space, buffer_id, transforms, val, *args, **kwargs)
        rkw = {k: v for k, v in kwargs.items() if k in read_kw}
        _, base = orig_get(token, device_id, local_core_id, memory_space, buffer_id, prefix, **rkw)
        new_base = write_view(base, view, np.asarray(val))
        return orig_store(token, device_id, local_core_id, memory_space, buffer_id, prefix, new_base, *args, **kwargs)

    def swap(token, device_id, local_core_id, memory_space, buffer_id, transforms, val, mask, *, source_info=None):
        transforms = _ints(transforms)
        prefix, view = _split(transforms)
        if not view:
            return orig_swap(token, device_id, local_core_id, memory_space, buffer_id, transforms, val, mask,
                             source_info=source_info)
        _, base = orig_get(token, device_id, local_core_id, memory_space, buffer_id, prefix, source_info=source_info)
        old = read_view(base, view)
        val = np.asarray(val)
        new = val if mask is None else np.where(np.asarray(mask), val, old)
        orig_store(token, device_id, local_core_id, memory_space, buffer_id, prefix, write_view(base, view, new),
                   source_info=source_info)
        return token, (old if mask is None else np.where(np.asarray(mask), old, val))

    orig_store_content = memory.SharedMemory.store_buffer_content

    def store_buffer_content(self, key, rnge, value, thread, increment_clock=True, logging_info=None):
        ok, shape_dtype, clock = orig_store_content(self, key, rnge, value, thread, increment_clock, logging_info)
        if ok or not _overhang["depth"]:
            return ok, shape_dtype, clock
        shape = tuple(self.mem[key].shape)
        clipped, part = [], []
        for dim, r in zip(shape, tuple(rnge) + (slice(None),) * (len(shape) - len(rnge))):
            if isinstance(r, int):
                clipped.append(r)
                continue
            start = 0 if r.start is None else int(r.start)
            stop = min(dim if r.stop is None else int(r.stop), dim)
            clipped.append(slice(start, stop))
            part.append(slice(0, max(0, stop - start)))
        value = np.asarray(value)
        return orig_store_content(self, key, tuple(clipped), value[tuple(part)], thread, increment_clock,
                                  logging_info)

    def swap_buffer_content(self, key, rnge, value, mask, thread, increment_clock=True, logging_info=None):
        # A fully in-bounds masked swap is an unmasked swap of the merged value; anything
        # else keeps the interpreter's own path (and its out-of-bounds report).
        if mask is not None:
            current, _, _ = self.get_buffer_content(key, rnge, thread, increment_clock=False)
            if current is not None and current.shape == value.shape:
                merged = np.where(mask, value, current)
                _, shape_dtype, clock = orig_swap_content(
                    self, key, rnge, merged, None, thread, increment_clock, logging_info
                )
                return np.where(mask, current, value), shape_dtype, clock
        return orig_swap_content(self, key, rnge, value, mask, thread, increment_clock, logging_info)

    orig_wait = memory.Semaphore.wait

    def wait(self, value, global_core_id, *args, **kwargs):
        # registered for the deadlock watchdog (:func:`_watch_waits`) while it waits
        key = object()
        _waits[id(key)] = [self, int(global_core_id), int(value), time.monotonic(), None]
        try:
            return orig_wait(self, value, global_core_id, *args, **kwargs)
        finally:
            _waits.pop(id(key), None)

    wrap = ipc.fail_on_exception  # keeps `__wrapped__`, which the DMA engine calls
    return {
        (memory.Semaphore, "wait"): wait,
        (ipc, "get"): wrap(get),
        (ipc, "store"): wrap(store),
        (ipc, "swap"): wrap(swap),
        (memory.SharedMemory, "swap_buffer_content"): swap_buffer_content,
        (memory.SharedMemory, "store_buffer_content"): store_buffer_content,
    }


# A semaphore wait that nothing can end: JAX's interpreter waits on it forever (its loop only
# re-checks for a failure every 0.1 s), so a kernel whose DMA schedule never signals what it
# waits for hangs the check. The watchdog ends such a wait with an error naming the semaphore,
# what it waits for and what it has. "Nothing can end it": no DMA pending on it and its count
# unchanged for DEADLOCK_S (one core: nothing else runs; several cores or devices: another may
# still be computing, so the limit is long).
DEADLOCK_S = {"one_core": 20.0, "several": 600.0}
DEADLOCK_MARK = "interpret-mode deadlock"
_waits: dict[int, list] = {}  # live waits: [semaphore, core, value, since, (count, pending)]
_watch_stop: threading.Event | None = None


def _watch_waits(stop: threading.Event) -> None:
    while not stop.wait(1.0):
        now = time.monotonic()
        for entry in list(_waits.values()):
            sem, core, value, since, last = entry
            try:
                state = (int(sem.count_by_core[core]), len(sem.tasks[core]))
                cores = int(sem.shared_memory.num_cores)
            except (AttributeError, IndexError, TypeError):
                continue  # another JAX's semaphore: nothing known to watch
            if state != last:
                entry[3], entry[4] = now, state
                continue
            limit = DEADLOCK_S["one_core" if cores == 1 else "several"]
            if state[1] or now - since < limit:
                continue
            memory = sem.shared_memory
            with memory.lock:
                if memory._failure is None:
                    memory._failure = RuntimeError(
                        f"{DEADLOCK_MARK}: the kernel waits on DMA semaphore {sem.id} (core {core}) for {value}, "
                        f"it holds {state[0]} and no pending copy can signal it ({limit:g} s without progress)")


def _install() -> None:
    global _watch_stop
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc
    from jax._src.pallas.mosaic.interpret import shared_memory as memory

    for (owner, name), new in _make_replacements(ipc, memory).items():
        _saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)
    _watch_stop = threading.Event()
    threading.Thread(target=_watch_waits, args=(_watch_stop,), name="rpa_bench-interpret-watchdog",
                     daemon=True).start()


def _uninstall() -> None:
    global _watch_stop
    while _saved:
        owner, name, old = _saved.pop()
        setattr(owner, name, old)
    if _watch_stop is not None:
        _watch_stop.set()
        _watch_stop = None


@contextlib.contextmanager
def patched_interpreter() -> Iterator[bool]:
    """Install the interpreter fixes for the duration (re-entrant). Yields whether they are active."""
    global _depth
    ok, reason = patch_supported()
    if not ok:
        warnings.warn(f"{reason}; running JAX's TPU interpreter unpatched", RuntimeWarning, stacklevel=3)
        yield False
        return
    with _lock:
        if _depth == 0:
            _install()
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _uninstall()


@contextlib.contextmanager
def overhanging_dmas() -> Iterator[None]:
    """Inside: a copy that runs past the end of its source or destination moves the part in
    bounds (reads past the end give uninitialised values: run with ``out_of_bounds_reads=
    "uninitialized"``). For kernels that round a copy's length up past their buffer (batched
    RPA copies its step schedule in 1024-element multiples), which a TPU with bounds checks
    disabled does silently; the part past the end is never read back."""
    with _lock:
        _overhang["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _overhang["depth"] -= 1


_params_override: Any = None  # set by :func:`interpret_params` (e.g. the traffic observer's)


def params_override() -> Any:
    """The ``pltpu.InterpretParams`` set by :func:`interpret_params`, or None."""
    return _params_override


@contextlib.contextmanager
def interpret_params(params) -> Iterator[None]:
    """Every :func:`tpu_interpret_mode` inside uses ``params`` (a ``pltpu.InterpretParams``)
    unless it names its own: how the traffic observer skips floating-point work in kernels
    whose adapters enter interpret mode themselves."""
    global _params_override
    saved, _params_override = _params_override, params
    try:
        yield
    finally:
        _params_override = saved


@contextlib.contextmanager
def tpu_interpret_mode(params=None) -> Iterator[bool]:
    """Run Pallas TPU kernels traced inside on CPU (``pltpu.force_tpu_interpret_mode``), fixed.

    ``params``: a ``pltpu.InterpretParams`` (default: JAX's defaults: NaN-filled
    uninitialised memory, out-of-bounds reads raise). Run every call of an interpreted
    kernel inside this context, including calls that hit a compiled cache: the DMA
    engine looks the fixed functions up at run time.
    """
    from jax.experimental.pallas import tpu as pltpu

    with patched_interpreter() as active:
        if params is None:
            params = _params_override if _params_override is not None else pltpu.InterpretParams()
        with pltpu.force_tpu_interpret_mode(params):
            yield active
