"""``rpa-bench`` entry point: dispatches to one module per command.

Hydra commands (check, lower, simulate, run, calibrate) take Hydra overrides
(``kernel=rpa_v3 model.head_dim=96``); roofline, report and compare take flags.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

import rpa_bench

COMMANDS = {
    "check": ("rpa_bench.commands.check", "check every kernel against the reference on small ragged batches"),
    "lower": ("rpa_bench.commands.lower", "lower each RPA kernel for TPU generations (no TPU needed)"),
    "compile": ("rpa_bench.commands.compile", "compile each RPA kernel for real TPU generations (no TPU needed)"),
    "simulate": ("rpa_bench.commands.simulate", "simulate continuous batching on a trace; write the batch stream"),
    "roofline": ("rpa_bench.commands.roofline", "throughput, MBU/MFU and roofline bound for a latency"),
    "calibrate": ("rpa_bench.commands.calibrate", "measure achievable HBM bandwidth and matmul FLOP/s"),
    "run": ("rpa_bench.commands.run", "measure kernels on workloads; store results"),
    "report": ("rpa_bench.commands.report", "render a stored run as HTML + PNG"),
    "compare": ("rpa_bench.commands.compare", "compare two stored runs (or two kernels in one run)"),
    "xprof": ("rpa_bench.commands.xprof", "open a run's profiler captures in xprof (one session per point and kernel)"),
    "history": ("rpa_bench.commands.history", "a kernel across tpu-inference commits: correctness, compile, speed"),
    "capture": ("rpa_bench.commands.capture", "per-call device time of every program in a profiler capture"),
    "tune": ("rpa_bench.commands.tune", "tune the kernel's block sizes per phase for a workload's batches"),
    "traffic": ("rpa_bench.commands.traffic", "the HBM bytes each kernel moves per batch vs the analytic minimum"),
}


def usage() -> str:
    lines = ["usage: rpa-bench <command> [args...]     (rpa-bench <command> --help: its options and examples)", "",
             "Roofline benchmarking of Ragged Paged Attention: measure kernels on the paper's sweeps and real",
             "serving traces, check them against a reference, compile them for TPU generations, and report.", "",
             "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "examples:",
              "  rpa-bench run experiment=paper_decode scale=cpu_smoke    # a CPU-sized pass of Table 4",
              "  rpa-bench report results/<run>                           # HTML + PNG",
              "  rpa-bench compare results/<run> --kernels base mine      # paired A/B of two revisions",
              "  rpa-bench compile kernel=rpa_v3 compile.generations=[tpu7x]",
              "  rpa-bench roofline --paper all                           # the paper's tables recomputed"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv else ""
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:  # Ctrl-C while starting up: no traceback
        print(f"\nrpa-bench {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rpa-bench: unknown command {name!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        previous = signal.signal(signal.SIGINT, _remember_ctrl_c)
    except ValueError:  # not the main thread: no signal handling to change
        return int(importlib.import_module(COMMANDS[name][0]).main(rest) or 0)
    rpa_bench.CTRL_C["pressed"] = False
    restored = False
    try:
        # Importing a command (JAX and friends: seconds) with Ctrl-C remembered, not raised: a
        # KeyboardInterrupt raised inside a library's import or start-up can be swallowed there
        # (the command then runs to the end) or abort a native module.
        module = importlib.import_module(COMMANDS[name][0])
        if rpa_bench.CTRL_C["pressed"]:
            raise KeyboardInterrupt
        if not getattr(module, "CTRL_C_AWARE", False):  # it cannot read the flag: Ctrl-C raises again
            signal.signal(signal.SIGINT, previous)
            restored = True
        return int(module.main(rest) or 0)
    finally:
        if not restored:
            signal.signal(signal.SIGINT, previous)


def _remember_ctrl_c(signum, frame) -> None:
    rpa_bench.CTRL_C["pressed"] = True


if __name__ == "__main__":
    sys.exit(main())
