"""``rpa-bench capture PATH``: read any profiler capture and say where device time went.

PATH is an ``.xplane.pb`` file or a folder (a run's ``captures/``, an xprof log folder):
every capture under it is read. For each: the device planes (and the ``/device:`` planes
that are not devices), the programs run on each device, and per program per device the
number of calls and the per-call device time (TPU: the ``XLA Modules`` event; GPU: the
kernels' busy time and their span; CPU captures: host op spans, which are not device
time), plus the kernel-only time for ``--kernel-regex``. ``--json`` prints the same for
machines. Exit status: 0 when every capture was read whole, 1 when one was cut short (read,
but devices may be missing) or ``--module`` names a program it does not have, 2 on a bad
path, regex or file (an empty file included). With ``--json`` a failure is a JSON object
with the error on stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from rpa_bench.commands import _hydra
from rpa_bench.measure.capture_summary import CaptureSummary, summarize_capture
from rpa_bench.measure.xspace import TASK_ENVIRONMENT


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rpa-bench capture",
        description="Per-call device time of every program in a profiler capture (xplane.pb), per device.",
        epilog="examples:\n"
               "  rpa-bench capture results/<run>/captures\n"
               "  rpa-bench capture trace.xplane.pb --module jit_step --kernel-regex '^RPA[dpm]-'\n"
               "  rpa-bench capture trace.xplane.pb --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="an .xplane.pb file, or a folder searched for them")
    p.add_argument("--module", default=None, help="only this program (HLO module name, exact, e.g. jit_f)")
    p.add_argument("--kernel-regex", default=None,
                   help="also report the time of the ops/kernels whose short name or stats match (e.g. '^RPA[dpm]-')")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def _table(s: CaptureSummary) -> str:
    out = [f"== {s.source}"]
    if s.devices:
        out.append("devices: " + ", ".join(f"{d['name']}" + (f" ({d['device_type']})" if d["device_type"] else "")
                                           for d in s.devices))
    else:
        out.append("devices: none (host planes only: a CPU capture)")
    if s.ignored_planes:
        out.append("not devices (ignored): " + ", ".join(s.ignored_planes))
    head = ("device", "program", "calls", "per-call median us", "mean us", "min us", "max us", "span median us",
            "kernel median us")
    rows = [head]
    for p in s.programs:
        rows.append((p.device, p.program, str(p.calls), _fmt(p.stat(p.per_call_us, "median")),
                     _fmt(p.stat(p.per_call_us, "mean")), _fmt(p.stat(p.per_call_us, "min")),
                     _fmt(p.stat(p.per_call_us, "max")), _fmt(p.stat(p.span_us, "median")),
                     _fmt(p.stat(p.kernel_us, "median"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        out.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    bases = sorted({p.basis for p in s.programs})
    legend = {"module_event": "TPU: per call = the XLA Modules event",
              "kernel_busy": "GPU: per call = kernels' busy time (union); span adds launch gaps",
              "host_ops": "CPU: per call = span of the XLA ops on host threads (not device time)"}
    out += [f"  ({legend[b]})" for b in bases]
    for p in s.programs:
        out += [f"  warning: {w}" for w in p.warnings]
    out += [f"  note: {n}" for n in s.notes]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)

    def fail(message: str) -> int:
        return _hydra.fail("rpa-bench capture", message, as_json=args.json)

    if args.kernel_regex is not None:
        try:
            re.compile(args.kernel_regex)
        except re.error as err:
            return fail(f"--kernel-regex {args.kernel_regex!r} is not a regular expression: {err}")
    path = Path(args.path)
    if path.is_dir():
        files = sorted(path.rglob("*.xplane.pb"))
        if not files:
            return fail(f"no *.xplane.pb under {path}")
    elif path.is_file():
        files = [path]
    else:
        return fail(f"{path} does not exist")
    summaries, errors = [], []
    for f in files:
        try:
            summaries.append(summarize_capture(f, module=args.module, kernel_regex=args.kernel_regex))
        except Exception as err:  # noqa: BLE001 - one unreadable file: said, the others still read
            errors.append(f"{f}: not a readable capture ({type(err).__name__}: {str(err)[:200]})")
            print(f"rpa-bench capture: {errors[-1]}", file=sys.stderr)
    status = 2 if errors else (1 if any(not s.complete or s.missing_module for s in summaries) else 0)
    if args.json:
        doc: Any = [s.as_dict() for s in summaries]
        if errors:
            doc = {"error": "; ".join(errors), "exit": status, "captures": doc}
        print(json.dumps(doc, indent=1))
    else:
        print("\n\n".join(_table(s) for s in summaries))
    for s in summaries:
        if not s.complete:
            print(f"rpa-bench capture: {s.source}: cut short (no '{TASK_ENVIRONMENT}' plane); devices may be missing",
                  file=sys.stderr)
        if s.missing_module:
            print(f"rpa-bench capture: {s.source}: --module {s.missing_module} not found; programs there: "
                  + (", ".join(s.available) or "none"), file=sys.stderr)
    return status
