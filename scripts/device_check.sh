#!/usr/bin/env bash
# The prepared accelerator check: the reference kernel on the paper's decode shapes (Table 4,
# full scale) on an NVIDIA GPU, profiler device time against events-free wall time per point,
# the run's own capture read back with `rpa-bench capture`, and a one-page summary.
#
#   bash scripts/device_check.sh [OUT]          (OUT default: results/device_check)
#
# Needs no network where the CUDA plugin wheels for the pinned JAX lie in ./.whl (or are
# already installed); otherwise pip fetches them. Without a GPU it is a dry run: the summary
# says what was skipped and why, and the script exits 0. Exit 1 when a check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results/device_check}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
PY="${PYTHON:-.venv/bin/python}"; [ -x "$PY" ] || PY=python3
JAX_VERSION="$("$PY" -c 'import jax; print(jax.__version__)' 2>/dev/null || echo 0.11.2)"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  {
    echo "# device check: dry run"
    echo
    echo "skipped: no NVIDIA GPU here (nvidia-smi found no device)."
    echo
    echo "What it would do on a GPU:"
    echo "1. install the CUDA plugin for jax ${JAX_VERSION} (jax-cuda12-plugin, jax-cuda12-pjrt; from ./.whl when present)"
    echo "2. rpa-bench run experiment=paper_decode run.kernels=[reference] device=auto (full scale, 6 points)"
    echo "3. per point: profiler device time vs events-free wall time (ratio; device <= wall expected)"
    echo "4. rpa-bench capture on the run's captures: the run's programs must be listed with device time"
  } > "$SUMMARY"
  cat "$SUMMARY"
  exit 0
fi

START=$(date +%s)
if ! "$PY" -c 'import jax; assert any(d.platform == "gpu" for d in jax.devices())' >/dev/null 2>&1; then
  SRC=(); [ -d .whl ] && SRC=(--no-index --find-links .whl)
  "$PY" -m pip install -q "${SRC[@]}" "jax-cuda12-plugin==${JAX_VERSION}" "jax-cuda12-pjrt==${JAX_VERSION}" \
    || { echo "device check: the CUDA plugin for jax ${JAX_VERSION} could not be installed" >&2; exit 1; }
fi
RUN="$OUT/run"
rm -rf "$RUN"
"$PY" -m rpa_bench.cli run --json experiment=paper_decode 'run.kernels=[reference]' run.progress=false \
  "run.results_dir=$OUT" run.name=run > "$OUT/run.json" 2> "$OUT/run.log"
RUN_RC=$?
"$PY" -m rpa_bench.cli capture --json "$RUN/captures" > "$OUT/capture.json" 2> "$OUT/capture.log"
CAP_RC=$?
"$PY" - "$RUN" "$OUT/capture.json" "$SUMMARY" "$RUN_RC" "$CAP_RC" "$START" <<'PYEOF'
import json, sys, time
from pathlib import Path
import pandas as pd
run, cap_json, summary, run_rc, cap_rc, start = sys.argv[1:7]
lines, ok = ["# device check", ""], True
try:
    df = pd.read_parquet(Path(run) / "measurements.parquet")
except Exception as exc:  # the run failed before storing rows
    df = pd.DataFrame()
    lines.append(f"FAIL: no stored rows ({exc})")
    ok = False
lines.append(f"run exit {run_rc}, capture exit {cap_rc}; wall {time.time() - float(start):.0f} s")
if not df.empty:
    dev = df.get("device_kind", pd.Series(["?"])).iloc[0]
    lines += [f"device: {dev}; rows {len(df)}; statuses {df['status'].value_counts().to_dict()}", "",
              "| point | variant | timing_source | device us | wall us | device/wall | n device samples |",
              "|---|---|---|---|---|---|---|"]
    for _, r in df.sort_values(["point_id", "variant"]).iterrows():
        d, w = r.get("device_latency_us"), r.get("wall_latency_us")
        ratio = d / w if pd.notna(d) and pd.notna(w) and w else float("nan")
        n = len(r["device_samples_us"]) if r.get("device_samples_us") is not None else 0
        lines.append(f"| {r['point_id']} | {r['variant']} | {r['timing_source']} | {d:.1f} | {w:.1f} | {ratio:.3f} | {n} |")
        if r["status"] != "ok" or r["timing_source"] != "device" or not (ratio <= 1.05):
            ok = False
try:
    progs = json.loads(Path(cap_json).read_text())
    names = sorted({p.get("module") or p.get("program") or "" for p in (progs if isinstance(progs, list) else [])})
    seen = any("rpa_bench" in n for n in names)
    lines.append("")
    lines.append(f"capture: {len(names)} programs; the run's programs {'found' if seen else 'NOT found'}")
    ok = ok and seen
except Exception as exc:
    lines.append(f"capture: unreadable ({exc})")
    ok = False
lines.insert(1, f"result: {'PASS' if ok else 'FAIL'}")
Path(summary).write_text("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(0 if ok else 1)
PYEOF
