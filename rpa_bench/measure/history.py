"""A kernel's history across tpu-inference commits (asv's idea, for RPA revisions).

For each revision of a checkout, the same experiment runs with ``kernel.source=<repo>@<sha>``
(correctness checked on every point; timed where the device allows) and the kernel is
compiled for TPU generations (libtpu compile-only: does it still compile and fit VMEM?).
Results are stored once per (machine, revision) under ``<out>/<machine>/<sha>/`` and never
recomputed: a history is resumable and extendable.

Events found along the commits:
- status changes: correctness broke / restored (rows ``incorrect``), compile broke /
  restored per generation (``vmem_oom``, ``failed``, ...), each at the first commit showing it;
- steps in numeric series (a point's latency, a generation's VMEM use) by change-point
  detection with ``ruptures`` (PELT, L2 cost): a maintained library with an exact search;
  the penalty is scaled by the series' own noise (median absolute successive difference),
  so deterministic series (VMEM) report any change and noisy ones (latency) only a shift
  well above their jitter. A step is kept when it changes the level by more than
  ``threshold`` (ratio), as asv's regression threshold.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rpa_bench.status import Status
from rpa_bench.store.run_store import read_measurements

CORRECT = "correct"
INCORRECT = "incorrect"


@dataclasses.dataclass(frozen=True)
class Revision:
    sha: str
    date: str  # committer date, ISO
    subject: str

    @property
    def short(self) -> str:
        return self.sha[:10]


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if out.returncode:
        raise ValueError(f"git {' '.join(args)} in {repo}: {out.stderr.strip() or 'failed'}")
    return out.stdout.strip()


def git_toplevel(path: Path) -> Path:
    return Path(_git(path, "rev-parse", "--show-toplevel"))


def revisions(repo: Path, spec: str, *, every: int = 1) -> list[Revision]:
    """``A..B`` (A excluded, as git does; both endpoints kept here: A is the baseline), or a
    comma-separated list of refs, oldest first; ``every``: every N-th commit of a range
    (the endpoints always kept)."""
    if every < 1:
        raise ValueError(f"--every={every} must be >= 1")
    if ".." in spec:
        a, b = spec.split("..", 1)
        shas = _git(repo, "rev-list", "--reverse", "--first-parent", f"{a}..{b}").split()
        base = _git(repo, "rev-parse", "--verify", f"{a}^{{commit}}")
        shas = [base, *shas]
        if every > 1:
            keep = shas[::every]
            if keep[-1] != shas[-1]:
                keep.append(shas[-1])
            shas = keep
    else:
        shas = [_git(repo, "rev-parse", "--verify", f"{r.strip()}^{{commit}}") for r in spec.split(",") if r.strip()]
    if not shas:
        raise ValueError(f"--revisions={spec!r} names no commit")
    out = []
    for sha in shas:
        date, subject = _git(repo, "show", "-s", "--format=%cI%x00%s", sha).split("\x00", 1)
        out.append(Revision(sha, date, subject))
    return out


def machine_name() -> str:
    return f"{socket.gethostname()}-{platform.machine()}"


@dataclasses.dataclass
class RevisionResult:
    revision: Revision
    measurements: pd.DataFrame  # the run's rows
    compiles: list[dict]  # CompileResult.as_dict() per generation and case


def correctness(rows: pd.DataFrame) -> dict[tuple, str]:
    """Per (workload, point, variant): correct | incorrect | failed | not checked."""
    out = {}
    for _, r in rows.iterrows():
        status = r.get("status")
        if status == Status.OK:
            v = CORRECT
        elif status == Status.INCORRECT:
            v = INCORRECT
        elif status == "failed":
            v = "failed"
        else:
            v = "not checked"
        out[(r["workload"], r["point_id"], r["variant"])] = v
    return out


@dataclasses.dataclass(frozen=True)
class Event:
    kind: str  # correctness | compile | step
    series: str  # what changed, e.g. "paper_decode ctx=256 excl_prep" or "TPU7x decode_8x1k VMEM"
    revision: Revision  # the first commit showing it
    before: Any
    after: Any
    direction: str  # regression | improvement

    def as_dict(self) -> dict:
        return {"kind": self.kind, "series": self.series, "commit": self.revision.short, "date": self.revision.date,
                "subject": self.revision.subject, "before": self.before, "after": self.after,
                "direction": self.direction}


def status_events(kind: str, series: dict[str, list[str]], revs: Sequence[Revision], good: str) -> list[Event]:
    """Each change of a status series between consecutive revisions."""
    out = []
    for name, values in series.items():
        for i in range(1, len(values)):
            if values[i] != values[i - 1] and "not checked" not in (values[i], values[i - 1]):
                direction = "improvement" if values[i] == good else "regression"
                out.append(Event(kind, name, revs[i], values[i - 1], values[i], direction))
    return out


def change_points(values: Sequence[float], *, threshold: float, sigma: float | None = None) -> list[int]:
    """Indices where a new level starts (``ruptures`` PELT, L2 cost), keeping only steps whose
    level ratio exceeds ``threshold`` (or falls below 1/threshold). ``sigma``: the noise of one
    value (e.g. from the samples' IQR); None: a deterministic series (compile facts), where any
    change is a step."""
    import ruptures  # noqa: PLC0415 - only histories use it; keeps the CLI's start-up light

    x = np.asarray(values, dtype=float)
    ok = np.isfinite(x)
    if ok.sum() < 2:
        return []
    idx = np.flatnonzero(ok)
    y = x[ok]
    level = float(np.median(np.abs(y))) or 1.0
    noise = 1e-9 * level if sigma is None else max(float(sigma), 1e-9 * level)
    algo = ruptures.Pelt(model="l2", min_size=1, jump=1).fit(y.reshape(-1, 1))
    bkps = algo.predict(pen=3.0 * noise ** 2 * math.log(len(y) + 1))
    out = []
    starts = [0, *bkps[:-1]]
    for k in range(1, len(starts)):
        before = float(np.mean(y[starts[k - 1]:starts[k]]))
        after = float(np.mean(y[starts[k]:bkps[k]]))
        ratio = after / before if before else math.inf
        if ratio > threshold or ratio < 1.0 / threshold:
            out.append(int(idx[starts[k]]))
    return out


def step_events(kind: str, series: dict[str, list[float]], revs: Sequence[Revision], *,
                threshold: float, noise: dict[str, float] | None = None) -> list[Event]:
    out = []
    for name, values in series.items():
        sigma = None if noise is None else noise.get(name, 0.0)
        for i in change_points(values, threshold=threshold, sigma=sigma):
            prev = next((values[j] for j in range(i - 1, -1, -1) if np.isfinite(values[j])), float("nan"))
            out.append(Event(kind, name, revs[i], prev, values[i],
                             "regression" if values[i] > prev else "improvement"))
    return out


def series_of(results: Sequence[RevisionResult]) -> dict[str, dict]:
    """The per-revision series: correctness and latency per point, compile status and VMEM per generation."""
    keys = sorted({k for r in results for k in correctness(r.measurements)})
    corr = {" ".join(map(str, k)): [correctness(r.measurements).get(k, "not checked") for r in results] for k in keys}
    lat: dict[str, list[float]] = {}
    noise: dict[str, float] = {}
    for k in keys:
        vals, iqrs = [], []
        for r in results:
            m = r.measurements
            row = m[(m["workload"] == k[0]) & (m["point_id"] == k[1]) & (m["variant"] == k[2]) & (m["status"] == Status.OK)
                    & ~m["interpret"].fillna(False).astype(bool)]
            vals.append(float(row["latency_us"].iloc[0]) if len(row) else float("nan"))
            if len(row):
                iqrs.append(float(row["latency_iqr_us"].iloc[0]))
        if any(np.isfinite(vals)):
            name = " ".join(map(str, k)) + " latency_us"
            lat[name] = vals
            noise[name] = float(np.nanmedian(iqrs)) / 1.349 if iqrs else 0.0  # IQR -> sigma of a normal
    ckeys = sorted({(c["generation"], c["case"]) for r in results for c in r.compiles})
    comp, vmem = {}, {}
    for g, case in ckeys:
        statuses, used = [], []
        for r in results:
            c = next((c for c in r.compiles if c["generation"] == g and c["case"] == case), None)
            statuses.append(c["status"] if c else "not checked")
            v = c and c.get("vmem_used_bytes")
            used.append(float(max(v.values())) if v else float("nan"))
        comp[f"{g} {case}"] = statuses
        if any(np.isfinite(used)):
            vmem[f"{g} {case} vmem_used_bytes"] = used
    return {"correctness": corr, "latency": lat, "latency_noise": noise, "compile": comp, "vmem": vmem}


def find_events(results: Sequence[RevisionResult], *, threshold: float = 1.1) -> list[Event]:
    revs = [r.revision for r in results]
    s = series_of(results)
    events = status_events("correctness", s["correctness"], revs, CORRECT)
    events += status_events("compile", s["compile"], revs, "ok")
    events += step_events("latency step", s["latency"], revs, threshold=threshold, noise=s["latency_noise"])
    events += step_events("VMEM step", s["vmem"], revs, threshold=1.0 + 1e-9)  # deterministic: any change
    return sorted(events, key=lambda e: [r.sha for r in revs].index(e.revision.sha))


def bisect(revs: Sequence[Revision], is_bad: Callable[[Revision], bool]) -> Revision | None:
    """The first bad revision of ``revs`` (first good, last bad), testing O(log n) of them."""
    lo, hi = 0, len(revs) - 1
    if is_bad(revs[lo]) or not is_bad(revs[hi]):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if is_bad(revs[mid]):
            hi = mid
        else:
            lo = mid
    return revs[hi]


def load_result(folder: Path, revision: Revision) -> RevisionResult | None:
    """A stored revision's result, or None when it is not complete."""
    meta = folder / "revision.json"
    if not meta.is_file():
        return None
    doc = json.loads(meta.read_text())
    if doc.get("status") != "complete":
        return None
    run = folder / "run"
    rows = read_measurements(run) if (run / "measurements.parquet").is_file() else pd.DataFrame()
    return RevisionResult(revision, rows, doc.get("compiles") or [])
