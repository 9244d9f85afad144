"""``rpa-bench xprof RUN``: open a run's profiler captures in xprof.

A run stores each (point, kernel, variant) capture as an xprof session
(``<run>/captures/plugins/profile/<workload>.<point>.<kernel>.<variant>/<host>.xplane.pb``).
This lists the sessions as xprof itself discovers them, then starts xprof on the run's
captures (``--list``: only list). Open the printed address and pick a session in the
"Runs" menu; the trace viewer shows the kernel calls.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace


def sessions(logdir: Path) -> list[str]:
    """The sessions xprof's own loader finds under ``logdir`` (its ProfilePlugin.generate_runs)."""
    from xprof import profile_plugin

    context = SimpleNamespace(logdir=str(logdir), data_provider=None,
                              flags=SimpleNamespace(master_tpu_unsecure_channel=""))
    return sorted(profile_plugin.ProfilePlugin(context).generate_runs())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rpa-bench xprof", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a results run folder (or its captures/ folder)")
    p.add_argument("--port", type=int, default=6006)
    p.add_argument("--list", action="store_true", help="list the sessions and exit")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    run = Path(args.run).resolve()  # xprof's loader finds no session under a relative logdir
    logdir = run if run.name == "captures" else run / "captures"
    if not logdir.is_dir():
        print(f"rpa-bench xprof: {logdir} does not exist (a run with timing.capture=true stores captures there)",
              file=sys.stderr)
        return 2
    found = sessions(logdir)
    if not found:
        print(f"rpa-bench xprof: no xprof session under {logdir} (runs stored before the xprof layout keep flat "
              "*.xplane.pb files: `rpa-bench capture` reads those)", file=sys.stderr)
        return 2
    for name in found:
        print(f"  {name}")
    command = ["xprof", "--logdir", str(logdir), "--port", str(args.port)]
    print(f"{len(found)} sessions; xprof: {' '.join(command)}  ->  http://localhost:{args.port}/")
    if args.list:
        return 0
    exe = shutil.which("xprof") or str(Path(sys.executable).with_name("xprof"))
    os.execv(exe, [exe, *command[1:]])
    return 0  # not reached
