"""Run a check in its own worker process, so a worker that dies or hangs costs one record.

XLA's CPU compile of an interpreted Pallas kernel can need more memory than the machine has
(batched RPA in bfloat16: 10-14 GB for one small case), and LLVM then aborts the whole process;
a kernel can also wait forever. In-process, either loses every record not yet printed and the
command's exit status. Here each call runs in a spawned worker (reused while it lives): a
worker that dies is reported with its exit status, one past its time limit is killed, and the
next call gets a fresh worker.

(``concurrent.futures`` gives the worker and its death notice; what it does not give — the
dead worker's exit status and killing a running worker — is the small part written here.)
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import multiprocessing
import signal
from collections.abc import Callable
from typing import Any


class WorkerDied(RuntimeError):
    """The worker process ended while running the call (killed, aborted, out of memory)."""


class WorkerTimedOut(RuntimeError):
    """The call did not finish within the limit; its worker was killed."""


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def kill_pool(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Kill a pool's workers now (``shutdown`` alone waits for a running call to end)."""
    for p in list(getattr(pool, "_processes", {}).values()):
        try:
            p.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass
    pool.shutdown(wait=False, cancel_futures=True)


class IsolatedCalls:
    """``call(fn, *args)`` in a spawned worker; ``timeout_s``: per call (None: no limit)."""

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        pool = self._pool
        future = pool.submit(fn, *args)
        workers = list(getattr(pool, "_processes", {}).values())  # the pool forgets them once broken
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            self._kill()
            raise WorkerTimedOut(f"did not finish within {self.timeout_s:g} s; its worker was killed") from None
        except concurrent.futures.process.BrokenProcessPool:
            for p in workers:
                p.join(timeout=5)
            codes = [p.exitcode for p in workers if p.exitcode is not None]
            self._kill()
            raise WorkerDied(f"its worker process died ({_exit_text(codes[0] if codes else None)})") from None

    def _kill(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            kill_pool(pool)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> IsolatedCalls:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._kill()
