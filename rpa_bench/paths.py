"""Where a command writes: checked before any work, refused in one line naming the option."""

from __future__ import annotations

import os
from pathlib import Path


def output_folder_problem(path: str | Path | None, option: str) -> str | None:
    """A one-line reason why ``path`` cannot be the output folder named by ``option``, else
    None: empty, an existing file, or a location this user cannot create or write."""
    if path is None:
        return None
    text = str(path)
    if not text.strip():
        return f"{option}={text!r}: an output folder is required (not empty)"
    out = Path(text)
    if out.exists() and not out.is_dir():
        return f"{option}={text!r} is an existing file, not a folder"
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{option}={text!r} cannot be created: {probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{option}={text!r} cannot be written ({probe} is not writable for this user)"
    if str(probe.resolve()).startswith(("/proc", "/sys")):
        return f"{option}={text!r} cannot be created under {probe} (a kernel filesystem)"
    return None
