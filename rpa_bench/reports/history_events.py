"""Events along a kernel's history (pure functions of stored revisions).

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
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from rpa_bench.status import Status

from rpa_bench.store.revisions import Revision, RevisionResult

CORRECT = "correct"
INCORRECT = "incorrect"


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


