"""How much of a run is the harness: the CPU smoke sweep of the paper decode experiment with
the reference, then its phase table and overhead = (wall - start-up) / (compile + warm-up +
timed samples), from the run's own account (manifest ``phases``).

    .venv/bin/python scripts/bench_overhead.py [--repeat 1] [extra rpa-bench run overrides ...]

Each repetition is a fresh process (`rpa-bench run`), so start-up is real; the results go to
a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=1)
    args, extra = p.parse_known_args()
    exe = str(Path(sys.executable).with_name("rpa-bench"))
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="rpa_bench_overhead_") as tmp:
            t0 = time.perf_counter()
            cmd = [exe, "run", "experiment=paper_decode", "scale=cpu_smoke", "run.kernels=[reference]",
                   "run.progress=false", f"run.results_dir={tmp}", "run.name=overhead", *extra]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            outside = time.perf_counter() - t0
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                return out.returncode
            m = json.loads((Path(tmp) / "overhead" / "manifest.json").read_text())
            phases = m["phases"]
            print(f"run {i + 1}: process wall {outside:.1f} s (inside: {m['process_wall_s']:.1f} s), "
                  f"overhead {m['overhead_ratio']:.2f}x (start-up excluded)")
            for name, sec in sorted(phases.items(), key=lambda kv: -kv[1]):
                print(f"  {name:<15} {sec:7.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
