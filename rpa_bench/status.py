"""The status of a measured or checked call: one enum for rows, checks and reports.

A ``StrEnum``: members compare equal to their plain strings, so stored rows (parquet
strings) and code agree without conversion.
"""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    OK = "ok"  # measured (or checked) and correct against the reference
    INCORRECT = "incorrect"  # ran, output disagrees with the reference beyond tolerance
    FAILED = "failed"  # raised (compile, run or capture)
    SKIPPED = "skipped"  # not run: unsupported shape, unavailable kernel, interpret-only timing
    COMPILED = "compiled"  # compile-only run: compiled for a TPU, not run


STATUSES: tuple[str, ...] = tuple(s.value for s in Status)
# a correctness check (``rpa-bench check``) ends in one of these; ``compiled`` is a run's only
CHECK_STATUSES: tuple[str, ...] = (Status.OK, Status.INCORRECT, Status.FAILED, Status.SKIPPED)
