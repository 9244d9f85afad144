"""File-name slugs: the one rule for turning labels, point ids and host names into path parts."""

from __future__ import annotations

import re


def slug(text: object, *, keep: str = "-=", max_len: int = 80) -> str:
    """``text`` with every run of characters other than letters, digits, ``_``, ``.`` and
    ``keep`` replaced by ``_``, trimmed of ``_`` and cut to ``max_len`` (``x`` when empty)."""
    out = re.sub(rf"[^A-Za-z0-9_.{re.escape(keep)}]+", "_", str(text)).strip("_")[:max_len]
    return out or "x"
